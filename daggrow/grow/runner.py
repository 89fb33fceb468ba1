"""A whole growth run from a config: data → starting graph → Grower.fit → history on disk.

This is what ``daggrow grow`` runs; the CLI only parses arguments into a :class:`RunConfig`.
Everything is checked before the run folder is touched; the folder then holds ``config.json``
and, after every growth step and epoch, a checkpoint (``checkpoint/``) and ``history.json``,
so that ``resume=True`` (``daggrow grow --resume DIR``) goes on exactly where a killed run
stopped. A non-empty folder is only replaced with ``force=True``.

>>> result = run_growth(RunConfig(dataset="digits", steps=5, out="runs/digits"))   # doctest: +SKIP
>>> result = run_growth(RunConfig(out="runs/digits"), resume=True)                # doctest: +SKIP
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import distributed
from ..atomic import readable, recover, replace_folder
from ..errors import ConfigError, GraphError, PersistenceError
from ..graph import ConvBlock, Graph, get_activation
from . import inputs
from .candidates import KINDS
from .checkpoint import FitPosition, restore_random_state
from .grower import Grower, evaluate
from .strategies import STRATEGIES

CONFIG_FILE, CHECKPOINT_DIR = "config.json", "checkpoint"


class RunConfig(BaseModel):
    """Everything that defines a growth run (saved as ``config.json`` in the run folder)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "digits"  # the default job: learns to ≥ 0.9 test accuracy in seconds (docs/timings.md)
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
    lr: float = Field(default=3e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)  # > 0: AdamW with this decoupled weight decay
    keep_best: bool = False  # after the final epochs, keep the weights of the best validation accuracy
    batch_size: int = Field(default=256, ge=1)
    final_epochs: int = Field(default=0, ge=0)
    max_parameters: int | None = Field(default=None, ge=1)
    max_width: int | None = Field(default=None, ge=1)
    max_nodes: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0)
    device: str = "cpu"
    memory_budget: str | None = None  # e.g. "4GB": statistics per step (default: half the memory available)
    out: str = "runs/demo"
    world_size: int = Field(default=1, ge=1)  # processes the run was started on (torchrun --nproc_per_node)

    def check(self) -> None:
        """What pydantic's field constraints cannot say: known names, widths ≥ 1, a device that
        exists here. Raises :class:`ConfigError` naming the setting."""
        from ..data import DATASETS

        inputs.one_of("dataset", self.dataset, list(DATASETS))
        inputs.one_of("strategy", self.strategy, list(STRATEGIES))
        try:
            get_activation(self.activation)
        except GraphError as err:
            raise ConfigError(f"activation: {err}") from None
        for name, widths in (("hidden", self.hidden), ("channels", self.channels)):
            if any(w < 1 for w in widths):
                raise ConfigError(f"{name} widths must be ≥ 1, got {widths}")
        if self.model == "cnn" and not self.channels:
            raise ConfigError("a CNN needs at least one conv layer: pass channels, e.g. [2, 2, 2]")
        if self.kinds is not None and (not self.kinds or any(k not in KINDS for k in self.kinds)):
            raise ConfigError(f"kinds must be a non-empty list of {', '.join(KINDS)}; got {self.kinds}")
        inputs.device(self.device)


def load_config(run_dir: str | Path) -> RunConfig:
    """The :class:`RunConfig` a run folder was started with (``DIR/config.json``)."""
    file = readable(run_dir) / CONFIG_FILE
    try:
        return RunConfig.model_validate_json(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PersistenceError(f"{file}: missing; {run_dir} is not a run folder started by `daggrow grow`") from None
    except (ValidationError, UnicodeDecodeError) as err:
        raise PersistenceError(f"{file}: not a valid run configuration ({' '.join(str(err).split())[:300]})") from None


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


def run_growth(config: RunConfig, *, progress: bool = True, resume: bool = False, force: bool = False,
               on_checkpoint: Callable[[FitPosition], None] | None = None, trust: bool = False) -> dict:
    """Run ``config`` into the folder ``config.out``; returns a summary dict.

    ``resume``: continue the run in ``config.out`` from its last checkpoint, with the
    configuration saved there (only ``config.out`` is read from ``config``); the result equals
    that of an uninterrupted run. ``force``: replace a non-empty ``config.out`` (only a run
    folder). Without either, a non-empty ``config.out`` is a :class:`ConfigError`. Every check
    happens before the folder is touched. ``on_checkpoint`` is called after each checkpoint.
    ``trust``: a resumed checkpoint may load user modules kept by pickle (see :meth:`Graph.load`).

    Under ``torchrun`` (or in an initialised process group) each process reads its part of
    every batch (``batch_size`` is the batch of all processes together, so the run grows the
    same network whatever their number) and only rank 0 writes the folder and shows progress.
    """
    owned = distributed.init_from_environment(_device_of(config, resume))
    try:
        return _run_growth(config, progress=progress and distributed.is_main(), resume=resume, force=force,
                           on_checkpoint=on_checkpoint, trust=trust)
    finally:
        if owned:
            distributed.barrier()
            torch.distributed.destroy_process_group()


def _run_growth(config: RunConfig, *, progress: bool, resume: bool, force: bool,
                on_checkpoint: Callable[[FitPosition], None] | None, trust: bool) -> dict:
    from ..data import load_dataset

    out = Path(config.out)
    check_out(out, resume=resume, force=force)
    if resume:
        config = load_config(out).model_copy(update={"out": config.out})
        if distributed.is_main():
            recover(out)  # a run folder or checkpoint left mid-swap by a kill: put it back first
            recover(out / CHECKPOINT_DIR)
    config.check()
    config = config.model_copy(update={"world_size": distributed.world_size()})
    distributed.barrier()  # every process has checked the folder before rank 0 writes to it
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    data = load_dataset(config.dataset, seed=config.seed)
    if config.model == "cnn":
        data = data.as_signals()
    train, val, test = distributed.shard(*data.loaders(config.batch_size, seed=config.seed))
    checkpoint_dir = out / CHECKPOINT_DIR
    resuming = resume and (readable(checkpoint_dir) / "checkpoint.json").is_file()
    if resuming:
        grower = Grower.from_checkpoint(readable(checkpoint_dir), optimizer=_optimizer(config),
                                        map_location=config.device, trust=trust)
    else:
        grower = _new_grower(config, data)
        if not resume and distributed.is_main():  # a fresh folder holding only config.json (an old run there is replaced whole)
            with replace_folder(out, replaceable=_is_run_folder, what="run folder") as tmp:
                (tmp / CONFIG_FILE).write_text(config.model_dump_json(indent=2), encoding="utf-8")

    def checkpointed(position: FitPosition) -> None:
        if distributed.is_main():
            grower.history.write_json(out)  # the run so far, for `daggrow show` and `daggrow report`
        if on_checkpoint is not None:
            on_checkpoint(position)

    grower.on_checkpoint = checkpointed
    bar = _progress_bar(config, grower) if progress else None

    def on_event(event) -> None:
        if bar is not None and event.is_growth:
            bar.update(1)
            acc = event.val_accuracy
            bar.set_postfix(params=event.params_after, val_acc=f"{acc:.3f}" if acc is not None else "-",
                            where=",".join(event.where)[:20])

    extra = grower.checkpoint.file.extra if resuming else {}
    if extra.get("phase") == "final":
        restore_random_state(grower, grower.checkpoint, {"train": train, "val": val})
    elif resuming:
        grower.resume(train, val, callback=on_event, checkpoint_dir=checkpoint_dir)
    else:
        grower.fit(train, val, growth_steps=config.steps, epochs_between=config.epochs_between, mode=config.mode,
                   callback=on_event, checkpoint_dir=checkpoint_dir)
    best_epoch = _final_epochs(config, grower, train, val, checkpoint_dir, extra)
    if bar is not None:
        accepted = bar.n
        bar.update(bar.total - bar.n)  # the remaining attempts were declined (nothing lowered the held-out loss)
        bar.set_postfix_str(f"{accepted} of {config.steps} growth steps accepted")
        bar.close()
    test_loss, test_acc = evaluate(grower.graph, test, config.loss)
    val_loss, val_acc = evaluate(grower.graph, val, config.loss)
    events = grower.history.events  # the test metrics go with the run's last event (report, show)
    events[-1] = events[-1].model_copy(update={"test_loss": test_loss, "test_accuracy": test_acc})
    if distributed.is_main():
        grower.history.save(out, graph=grower.graph)
    return {
        "rank": distributed.rank(), "world_size": distributed.world_size(),
        "dataset": config.dataset, "strategy": config.strategy, "init": config.init,
        "growth_steps": sum(e.is_growth for e in grower.history.events),
        "parameters": grower.graph.num_parameters(), "nodes": len(grower.graph), "edges": len(grower.graph.edges),
        "val_loss": val_loss, "val_accuracy": val_acc, "test_loss": test_loss, "test_accuracy": test_acc,
        "seconds": grower.elapsed(), "out": str(out), "best_epoch": best_epoch, "resumed": resuming,
        "graph": grower.graph,
    }


def _device_of(config: RunConfig, resume: bool) -> str:
    """The run's device (a resumed run's is in its folder; a folder that cannot be read fails later)."""
    if not resume:
        return config.device
    try:
        return load_config(config.out).device
    except PersistenceError:
        return "cpu"


def check_out(out: Path, *, resume: bool, force: bool) -> None:
    """The run folder may be used: a new or empty folder, ``resume`` of a run folder, or ``force``
    over a run folder. A :class:`ConfigError` otherwise, before anything is written."""
    if resume and force:
        raise ConfigError("resume and force exclude each other: resume continues the run in the folder, "
                          "force replaces it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the run folder {out} is a file: choose a folder path for --out")
    folder = readable(out)
    if resume:
        if not (folder / CONFIG_FILE).is_file():
            raise ConfigError(f"cannot resume {out}: it is not a run folder (no {CONFIG_FILE}; `daggrow grow --out "
                              f"{out}` starts one)")
        return
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not force:
        raise ConfigError(f"the run folder {out} is not empty: pass --force (force=True) to replace it, --resume "
                          "(resume=True) to continue the run in it, or choose another --out")
    if not _is_run_folder(folder):
        raise ConfigError(f"refusing to replace {out}: it holds files that are not a daggrow run (--force only "
                          "replaces run folders); choose another --out")


def _is_run_folder(folder: Path) -> bool:
    names = {"config.json", "history.json", CHECKPOINT_DIR, "graph", "report.html"}
    return not any(folder.iterdir()) or any((folder / n).exists() for n in names)


def _new_grower(config: RunConfig, data: Any) -> Grower:
    if config.model == "cnn":
        graph = starting_cnn(1, data.spatial_shape, data.num_classes, config.channels, config.activation)
    else:
        graph = starting_graph(data.num_features, data.num_classes, config.hidden, config.activation)
    graph.compile(device=config.device)
    kinds = config.kinds or (["expand_node"] if config.model == "cnn" else ["expand_node", "new_node"])
    return Grower(graph, loss=config.loss, strategy=config.strategy, init=config.init, kinds=kinds,
                  directions_per_step=config.neurons_per_step, new_node_activation=config.activation,
                  max_parameters=config.max_parameters, max_width=config.max_width, max_nodes=config.max_nodes,
                  lr=config.lr, seed=config.seed, optimizer=_optimizer(config),
                  reuse_input_moments=True,  # our loaders yield the same samples every epoch
                  memory_budget=config.memory_budget)


def _progress_bar(config: RunConfig, grower: Grower):
    from tqdm.auto import tqdm

    done = sum(e.is_growth for e in grower.history.events)
    return tqdm(total=config.steps, initial=min(done, config.steps), desc=f"growing on {config.dataset}", unit="step")


def _final_epochs(config: RunConfig, grower: Grower, train, val, checkpoint_dir: Path, extra: dict) -> int | None:
    """``final_epochs`` of training after the growth steps (checkpointed after each), keeping the
    weights of the best validation accuracy with ``keep_best``; returns that epoch (or None)."""
    position = FitPosition(growth_steps=0, epochs_between=0, mode="sgd", phase="done")
    best: tuple[float, Graph, int] | None = None
    start = 1
    if extra.get("phase") == "final":
        start = extra["final_epoch"] + 1
        if config.keep_best:
            best = (extra["best_accuracy"], grower.checkpoint.graphs["best"], extra["best_epoch"])
    elif config.keep_best:
        best = (evaluate(grower.graph, val, config.loss)[1], grower.graph.copy(), 0)
    for epoch in range(start, config.final_epochs + 1):
        grower.train_epoch(train)
        if best is not None:
            accuracy = evaluate(grower.graph, val, config.loss)[1]
            if accuracy > best[0]:
                best = (accuracy, grower.graph.copy(), epoch)
        state = {"phase": "final", "final_epoch": epoch}
        if best is not None:
            state.update(best_accuracy=best[0], best_epoch=best[2])
        grower.save_checkpoint(checkpoint_dir, position, train=train, val=val, extra=state,
                               graphs={"best": best[1]} if best is not None else None)
        grower.on_checkpoint(position)
    if best is not None and best[2] != config.final_epochs:
        grower.swap(best[1])  # same architecture, the weights of the best validation epoch
    return None if best is None else best[2]
