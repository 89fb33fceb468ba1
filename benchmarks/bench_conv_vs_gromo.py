"""Full-kernel conv→conv new-channel statistics, daggrow vs the anchor library gromo (issue #5).

x (16 channels, 32×32) → conv 3×3 (16 channels, relu) → conv 3×3 (16 channels), batch 32, MSE
loss summed per sample. One "step" = the statistics of one batch for new channels between the
two convs (full kernels k1 = k2 = 3, docs/math.md §10) + the best update of the second conv + the TINY
solve. Each library runs in its own subprocess, so its peak memory (max RSS above the RSS after
imports and data creation) is its own. Prints seconds (median of --repeats), peak MB, and the
first eigenvalues of both (they solve the same full-kernel problem).

    pip install -e ".[bench]"        # installs gromo (only for this benchmark)
    python benchmarks/bench_conv_vs_gromo.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics as pystats
import subprocess
import sys
import time

import torch
from torch import nn

C, SIDE, BATCH = 16, 32, 32


def weights_and_data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    conv1, conv2 = nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 3, padding=1)
    with torch.no_grad():
        for m in (conv1, conv2):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.1)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    x = torch.randn(BATCH, C, SIDE, SIDE, generator=gen)
    y = torch.randn(BATCH, C, SIDE, SIDE, generator=gen)
    return conv1, conv2, x, y


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_daggrow(repeats: int, k: int) -> dict:
    import daggrow as dg
    from daggrow.grow.candidates import enumerate_candidates

    conv1, conv2, x, y = weights_and_data()
    g = dg.Graph()
    g.add_input("x", C, shape=(SIDE, SIDE))
    g.add_node("h", C, "relu", shape=(SIDE, SIDE))
    g.add_node("z", C, shape=(SIDE, SIDE))
    g.add_edge("x", "h", dg.ConvBlock(dim=2, kernel_size=3, padding=1), module=conv1)
    g.add_edge("h", "z", dg.ConvBlock(dim=2, kernel_size=3, padding=1), module=conv2)
    g.set_output("z")
    cands = [c for c in enumerate_candidates(g, ["expand_node"]) if c.node == "h"]
    base = rss_mb()
    times, lam = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        stats = dg.collect_statistics(g, [(x, y)], "mse", candidates=cands)
        (p,) = dg.propose(g, stats, max_neurons=k, candidates=cands, rel_threshold=0.0)
        times.append(time.perf_counter() - start)
        lam = p.eigenvalues
    return {"seconds": pystats.median(times), "peak_mb": rss_mb() - base, "eigenvalues": lam[:k]}


def run_gromo(repeats: int, k: int) -> dict:
    from gromo.modules.conv2d_growing_module import FullConv2dGrowingModule

    conv1, conv2, x, y = weights_and_data()
    first = FullConv2dGrowingModule(C, C, 3, padding=1, input_size=(SIDE, SIDE), post_layer_function=nn.ReLU(),
                                    name="first")
    second = FullConv2dGrowingModule(C, C, 3, padding=1, input_size=(SIDE, SIDE), previous_module=first,
                                     name="second")
    first.next_module = second
    with torch.no_grad():
        first.layer.weight.copy_(conv1.weight), first.layer.bias.copy_(conv1.bias)
        second.layer.weight.copy_(conv2.weight), second.layer.bias.copy_(conv2.bias)
    loss_fn = nn.MSELoss(reduction="sum")
    base = rss_mb()
    times, lam = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        second.init_computation()
        loss = loss_fn(second(first(x)), y)
        loss.backward()
        second.update_computation()
        second.compute_optimal_updates(maximum_added_neurons=k, statistical_threshold=0.0)
        second.reset_computation()
        times.append(time.perf_counter() - start)
        lam = second.eigenvalues_extension.tolist()
        first.zero_grad(), second.zero_grad()
    return {"seconds": pystats.median(times), "peak_mb": rss_mb() - base, "eigenvalues": lam[:k]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--neurons", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["daggrow", "gromo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:
        fn = run_daggrow if args.only == "daggrow" else run_gromo
        print(json.dumps(fn(args.repeats, args.neurons)))
        return
    results = {}
    for lib in ("daggrow", "gromo"):
        cmd = [sys.executable, __file__, "--only", lib, "--repeats", str(args.repeats),
               "--neurons", str(args.neurons), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{lib} failed:\n{out.stderr[-3000:]}")
            return
        results[lib] = json.loads(out.stdout.strip().splitlines()[-1])
    d, g = results["daggrow"], results["gromo"]
    print(f"full-kernel conv→conv new channels, {C}→{C}→{C} channels, {SIDE}×{SIDE}, batch {BATCH}, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"{'':10}{'seconds':>10}{'peak MB':>10}   first eigenvalues")
    for lib, r in results.items():
        print(f"{lib:10}{r['seconds']:>10.3f}{r['peak_mb']:>10.0f}   {[round(v, 5) for v in r['eigenvalues']]}")
    print(f"{'ratio':10}{g['seconds'] / d['seconds']:>9.1f}×{g['peak_mb'] / max(d['peak_mb'], 1e-9):>9.1f}×   "
          "(gromo / daggrow: time, peak memory)")


if __name__ == "__main__":
    main()
