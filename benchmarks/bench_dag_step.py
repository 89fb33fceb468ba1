"""Step cost of grown DAGs: one default ``Grower.grow_step`` against one plain training epoch.

A DAG on digits (64 inputs, 10 classes, 1,078 training samples, batch 128): ``--nodes`` − 2
hidden ReLU nodes of width 8 in a chain, each also reading every earlier node (input included)
with probability ``--skip`` (random skips), the output reading the last node and random earlier
ones. After a warm-up epoch and step, repeatedly and interleaved in one process: a plain epoch
(``Grower.train_epoch``, the default Adam, on the same loader) and a default ``grow_step``
(candidates, statistics, propose, line search, apply), each repeat from the same graph (its
node count is the first column). Times are process CPU time (``time.process_time``: the machine
is shared), medians.

``--profile`` adds a breakdown of the grow steps (what dominates) from ``cProfile``
cumulative times of daggrow's stage functions.

    python benchmarks/bench_dag_step.py                         # 50-node DAG: the ≤ 6× target
    python benchmarks/bench_dag_step.py --curve 5 10 25 50 100  # step cost vs number of nodes
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics as pystats
import time
import warnings

import torch

import daggrow as dg
from daggrow.data import load_dataset
from daggrow.grow.optim import carry_optimizer

# stage → the daggrow function whose cumulative time it is (cProfile)
STAGES = {
    "candidates": ("candidates.py", "enumerate_candidates"),
    "statistics pass": ("collect.py", "collect_statistics"),
    "propose": ("propose.py", "propose"),
    "bottleneck Ψ": ("propose.py", "bottleneck"),
    "line search": ("strategies.py", "select"),
    "statistics plan": ("memory.py", "fit_plan"),
    "apply + carry optimizer": ("grower.py", "swap"),
}


def build_dag(hidden: int, width: int = 8, skip: float = 0.1, seed: int = 0) -> dg.Graph:
    """x(64) → h1 → … → h_hidden → y(10), ReLU nodes of ``width``, random skip edges."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    g = dg.Graph()
    g.add_input("x", 64)
    names = ["x"]
    for i in range(1, hidden + 1):
        name = f"h{i}"
        g.add_node(name, width, "relu")
        g.add_edge(names[-1], name)
        for u in names[:-1]:
            if float(torch.rand((), generator=gen)) < skip:
                g.add_edge(u, name)
        names.append(name)
    g.add_node("y", 10)
    g.add_edge(names[-1], "y")
    for u in names[:-1]:
        if float(torch.rand((), generator=gen)) < skip:
            g.add_edge(u, "y")
    g.set_output("y")
    return g


def measure(hidden: int, repeats: int, skip: float, profile: bool) -> dict:
    data = load_dataset("digits", seed=0)
    x, y = data.x_train.float(), data.y_train
    train = dg.data.TensorLoader(x, y, 128, shuffle=True, seed=0)
    g = build_dag(hidden, skip=skip)
    grower = dg.Grower(g, loss="cross_entropy", seed=0)
    grower.train_epoch(train)  # warm-up: optimizer state, compiled module
    base, base_optimizer = grower.graph, grower.optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grower.grow_step(train)  # warm-up of the growth code paths (its graph is dropped)
    epochs, steps, grown = [], [], 0
    for _ in range(repeats):
        restart(grower, base, base_optimizer)
        t = time.process_time()
        grower.train_epoch(train)
        epochs.append(time.process_time() - t)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.process_time()
            event = grower.grow_step(train)
            steps.append(time.process_time() - t)
        grown += event is not None
    out = {"nodes": len(base), "hidden": hidden, "epoch": pystats.median(epochs), "step": pystats.median(steps),
           "grown": grown, "repeats": repeats,
           "candidates": len(dg.grow.candidates.enumerate_candidates(base, grower.kinds, **grower.limits))}
    if profile:  # more steps, under cProfile (its overhead stays out of the timings above)
        prof = cProfile.Profile()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(max(2, repeats // 2)):
                restart(grower, base, base_optimizer)
                grower.train_epoch(train)
                prof.enable()
                grower.grow_step(train)
                prof.disable()
        out["breakdown"] = breakdown(prof)
    return out


def restart(grower: dg.Grower, base: dg.Graph, optimizer) -> None:
    """Every repeat from the same graph and optimizer state: a fresh copy (compiled anew, as after
    every accepted step of a real run), the optimizer's state carried onto it."""
    copy = base.copy()
    grower.graph, grower.optimizer = copy, carry_optimizer(optimizer, base, copy)


def breakdown(prof: cProfile.Profile) -> dict[str, float]:
    """Each stage's share of the profiled grow steps (cumulative times)."""
    stats = pstats.Stats(prof)
    total = sum(v[3] for (f, _, fn), v in stats.stats.items() if f.endswith("grower.py") and fn == "grow_step")
    shares = {}
    for stage, (file, func) in STAGES.items():
        cum = sum(v[3] for (f, _, fn), v in stats.stats.items() if f.endswith(file) and fn == func)
        shares[stage] = cum / total
    return shares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50, help="nodes in all (input + hidden + output)")
    ap.add_argument("--curve", type=int, nargs="*", help="node counts for the step-cost curve")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip", type=float, default=0.1)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} (process CPU time, medians)")
    print(f"{'nodes':>6} {'candidates':>10} {'epoch s':>8} {'step s':>8} {'step/epoch':>10} {'grown':>6}  breakdown")
    for nodes in (args.curve or [args.nodes]):
        r = measure(nodes - 2, args.repeats, args.skip, args.profile)
        parts = ", ".join(f"{k} {v:.0%}" for k, v in r.get("breakdown", {}).items())
        print(f"{r['nodes']:>6} {r['candidates']:>10} {r['epoch']:>8.3f} {r['step']:>8.3f} "
              f"{r['step'] / r['epoch']:>9.1f}× {r['grown']:>3}/{r['repeats']}  {parts}", flush=True)


if __name__ == "__main__":
    main()
