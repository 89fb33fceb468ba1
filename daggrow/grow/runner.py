"""A whole growth run from a config: data → starting graph → Grower.fit → history on disk.

This is what ``daggrow grow`` runs; the CLI only parses arguments into a :class:`RunConfig`.

>>> result = run_growth(RunConfig(dataset="digits", steps=5, out="runs/digits"))   # doctest: +SKIP
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..graph import ConvBlock, Graph
from .grower import Grower, evaluate


class RunConfig(BaseModel):
    """Everything that defines a growth run (saved as ``config.json`` in the run folder)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "synthetic"
    strategy: str = "amplitude"
    init: Literal["tiny", "gradmax", "north", "random", "zero"] = "tiny"
    steps: int = Field(default=20, ge=0)
    neurons_per_step: int = Field(default=2, ge=1)
    epochs_between: int = Field(default=1, ge=0)
    mode: Literal["sgd", "pure", "grow_only"] = "sgd"
    model: Literal["mlp", "cnn"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [1])
    channels: list[int] = Field(default_factory=lambda: [2, 2, 2])  # cnn: channels of the starting conv nodes
    activation: str = "relu"
    kinds: list[str] | None = None  # default: expand_node and new_node for an MLP, expand_node for a CNN
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    lr: float = 3e-3
    weight_decay: float = Field(default=0.0, ge=0.0)  # > 0: AdamW with this decoupled weight decay
    keep_best: bool = False  # after the final epochs, keep the weights of the best validation accuracy
    batch_size: int = 256
    final_epochs: int = Field(default=0, ge=0)
    max_parameters: int | None = None
    max_width: int | None = None
    max_nodes: int | None = None
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/demo"


def starting_graph(num_features: int, num_classes: int, hidden: list[int], activation: str = "relu") -> Graph:
    """A thin chain: input → hidden widths → output (``hidden=[]`` gives a direct linear map)."""
    g = Graph()
    g.add_input("x", num_features)
    previous = "x"
    for i, width in enumerate(hidden, start=1):
        g.add_node(f"h{i}", width, activation)
        g.add_edge(previous, f"h{i}")
        previous = f"h{i}"
    g.add_node("y", num_classes)
    g.add_edge(previous, "y")
    g.set_output("y")
    return g


def starting_cnn(in_channels: int, shape: tuple[int, ...], num_classes: int, channels: list[int],
                 activation: str = "relu") -> Graph:
    """A thin CNN: input → conv nodes of the given channels → linear output reading the last one.

    1-d (the MNIST-1D paper's CNN geometry): kernel 5 then 3, stride 2, padding 1. 2-d: kernel 3,
    padding 1, stride 1 for the first layer and 2 after.
    """
    if not channels:
        raise ValueError("a CNN needs at least one conv layer: pass channels, e.g. [2, 2, 2]")
    g = Graph()
    g.add_input("x", in_channels, shape=shape)
    previous = "x"
    for i, width in enumerate(channels, start=1):
        if len(shape) == 1:
            block = ConvBlock(dim=1, kernel_size=5 if i == 1 else 3, stride=2, padding=1)
        else:
            block = ConvBlock(dim=2, kernel_size=3, stride=1 if i == 1 else 2, padding=1)
        shape = block.output_shape(shape)
        g.add_node(f"c{i}", width, activation, shape=shape)
        g.add_edge(previous, f"c{i}", block)
        previous = f"c{i}"
    g.add_node("y", num_classes)
    g.add_edge(previous, "y")
    g.set_output("y")
    return g


def _optimizer(config: RunConfig):
    """Adam (the Grower's default) or, with ``weight_decay``, AdamW."""
    if config.weight_decay <= 0:
        return None
    return lambda params: torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def run_growth(config: RunConfig, *, progress: bool = True) -> dict:
    """Run ``config``; writes the run folder and returns a summary dict."""
    from ..data import load_dataset

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.model_dump_json(indent=2))
    data = load_dataset(config.dataset, seed=config.seed)
    if config.model == "cnn":
        data = data.as_signals()
        graph = starting_cnn(1, data.spatial_shape, data.num_classes, config.channels, config.activation)
    else:
        graph = starting_graph(data.num_features, data.num_classes, config.hidden, config.activation)
    train, val, test = data.loaders(config.batch_size, seed=config.seed)
    graph.compile(device=config.device)
    kinds = config.kinds or (["expand_node"] if config.model == "cnn" else ["expand_node", "new_node"])
    grower = Grower(graph, loss=config.loss, strategy=config.strategy, init=config.init, kinds=kinds,
                    neurons_per_step=config.neurons_per_step, new_node_activation=config.activation,
                    max_parameters=config.max_parameters, max_width=config.max_width, max_nodes=config.max_nodes,
                    lr=config.lr, seed=config.seed, optimizer=_optimizer(config),
                    reuse_input_moments=True)  # our loaders yield the same samples every epoch
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.steps, desc=f"growing on {config.dataset}", unit="step")

    def on_event(event) -> None:
        if bar is not None and event.is_growth:
            bar.update(1)
            acc = event.val_accuracy
            bar.set_postfix(params=event.params_after, val_acc=f"{acc:.3f}" if acc is not None else "-",
                            where=",".join(event.where)[:20])

    start = time.perf_counter()
    grower.fit(train, val, growth_steps=config.steps, epochs_between=config.epochs_between, mode=config.mode,
               callback=on_event)
    best = (evaluate(grower.graph, val, config.loss)[1], grower.graph.copy(), 0) if config.keep_best else None
    for epoch in range(1, config.final_epochs + 1):
        grower.train_epoch(train)
        if best is not None:
            accuracy = evaluate(grower.graph, val, config.loss)[1]
            if accuracy > best[0]:
                best = (accuracy, grower.graph.copy(), epoch)
    if best is not None and best[2] != config.final_epochs:
        grower.swap(best[1])  # same architecture, the weights of the best validation epoch
    if bar is not None:
        accepted = bar.n
        bar.update(bar.total - bar.n)  # the remaining attempts were declined (nothing lowered the held-out loss)
        bar.set_postfix_str(f"{accepted} of {config.steps} growth steps accepted")
        bar.close()
    test_loss, test_acc = evaluate(grower.graph, test, config.loss)
    val_loss, val_acc = evaluate(grower.graph, val, config.loss)
    grower.history.save(out, graph=grower.graph)
    return {
        "dataset": config.dataset, "strategy": config.strategy, "init": config.init,
        "growth_steps": sum(e.is_growth for e in grower.history.events),
        "parameters": grower.graph.num_parameters(), "nodes": len(grower.graph), "edges": len(grower.graph.edges),
        "val_loss": val_loss, "val_accuracy": val_acc, "test_loss": test_loss, "test_accuracy": test_acc,
        "seconds": time.perf_counter() - start, "out": str(out),
        "best_epoch": None if best is None else best[2],
        "graph": grower.graph,
    }
