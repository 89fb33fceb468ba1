"""Peak memory of a statistics pass against the number of samples (issue: memory independent of n).

MLP 784→w→w→10 (ReLU), cross-entropy, every candidate of every kind (Ψ of every node, expand
every hidden node, new nodes and edges). The batches are generated one at a time from a seeded
generator, so the data set itself is never in memory: what grows with n would be the pass's
own storage. Each n runs in its own subprocess; peak memory is its maximum RSS above the RSS
after building the graph and compiling it. Prints seconds and peak MB per n.

    python benchmarks/bench_memory.py --samples 10000 40000 160000 --width 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batches(samples: int, batch: int, seed: int = 0):
    """(x, y) batches made on the fly: the whole data set is never held."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, samples, batch):
        n = min(batch, samples - start)
        yield torch.randn(n, 784, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def run(samples: int, width: int, batch: int) -> dict:
    import daggrow as dg

    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 784)
    g.add_node("h1", width, "relu")
    g.add_node("h2", width, "relu")
    g.add_node("y", 10)
    g.add_edge("x", "h1"), g.add_edge("h1", "h2"), g.add_edge("h2", "y")
    g.set_output("y")
    dg.collect_statistics(g, batches(batch, batch), "cross_entropy")  # warm-up: kernels, allocator
    base = rss_mb()
    start = time.perf_counter()
    stats = dg.collect_statistics(g, batches(samples, batch), "cross_entropy")
    seconds = time.perf_counter() - start
    return {"samples": stats.n, "seconds": seconds, "peak_mb": rss_mb() - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=[10_000, 40_000, 160_000])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--only", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        print(json.dumps(run(args.only, args.width, args.batch)))
        return
    print(f"MLP 784→{args.width}→{args.width}→10, all candidates, batch {args.batch}, "
          f"threads={torch.get_num_threads()}, torch={torch.__version__}")
    print(f"{'samples':>9} {'seconds':>9} {'peak MB above baseline':>23} {'the inputs alone, if held, MB':>30}")
    for n in args.samples:
        cmd = [sys.executable, __file__, "--only", str(n), "--width", str(args.width), "--batch", str(args.batch)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"n={n} failed:\n{out.stderr[-3000:]}")
            return
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['samples']:>9} {r['seconds']:>9.2f} {r['peak_mb']:>23.1f} {r['samples'] * 784 * 4 / 2 ** 20:>30.1f}")


if __name__ == "__main__":
    main()
