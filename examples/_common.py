"""Shared by the examples: run one growth configuration and record (parameters, test accuracy)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from daggrow.grow import Grower, evaluate
from daggrow.grow.runner import starting_graph


def grow_curve(data, *, seed: int, steps: int, mode: str, strategy: str = "amplitude", init: str = "tiny",
               hidden=(1,), kinds=("expand_node",), neurons_per_step: int = 1, epochs_between: int = 1,
               activation: str = "relu", lr: float = 3e-3, batch_size: int = 256, weight_decay: float = 0.0) -> dict:
    """Grow from a thin chain; returns the curve [(parameters, test accuracy)] after every growth step."""
    torch.manual_seed(seed)
    train, val, test = data.loaders(batch_size, seed=seed)
    graph = starting_graph(data.num_features, data.num_classes, list(hidden), activation)
    grower = Grower(graph, loss="cross_entropy", strategy=strategy, init=init, kinds=kinds,
                    directions_per_step=neurons_per_step, new_node_activation=activation, lr=lr, seed=seed,
                    optimizer=optimizer(lr, weight_decay))
    curve = [(graph.num_parameters(), evaluate(graph, test, "cross_entropy")[1])]

    def on_event(event) -> None:
        if event.is_growth:
            curve.append((event.params_after, evaluate(grower.graph, test, "cross_entropy")[1]))

    start = time.perf_counter()
    grower.fit(train, val, growth_steps=steps, epochs_between=epochs_between, mode=mode, callback=on_event)
    if mode == "sgd" or curve[-1][0] != grower.graph.num_parameters():
        curve.append((grower.graph.num_parameters(), evaluate(grower.graph, test, "cross_entropy")[1]))
    return {"curve": curve, "seconds": time.perf_counter() - start, "grower": grower}


def optimizer(lr: float, weight_decay: float):
    """Adam, or AdamW when ``weight_decay`` > 0 (the same rule as ``daggrow grow --weight-decay``)."""
    if weight_decay > 0:
        return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return lambda params: torch.optim.Adam(params, lr=lr)


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[float, float]]:
    """Point-wise mean over seeds (curves truncated to the shortest)."""
    n = min(len(c) for c in curves)
    return [(statistics.mean(c[i][0] for c in curves), statistics.mean(c[i][1] for c in curves)) for i in range(n)]


def write_svg(path: Path, series: dict, *, title: str, xlabel: str, ylabel: str) -> None:
    from daggrow.history import svg_plot

    path.write_text(svg_plot(series, title=title, xlabel=xlabel, ylabel=ylabel, width=640, height=400))


def save_comparison(out: str, stem: str, table: str, series: dict, title: str) -> None:
    """Write ``<stem>.md`` (the table) and ``<stem>.svg`` (test accuracy against parameters) into
    ``out``, and print the table."""
    (Path(out) / f"{stem}.md").write_text(table + "\n")
    write_svg(Path(out) / f"{stem}.svg", series, title=title, xlabel="parameters", ylabel="test accuracy")
    print(table)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def example_arguments(doc: str, dataset: str, steps: int):
    """The command line every comparison example shares."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=dataset)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--out", default="examples/out")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return args


def compare(methods: dict[str, str], seeds: list[int], dataset: str, run) -> tuple[dict, list[dict]]:
    """Run ``run(method, data, seed)`` for every method and seed; returns the mean curve per
    label and, per method, its runs' final points and timings."""
    from daggrow.data import load_dataset

    series, summaries = {}, []
    for method, label in methods.items():
        runs = [run(method, load_dataset(dataset, seed=seed), seed) for seed in seeds]
        curves = [r["curve"] for r in runs]
        series[label] = mean_curve(curves)
        finals = [c[-1] for c in curves]
        summaries.append({"label": label, "curves": curves, "finals": finals,
                          "params": statistics.mean(p for p, _ in finals),
                          "accuracy": statistics.mean(a for _, a in finals),
                          "sd": statistics.pstdev([a for _, a in finals]),
                          "seconds": statistics.mean(r["seconds"] for r in runs)})
        print(label, [f"{a:.3f}" for _, a in finals])
    return series, summaries
