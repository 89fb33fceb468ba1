"""A DAG grown from input→output with one hidden neuron on MNIST-1D, against fixed MLPs.

Growth: x(40) → h(1, relu) → y(10); every step adds the best TINY neurons to an existing node or
a new node between two nodes (strategy "amplitude"), then one Adam epoch; a few final epochs.
Baselines: fixed one- and two-hidden-layer MLPs of several widths, among them one with the
grown network's parameter count, each trained with Adam for the same total number of epochs.

    python examples/dag_mnist1d.py --seeds 0 1 2 --steps 40 --out examples/out
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import grow_curve, markdown_table, optimizer, write_svg
from torch import nn

from daggrow.data import load_dataset


def train_fixed(data, widths: list[int], epochs: int, seed: int, lr: float = 3e-3, batch_size: int = 256,
                weight_decay: float = 0.0, keep_best: bool = False):
    """A fixed MLP trained for ``epochs``; with ``keep_best``, the test accuracy of the epoch with
    the best validation accuracy (the rule ``--keep-best`` applies to the grown network)."""
    torch.manual_seed(seed)
    layers, previous = [], data.num_features
    for w in widths:
        layers += [nn.Linear(previous, w), nn.ReLU()]
        previous = w
    model = nn.Sequential(*layers, nn.Linear(previous, data.num_classes))
    opt = optimizer(lr, weight_decay)(model.parameters())
    train, _, _ = data.loaders(batch_size, seed=seed)

    def accuracy(x, y):
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    best = (-1.0, 0.0)
    for _ in range(epochs):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if keep_best:
            val = accuracy(data.x_val, data.y_val)
            if val > best[0]:
                best = (val, accuracy(data.x_test, data.y_test))
    acc = best[1] if keep_best else accuracy(data.x_test, data.y_test)
    return sum(p.numel() for p in model.parameters()), acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--epochs-between", type=int, default=1)
    ap.add_argument("--final-epochs", type=int, default=20)
    ap.add_argument("--neurons-per-step", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--weight-decay", type=float, default=0.0, help="> 0: AdamW, for the grown and the fixed networks")
    ap.add_argument("--keep-best", action="store_true",
                    help="report the test accuracy at the best validation epoch (final epochs of the grown "
                         "network, all epochs of the fixed ones)")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--grown-only", action="store_true",
                    help="skip the fixed-MLP sweep (its results do not depend on the growth code)")
    ap.add_argument("--out", default="examples/out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, grown, fixed_points = [], [], {}
    for seed in args.seeds:
        data = load_dataset("mnist1d", seed=seed)
        start = time.perf_counter()
        run = grow_curve(data, seed=seed, steps=args.steps, mode="sgd", hidden=(1,),
                         kinds=("expand_node", "new_node"), directions_per_step=args.neurons_per_step,
                         epochs_between=args.epochs_between, lr=args.lr, batch_size=args.batch_size,
                         weight_decay=args.weight_decay)
        grower = run["grower"]
        from daggrow.grow import evaluate

        train, val, test = data.loaders(args.batch_size, seed=seed)
        best = (evaluate(grower.graph, val, "cross_entropy")[1], evaluate(grower.graph, test, "cross_entropy")[1])
        for _ in range(args.final_epochs):
            grower.train_epoch(train)
            if args.keep_best:
                v = evaluate(grower.graph, val, "cross_entropy")[1]
                if v > best[0]:
                    best = (v, evaluate(grower.graph, test, "cross_entropy")[1])
        acc = best[1] if args.keep_best else evaluate(grower.graph, test, "cross_entropy")[1]
        params = grower.graph.num_parameters()
        # every fit iteration trains (whether or not it grew): count the epochs actually run
        epochs = sum(e.action == "train" for e in grower.history) * args.epochs_between + args.final_epochs
        grown.append((params, acc, epochs, time.perf_counter() - start, len(grower.graph), len(grower.graph.edges)))
        if seed == args.seeds[0]:
            grower.history.save(out / f"dag_mnist1d{args.tag}_run", graph=grower.graph)
        same = max(1, round((params - data.num_classes) / (data.num_features + 1 + data.num_classes)))
        sweep = [] if args.grown_only else [[same], [16], [32], [64], [128], [256], [32, 32], [64, 64], [100, 100],
                                            [128, 128]]
        for widths in sweep:
            p, a = train_fixed(data, widths, epochs, seed, lr=args.lr, batch_size=args.batch_size,
                               weight_decay=args.weight_decay, keep_best=args.keep_best)
            fixed_points.setdefault(tuple(widths), []).append((p, a))
        print(f"seed {seed}: grown {params:,} params, {sum(e.is_growth for e in grower.history)} growth steps, "
              f"test acc {acc:.4f}, {epochs} epochs")
    g_params = statistics.mean(p for p, *_ in grown)
    g_acc = statistics.mean(a for _, a, *_ in grown)
    rows.append(["grown DAG (daggrow)", f"{g_params:,.0f}", f"{g_acc:.4f}", f"{statistics.pstdev([a for _, a, *_ in grown]):.4f}",
                 f"{statistics.mean(g[2] for g in grown):.0f}"])
    for widths, pts in fixed_points.items():
        label = "MLP " + "-".join(str(w) for w in widths) + (" (same size as grown, seed 0)" if widths == list(fixed_points)[0] else "")
        rows.append([label, f"{statistics.mean(p for p, _ in pts):,.0f}", f"{statistics.mean(a for _, a in pts):.4f}",
                     f"{statistics.pstdev([a for _, a in pts]):.4f}", f"{statistics.mean(g[2] for g in grown):.0f}"])
    table = markdown_table(["model", "parameters (mean)", "test acc (mean)", "test acc (sd)", "epochs"], rows)
    extra = (f"\n\ngrown networks: {statistics.mean(g[4] for g in grown):.1f} nodes, "
             f"{statistics.mean(g[5] for g in grown):.1f} edges on average; "
             f"{statistics.mean(g[3] for g in grown):.0f} s per run (growth + training, 2 CPU cores)\n")
    (out / f"dag_mnist1d{args.tag}.md").write_text(table + extra)
    series = {"grown": [(p, a) for p, a, *_ in grown]}
    if fixed_points:
        series["fixed MLP"] = sorted((statistics.mean(p for p, _ in pts), statistics.mean(a for _, a in pts))
                                     for pts in fixed_points.values())
    write_svg(out / f"dag_mnist1d{args.tag}.svg", series, title="MNIST-1D: grown DAG vs fixed MLPs", xlabel="parameters",
              ylabel="test accuracy")
    print(table + extra)


if __name__ == "__main__":
    main()
