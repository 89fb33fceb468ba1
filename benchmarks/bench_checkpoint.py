"""What checkpointing costs a growth run: the same fit with and without ``checkpoint_dir``.

    python benchmarks/bench_checkpoint.py [--steps 20] [--repeats 3] [--threads 1]

Runs the digits fit of ``daggrow grow --dataset digits`` (hidden [1], 2 directions per step, one
epoch between steps) with and without a checkpoint after every growth step and epoch, the two
interleaved and repeated; prints the median process CPU time and wall time of each, their
ratio, the number of checkpoints, the size of one and the median time of one save.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import daggrow as dg
from daggrow.data import load_dataset
from daggrow.grow.runner import starting_graph


def one_run(data, steps: int, checkpoint_dir: Path | None) -> tuple[float, float, list[float]]:
    torch.manual_seed(0)
    train, val, _ = data.loaders(256, seed=0)
    grower = dg.Grower(starting_graph(data.num_features, data.num_classes, [1]), neurons_per_step=2, lr=3e-3,
                       reuse_input_moments=True)
    saves: list[float] = []
    if checkpoint_dir is not None:
        original = grower.save_checkpoint

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            saves.append(time.perf_counter() - start)
            return out

        grower.save_checkpoint = timed
    cpu, wall = time.process_time(), time.perf_counter()
    grower.fit(train, val, growth_steps=steps, epochs_between=1, checkpoint_dir=checkpoint_dir)
    return time.process_time() - cpu, time.perf_counter() - wall, saves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", seed=0)
    one_run(data, 1, None)  # warm-up
    rows: dict[str, list[tuple[float, float]]] = {"no checkpoints": [], "checkpoints": []}
    saves: list[float] = []
    size = 0
    for _ in range(args.repeats):
        folder = Path(tempfile.mkdtemp())
        try:
            cpu, wall, _ = one_run(data, args.steps, None)
            rows["no checkpoints"].append((cpu, wall))
            cpu, wall, timed = one_run(data, args.steps, folder / "checkpoint")
            rows["checkpoints"].append((cpu, wall))
            saves += timed
            size = sum(p.stat().st_size for p in (folder / "checkpoint").rglob("*") if p.is_file())
        finally:
            shutil.rmtree(folder)
    base = statistics.median(c for c, _ in rows["no checkpoints"])
    print(f"digits, {args.steps} growth steps, 1 epoch between, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'run':<16} {'CPU s':>8} {'wall s':>8} {'CPU ratio':>10}")
    for name, values in rows.items():
        cpu = statistics.median(c for c, _ in values)
        wall = statistics.median(w for _, w in values)
        print(f"{name:<16} {cpu:8.2f} {wall:8.2f} {cpu / base:10.3f}")
    print(f"{len(saves) // args.repeats} checkpoints per run, {size / 1024:.0f} KiB each at the end, "
          f"median save {1000 * statistics.median(saves):.1f} ms wall")


if __name__ == "__main__":
    main()
