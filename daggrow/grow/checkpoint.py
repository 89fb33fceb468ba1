"""Checkpoints: everything a growth run needs to go on exactly where it stopped.

A checkpoint is one folder, written whole and swapped in atomically (:mod:`daggrow.atomic`)::

    DIR/checkpoint.json   the Grower's settings, the position in fit's schedule, the
                          Python/NumPy random states, the loaders' states, the caller's own state
    DIR/history.json      the events so far
    DIR/graph/            the graph (Graph.save)
    DIR/state.pt          tensors only: the optimizer state, the torch (and CUDA) random
                          states, the Grower's generator, reused input moments

Loading never runs code: JSON for the settings, ``torch.load(weights_only=True)`` for the
tensors, ``Graph.load`` for graphs. Settings that are code (a loss function, a strategy
object, an optimizer factory) are not stored: pass them again to
:meth:`daggrow.Grower.from_checkpoint`.

>>> grower.fit(train, val, growth_steps=20, checkpoint_dir="runs/x/checkpoint")     # doctest: +SKIP
>>> Grower.from_checkpoint("runs/x/checkpoint").resume(train, val)                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..atomic import readable, replace_folder
from ..errors import ConfigError, PersistenceError
from ..graph import Graph
from ..graph.io import save_graph
from ..history import History

if TYPE_CHECKING:
    from .grower import Grower

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "daggrow-checkpoint", 1
SPEC_FILE, STATE_FILE, HISTORY_FILE = "checkpoint.json", "state.pt", "history.json"


class FitPosition(BaseModel):
    """Where :meth:`Grower.fit` is in its schedule, and the arguments it was called with.

    ``step`` is the growth step in progress; ``phase`` ``"grow"`` means its growth part is still
    to do, ``"train"`` that it is done and ``epochs_done`` of its epochs are too; ``"done"``: the
    fit stopped early (patience, or nothing left to add).
    """

    model_config = ConfigDict(extra="forbid")
    growth_steps: int
    epochs_between: int
    mode: Literal["sgd", "pure", "grow_only"]
    patience: int | None = None
    step: int = 0
    phase: Literal["grow", "train", "done"] = "grow"
    epochs_done: int = 0
    best_val: float | None = None
    stale: int = 0
    declined: int = 0

    @property
    def finished(self) -> bool:
        return self.phase == "done" or self.step >= self.growth_steps


class CheckpointFile(BaseModel):
    """The content of ``checkpoint.json``."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["daggrow-checkpoint"] = CHECKPOINT_FORMAT
    format_version: int = CHECKPOINT_VERSION
    settings: dict[str, Any]
    position: FitPosition | None = None
    attempts: int = 0
    last_metrics: dict[str, float | None] = {}
    elapsed: float = 0.0
    python_random: list[Any]
    numpy_random: list[Any]
    loaders: dict[str, Any] = {}
    optimizer_params: list[list[str]] | None = None
    optimizer_class: str | None = None
    extra: dict[str, Any] = {}
    graphs: list[str] = []


@dataclass
class Checkpoint:
    """A loaded checkpoint (see the module docstring)."""

    path: Path
    file: CheckpointFile
    graph: Graph
    history: History
    state: dict[str, Any]
    graphs: dict[str, Graph] = field(default_factory=dict)


# -------------------------------------------------------------------------------------- write
def save_checkpoint(grower: "Grower", folder: str | Path, position: FitPosition | None = None, *,
                    loaders: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    graphs: dict[str, Graph] | None = None) -> Path:
    """Write ``grower``'s state into ``folder`` (replaced whole, atomically); returns the folder.

    ``loaders``: role → loader whose position to keep (``state_dict()`` when it has one);
    ``extra``: the caller's own JSON-able state; ``graphs``: more graphs to keep (by name).
    """
    folder = Path(folder)
    from .. import distributed

    if not distributed.is_main():  # across processes, rank 0 writes (every process holds the same state)
        return folder
    graphs = dict(graphs or {})
    file = CheckpointFile(
        settings=grower.settings(), position=position, attempts=grower._attempts,
        last_metrics=dict(grower._last_metrics), elapsed=grower.elapsed(),
        python_random=_jsonable(random.getstate()), numpy_random=_numpy_state(),
        loaders={role: loader.state_dict() for role, loader in (loaders or {}).items()
                 if loader is not None and hasattr(loader, "state_dict")},
        optimizer_params=_optimizer_names(grower),
        optimizer_class=type(grower.optimizer).__name__ if grower.optimizer is not None else None, extra=dict(extra or {}), graphs=sorted(graphs))
    state = {
        "optimizer": grower.optimizer.state_dict() if grower.optimizer is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "generator": grower.generator.get_state(),
        "input_moments": _input_moments(grower, (loaders or {}).get("train")),
    }
    text = file.model_dump_json(indent=1)
    with replace_folder(folder, replaceable=_is_checkpoint, what="checkpoint") as tmp:
        save_graph(grower.graph, tmp / "graph", atomic=False)
        for name, g in graphs.items():
            save_graph(g, tmp / f"graph_{name}", atomic=False)
        (tmp / HISTORY_FILE).write_text(grower.history.to_json(), encoding="utf-8")
        torch.save(state, tmp / STATE_FILE)
        (tmp / SPEC_FILE).write_text(text, encoding="utf-8")
    return folder


def _is_checkpoint(folder: Path) -> bool:
    return (folder / SPEC_FILE).is_file() or not any(folder.iterdir())


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _numpy_state() -> list[Any]:
    import numpy as np  # scikit-learn's dependency, so always there; loaders may draw from it

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _optimizer_names(grower: "Grower") -> list[list[str]] | None:
    """The graph names of the optimizer's parameters, group by group (its state is keyed by order)."""
    if grower.optimizer is None:
        return None
    names = {id(p): n for n, p in grower.graph.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in grower.optimizer.param_groups]


def _input_moments(grower: "Grower", train: Any) -> dict | None:
    """The data-only moments the Grower reuses across steps (``reuse_input_moments``), as tensors."""
    cached = getattr(grower, "_input_moments", {}).get(id(train)) if train is not None else None
    if cached is None:
        return None
    return {"n": cached.n, "widths": dict(cached.widths), "positions": dict(cached.positions),
            "h": dict(cached.h), "hh": [[u, w, t] for (u, w), t in cached.hh.items()],
            "data_cache": [(key, *_decomposed(value)) for key, value in cached.data_cache.items()
                           if _decomposed(value) is not None]}


def _decomposed(value: Any) -> tuple[torch.Tensor, str, dict] | None:
    """A data cache entry (S, its whitening) as tensors and plain values; None for anything else.
    Kept so that a resumed run reuses the decomposition as the uninterrupted one does (recomputing
    it gives the same numbers, but warns about a rank deficiency once more)."""
    if not (isinstance(value, tuple) and len(value) == 2 and torch.is_tensor(value[0])
            and dataclasses.is_dataclass(value[1])):
        return None
    fields = {f.name: getattr(value[1], f.name) for f in dataclasses.fields(value[1])}
    if not all(v is None or isinstance(v, (str, int, float, bool, torch.Tensor)) for v in fields.values()):
        return None
    return value[0], type(value[1]).__name__, fields


def _cache_entries(entries: list) -> dict:
    """The data cache back from :func:`_decomposed` entries of a known class (others are recomputed)."""
    from ..solve.linalg import Whitening

    cache = {}
    for key, S, kind, fields in entries:
        if kind == Whitening.__name__ and set(fields) == {f.name for f in dataclasses.fields(Whitening)}:
            cache[key] = (S, Whitening(**fields))
    return cache


# -------------------------------------------------------------------------------------- read
def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu", *,
                    trust: bool = False) -> Checkpoint:
    """Read a checkpoint folder; :class:`PersistenceError` names the file and the problem.
    ``trust``: also load the user modules its graphs keep by pickle (see :meth:`Graph.load`)."""
    folder = readable(path)
    spec = folder / SPEC_FILE
    if not spec.is_file():
        inner = readable(folder / "checkpoint")
        if (inner / SPEC_FILE).is_file():  # a run folder: its checkpoint
            folder, spec = inner, inner / SPEC_FILE
        else:
            raise PersistenceError(f"{path}: not a checkpoint ({SPEC_FILE} is missing; a checkpoint is written by "
                                   "Grower.fit(..., checkpoint_dir=DIR) and by `daggrow grow` in DIR/checkpoint)")
    try:
        file = CheckpointFile.model_validate(json.loads(spec.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PersistenceError(f"{spec}: not valid JSON ({err}); the file is damaged") from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:3])
        raise PersistenceError(f"{spec}: not a daggrow checkpoint of format version {CHECKPOINT_VERSION} "
                               f"({problems})") from None
    try:
        state = torch.load(folder / STATE_FILE, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise PersistenceError(f"{folder / STATE_FILE}: missing (was the checkpoint copied in part?)") from None
    except Exception as err:  # torch raises many types for damaged or unsafe archives
        raise PersistenceError(f"{folder / STATE_FILE}: cannot be read safely ({type(err).__name__}: "
                               f"{' '.join(str(err).split())[:300]})") from None
    if not isinstance(state, dict) or not {"optimizer", "torch_rng", "generator"} <= set(state):
        raise PersistenceError(f"{folder / STATE_FILE}: not a daggrow checkpoint state")
    graph = Graph.load(folder / "graph", map_location=map_location, trust=trust)
    graphs = {name: Graph.load(folder / f"graph_{name}", map_location=map_location, trust=trust)
              for name in file.graphs}
    return Checkpoint(folder, file, graph, History.load(folder), state, graphs)


def grower_from_checkpoint(cls: type["Grower"], path: str | Path, *, loss: Any = None, strategy: Any = None,
                           optimizer: Any = None, map_location: str | torch.device | None = "cpu",
                           trust: bool = False) -> "Grower":
    """:meth:`Grower.from_checkpoint`: the settings saved, the code passed again, the state restored."""
    ckpt = load_checkpoint(path, map_location=map_location, trust=trust)
    settings = dict(ckpt.file.settings)
    custom = settings.pop("custom", {})
    given = {"loss": loss, "strategy": strategy, "optimizer": optimizer}
    what = {"loss": "a loss function", "strategy": "a strategy object", "optimizer": "an optimizer factory"}
    for key, kind in custom.items():
        if given[key] is None:
            raise ConfigError(f"{ckpt.path} was written by a Grower given {what[key]} ({kind}), which a "
                              f"checkpoint does not store (it is code): pass {key}=... to from_checkpoint")
    for key in ("loss", "strategy"):
        if given[key] is not None:
            settings[key] = given[key]
    grower = cls(ckpt.graph, optimizer=optimizer, **settings)
    grower.history = ckpt.history
    grower._attempts = ckpt.file.attempts
    grower._last_metrics = dict(ckpt.file.last_metrics)
    grower._t0 = time.perf_counter() - ckpt.file.elapsed
    restore_optimizer(grower, ckpt)
    grower._resume_from = ckpt
    return grower


def restore_optimizer(grower: "Grower", checkpoint: Checkpoint) -> None:
    """Rebuild the optimizer over the checkpoint's graph, its groups in the saved order, with its state."""
    saved, names = checkpoint.state["optimizer"], checkpoint.file.optimizer_params
    if saved is None or names is None:
        grower.optimizer = None
        return
    from .optim import _constructor_defaults

    params = dict(grower.graph.named_parameters())
    missing = [n for group in names for n in group if n not in params]
    if missing:
        raise PersistenceError(f"{checkpoint.path}: the optimizer state names parameters the graph lacks: {missing[:5]}")
    template = grower._make_optimizer([params[n] for group in names for n in group])
    if type(template).__name__ != checkpoint.file.optimizer_class:
        raise PersistenceError(f"{checkpoint.path}: the run's optimizer was {checkpoint.file.optimizer_class}, but "
                               f"the optimizer given makes a {type(template).__name__}: pass the one the run used")
    optimizer = type(template)([{"params": [params[n] for n in group]} for group in names],
                               **_constructor_defaults(template))
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as err:
        raise PersistenceError(f"{checkpoint.path}: the optimizer state does not fit a {type(template).__name__} "
                               f"({err}); pass the optimizer the run used to Grower.from_checkpoint") from None
    grower.optimizer = optimizer


def restore_random_state(grower: "Grower", checkpoint: Checkpoint, loaders: dict[str, Any]) -> None:
    """Put every random generator and loader back where the checkpoint found them."""
    from ..stats.statistics import Statistics

    file, state = checkpoint.file, checkpoint.state
    random.setstate(_tuples(file.python_random))
    import numpy as np

    kind, keys, pos, has_gauss, gauss = file.numpy_random
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    grower.generator.set_state(state["generator"].cpu())
    for role, loader in loaders.items():
        if role in file.loaders and loader is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(file.loaders[role])
    moments, train = state.get("input_moments"), loaders.get("train")
    if moments is not None and train is not None and hasattr(grower, "_input_moments"):
        grower._input_moments[id(train)] = Statistics(
            widths=moments["widths"], n=moments["n"], positions=moments["positions"], h=moments["h"],
            hh={(u, w): t for u, w, t in moments["hh"]}, data_cache=_cache_entries(moments.get("data_cache", [])))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
