"""Growth across processes: statistics pass, growth step and training epoch with 1 and N gloo
processes on the CPU (each process reads its part of every batch, as under torchrun).

    python benchmarks/bench_distributed.py [--world 2] [--rounds 3] [--repeats 3] [--dataset mnist1d|random:N:D]

For each process count, rounds alternate (1, N, 1, N, …); within a round each measure is
repeated. Printed per measure: the median over rounds and repeats of the wall time (slowest
process) and of the process CPU time (``time.process_time``; per process, the slowest, and
summed over the processes). On a shared machine wall times are disturbed by other work; CPU
time is not, but it does not show waiting in the all-reduce.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics as st
import tempfile
import time
from pathlib import Path

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(fn) -> tuple[float, float]:
    from daggrow import distributed

    distributed.barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return wall, cpu


def _data(args: dict):
    """A built-in data set, or ``random:N:D``: N samples of D Gaussian features, 10 classes of a
    random linear map (a statistics pass that costs more than its all-reduce)."""
    from daggrow.data import load_dataset
    from daggrow.data.datasets import Dataset

    if not args["dataset"].startswith("random:"):
        return load_dataset(args["dataset"], seed=0)
    n, d = map(int, args["dataset"].split(":")[1:])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 2048, d, generator=g)
    y = (x @ torch.randn(d, 10, generator=g)).argmax(1)
    return Dataset("random", x[:n], y[:n], x[n:n + 1024], y[n:n + 1024], x[n + 1024:], y[n + 1024:], 10)


def _worker(rank: int, world: int, port: int, args: dict, folder: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        import daggrow as dg
        from daggrow import distributed
        from daggrow.grow.candidates import enumerate_candidates, statistics_plan
        from daggrow.grow.grower import held_out_batch
        from daggrow.grow.runner import starting_graph

        data = _data(args)
        train, val, _ = distributed.shard(*data.loaders(args["batch_size"], shuffle=False))
        torch.manual_seed(0)
        base = starting_graph(data.num_features, data.num_classes, args["hidden"])
        held_out = held_out_batch(val)
        rows: dict[str, list] = {"statistics": [], "growth step": [], "training epoch": []}
        for repeat in range(-1, args["repeats"]):  # repeat -1 warms up (lazy imports, first Adam step)
            g = base.copy()
            plan = statistics_plan(g, enumerate_candidates(g, ("expand_node", "new_node")))
            rows["statistics"].append(_timed(lambda: dg.collect_statistics(g, train, "cross_entropy", plan=plan)))
            grower = dg.Grower(base.copy(), neurons_per_step=2, seed=0)
            rows["growth step"].append(_timed(lambda: grower.grow_step(train, held_out)))
            rows["training epoch"].append(_timed(lambda: grower.train_epoch(train)))
            if repeat < 0:
                for r in rows.values():
                    r.clear()
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(rows))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def run(world: int, args: dict) -> dict[str, list[tuple[float, float, float]]]:
    """(wall of the slowest process, CPU of the slowest process, CPU summed) per repeat and measure."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, args=(world, _free_port(), args, folder), nprocs=world, join=True)
        ranks = [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(world)]
    return {name: [(max(r[name][i][0] for r in ranks), max(r[name][i][1] for r in ranks),
                    sum(r[name][i][1] for r in ranks)) for i in range(args["repeats"])]
            for name in ranks[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dataset", default="mnist1d", help="a built-in data set, or random:N:D")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="*", default=[16])
    a = parser.parse_args()
    args = {"dataset": a.dataset, "batch_size": a.batch_size, "hidden": a.hidden, "repeats": a.repeats}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict[int, dict[str, list]] = {1: {}, a.world: {}}
    for _ in range(a.rounds):
        for world in (1, a.world):
            for name, rows in run(world, args).items():
                results[world].setdefault(name, []).extend(rows)
    print(f"{a.dataset}, MLP {a.hidden}, batch {a.batch_size} (split over the processes), "
          f"{a.rounds} rounds × {a.repeats} repeats, medians; torch {torch.__version__}, "
          f"{os.cpu_count()} CPU cores, 1 thread per process")
    print(f"{'measure':<16}{'processes':>10}{'wall s':>10}{'CPU s/process':>15}{'CPU s total':>13}")
    for name in results[1]:
        for world in (1, a.world):
            rows = results[world][name]
            print(f"{name:<16}{world:>10}{st.median(r[0] for r in rows):>10.3f}"
                  f"{st.median(r[1] for r in rows):>15.3f}{st.median(r[2] for r in rows):>13.3f}")


if __name__ == "__main__":
    main()
