"""Where one default ``Grower.grow_step`` of the ResNet-18 of ``bench_resnet.py`` spends its time.

Trains one warm-up epoch and one timed epoch, then runs one step under cProfile and prints the
epoch's and the step's process CPU time and the 45 most expensive calls (cumulative time).

    python benchmarks/profile_resnet_step.py --width 16
    python benchmarks/profile_resnet_step.py --width 64      # about 11 CPU minutes on one thread
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
import warnings

import torch

import daggrow as dg
from bench_resnet import data, graph_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=45, help="calls to print")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loader = data("cpu")
    grower = dg.Grower(graph_for(args.width, "cpu"), loss="cross_entropy")
    grower.train_epoch(loader)
    start = time.process_time()
    grower.train_epoch(loader)
    epoch = time.process_time() - start
    profile = cProfile.Profile()
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile.enable()
        grower.grow_step(loader)
        profile.disable()
    step = time.process_time() - start
    print(f"width {args.width}: epoch {epoch:.2f} CPU s, grow_step {step:.2f} CPU s under cProfile "
          f"({step / epoch:.1f}× the epoch)")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.rows)


if __name__ == "__main__":
    main()
