"""Statistics pass vs one plain forward+backward epoch (issue: target ≤ 1.5× the plain epoch).

MLP 784→w→w→10, 10k samples, batch 1000, float32, CPU (or --device cuda). Prints a table of
measured seconds (median of --repeats runs) and the ratio, for two plans:
- ``Ψ only``: what the bottleneck of every node and δW* need (S_in, M_in per node);
- ``all candidates``: Ψ plus expand every hidden node, new node/edge between every valid pair;
and each again with ``reuse=`` (the input covariance S_x, data only, taken from a first pass:
what every later pass of a growth loop costs).

    python benchmarks/bench_statistics.py --widths 64 256 1024
"""

from __future__ import annotations

import argparse
import statistics as pystats
import time

import torch

import daggrow as dg
from daggrow.grow.candidates import enumerate_candidates, statistics_plan
from daggrow.stats import collect_statistics, per_sample_loss, plan_for


def mlp(width: int, device: str) -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", 784)
    g.add_node("h1", width, "relu")
    g.add_node("h2", width, "relu")
    g.add_node("y", 10)
    g.add_edge("x", "h1")
    g.add_edge("h1", "h2")
    g.add_edge("h2", "y")
    g.set_output("y")
    g.compile(device=device)
    return g


def plain_epoch(g: dg.Graph, batches) -> None:
    m = g.compile()
    for x, y in batches:
        loss = per_sample_loss("cross_entropy", m(x), y).mean()
        loss.backward()
    for p in g.parameters():
        p.grad = None


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return pystats.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    X = torch.randn(args.samples, 784, device=args.device)
    Y = torch.randint(0, 10, (args.samples,), device=args.device)
    batches = [(X[i:i + args.batch], Y[i:i + args.batch]) for i in range(0, args.samples, args.batch)]
    print(f"device={args.device} threads={torch.get_num_threads()} samples={args.samples} batch={args.batch} "
          f"torch={torch.__version__}")
    print(f"{'width':>6} {'plain epoch s':>14} {'Ψ-only s':>10} {'ratio':>6} {'Ψ-only, S_x reused s':>21} {'ratio':>6} "
          f"{'all-cand. s':>12} {'ratio':>6} {'all-cand., S_x reused s':>24} {'ratio':>6}")
    for w in args.widths:
        g = mlp(w, args.device)
        plain = timed(lambda: plain_epoch(g, batches), args.repeats, args.device)
        psi_plan = plan_for(g)
        psi = timed(lambda: collect_statistics(g, batches, "cross_entropy", plan=psi_plan), args.repeats, args.device)
        first = collect_statistics(g, batches, "cross_entropy", plan=psi_plan)
        psi_r = timed(lambda: collect_statistics(g, batches, "cross_entropy", plan=psi_plan, reuse=first),
                      args.repeats, args.device)
        cands = enumerate_candidates(g)
        all_plan = statistics_plan(g, cands)
        full = timed(lambda: collect_statistics(g, batches, "cross_entropy", plan=all_plan), args.repeats, args.device)
        first = collect_statistics(g, batches, "cross_entropy", plan=all_plan)
        full_r = timed(lambda: collect_statistics(g, batches, "cross_entropy", plan=all_plan, reuse=first),
                       args.repeats, args.device)
        print(f"{w:>6} {plain:>14.3f} {psi:>10.3f} {psi / plain:>6.2f} {psi_r:>21.3f} {psi_r / plain:>6.2f} "
              f"{full:>12.3f} {full / plain:>6.2f} {full_r:>24.3f} {full_r / plain:>6.2f}")
    print(f"all-cand.: Ψ plus expand every hidden node and a new node/edge between every valid pair "
          f"({len(cands)} candidates)")


if __name__ == "__main__":
    main()
