"""A 1-D CNN grown on MNIST-1D from 2 channels per layer, against fixed CNNs trained as long.

Grows with ``daggrow grow --dataset mnist1d --model cnn`` settings (expand_node only, Adam
lr 1e-2, batch 100, 2 epochs between growth steps, then final epochs), then trains fixed CNNs
of the same geometry from scratch for the same total number of epochs: the MNIST-1D paper's
25 channels per layer, and the channel counts the grown network ended with. Writes a markdown
table to examples/out/cnn_mnist1d_<strategy>.md.

    python examples/cnn_mnist1d.py --steps 20 --final-epochs 20 --seeds 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from daggrow.data import load_dataset
from daggrow.grow import Grower, evaluate
from daggrow.grow.runner import starting_cnn

OUT = Path(__file__).parent / "out"


def train(data, channels, *, seed, steps, neurons, epochs_between, final_epochs, lr, batch_size, strategy="amplitude"):
    torch.manual_seed(seed)
    train_loader, val, test = data.loaders(batch_size, seed=seed)
    graph = starting_cnn(1, data.spatial_shape, data.num_classes, channels)
    grower = Grower(graph, loss="cross_entropy", kinds=["expand_node"], directions_per_step=neurons, lr=lr, seed=seed,
                    strategy=strategy, reuse_input_moments=True)
    start = time.perf_counter()
    if steps:
        grower.fit(train_loader, val, growth_steps=steps, epochs_between=epochs_between, mode="sgd")
    for _ in range(final_epochs):
        grower.train_epoch(train_loader)
    g = grower.graph
    return {"channels": [g.node(f"c{i}").width for i in range(1, len(channels) + 1)],
            "parameters": g.num_parameters(), "test_accuracy": evaluate(g, test, "cross_entropy")[1],
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--neurons", type=int, default=4)
    parser.add_argument("--epochs-between", type=int, default=2)
    parser.add_argument("--final-epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--strategy", default="amplitude", help="growth strategy (amplitude, efficiency, ...)")
    args = parser.parse_args()
    common = dict(lr=args.lr, batch_size=args.batch_size)
    rows = []
    for seed in args.seeds:
        data = load_dataset("mnist1d", seed=seed).as_signals()
        grown = train(data, [2, 2, 2], seed=seed, steps=args.steps, neurons=args.neurons, strategy=args.strategy,
                      epochs_between=args.epochs_between, final_epochs=args.final_epochs, **common)
        epochs = grown_epochs = args.steps * args.epochs_between + args.final_epochs
        rows.append((seed, f"grown from 2-2-2 ({args.strategy})", grown))
        for channels in ([25, 25, 25], grown["channels"]):
            fixed = train(data, channels, seed=seed, steps=0, neurons=0, epochs_between=0, final_epochs=epochs, **common)
            rows.append((seed, f"fixed {'-'.join(map(str, channels))}, {grown_epochs} epochs", fixed))
        for r in rows[-3:]:
            print(r[0], r[1], r[2])
    lines = ["| seed | network | channels | parameters | test accuracy | seconds |", "|---|---|---|---|---|---|"]
    for seed, name, r in rows:
        lines.append(f"| {seed} | {name} | {'-'.join(map(str, r['channels']))} | {r['parameters']:,} | "
                     f"{r['test_accuracy']:.3f} | {r['seconds']:.0f} |")
    OUT.mkdir(exist_ok=True)
    (OUT / f"cnn_mnist1d_{args.strategy}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
