"""Save and load graphs: a folder with ``graph.json`` (pydantic spec) and ``weights.pt``.

``graph.json`` holds the :class:`GraphSpec` (versioned by ``format_version``), the sha256 of
``weights.pt`` and the name, shape, dtype and ``requires_grad`` of every tensor in it. Tensors
are keyed ``edge:<edge>.<param>`` and ``norm:<node>.<key>``. Opaque (frozen) edge modules are
pickled whole in ``frozen.pt`` (loading it runs pickle: only load folders you trust).

Loading checks all of it: a corrupt, truncated or mismatched folder raises
:class:`PersistenceError` naming the file and the problem, never a silent partial load.

>>> g.save("net.dg"); h = Graph.load("net.dg")      # doctest: +SKIP
>>> h.spec() == g.spec()                             # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ..atomic import readable, replace_folder
from ..errors import DaggrowError, PersistenceError
from .graph import make_norm_module
from .blocks import default_module
from .spec import FORMAT_VERSION, ConvBlock, FrozenBlock, GraphSpec, LinearBlock

if TYPE_CHECKING:
    from .graph import Graph

SPEC_FILE, WEIGHTS_FILE, FROZEN_FILE = "graph.json", "weights.pt", "frozen.pt"
FORMAT_NAME = "daggrow-graph"


class TensorInfo(BaseModel):
    """What ``graph.json`` says about one tensor of ``weights.pt``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    shape: list[int]
    dtype: str
    requires_grad: bool | None = None  # None: a buffer (e.g. a batchnorm running mean)


class SavedGraph(BaseModel):
    """The content of ``graph.json``."""

    model_config = ConfigDict(extra="forbid")
    spec: GraphSpec
    weights_sha256: str
    tensors: dict[str, TensorInfo]
    frozen_sha256: str | None = None


# ---------------------------------------------------------------------------------------- save
def graph_tensors(graph: "Graph") -> dict[str, torch.Tensor]:
    """Every tensor of the graph (CPU copies) under a stable key.

    ``edge:<name>.<param>`` for each non-frozen edge module's state dict, ``norm:<node>.<key>``
    for each node norm's state dict (running statistics included).
    """
    return {key: t.detach().cpu().clone() for key, (t, _) in _graph_state(graph).items()}


def _graph_state(graph: "Graph") -> dict[str, tuple[torch.Tensor, bool | None]]:
    """key → (tensor, requires_grad or None for a buffer)."""
    modules: list[tuple[str, nn.Module]] = [
        (f"edge:{name}.", graph.module(name)) for name in graph.edges
        if not isinstance(graph.edge(name).block, FrozenBlock)]
    modules += [(f"norm:{node}.", graph.norm_module(node)) for node in graph.nodes
                if graph.norm_module(node) is not None]
    out: dict[str, tuple[torch.Tensor, bool | None]] = {}
    for prefix, module in modules:
        params = dict(module.named_parameters())
        for key, t in module.state_dict().items():
            out[prefix + key] = (t, params[key].requires_grad if key in params else None)
    return out


def save_graph(graph: "Graph", path: str | Path, *, atomic: bool = True) -> Path:
    """Write ``graph`` into the folder ``path`` (created if needed); returns the folder.

    The files are written into a temporary sibling folder, fsynced, and swapped in whole
    (:func:`daggrow.atomic.replace_folder`): after a failure or a kill at any instant, ``path``
    holds the earlier save or the new one, never a mix. An existing ``path`` is replaced only
    when it is empty or a saved graph. ``atomic=False`` writes into a new folder ``path``
    directly: for callers that are themselves filling a temporary folder (a run, a checkpoint).
    """
    graph.validate(complete=True)
    folder = Path(path)
    try:
        if not atomic:
            folder.mkdir()
            _write_graph(graph, folder)
            return folder
        with replace_folder(folder, replaceable=_is_graph_folder, what="saved graph") as tmp:
            _write_graph(graph, tmp)
    except OSError as err:
        raise PersistenceError(f"cannot write the graph to {folder}: {err}") from None
    return folder


def _write_graph(graph: "Graph", folder: Path) -> None:
    """The files of a saved graph, written into the empty folder ``folder``."""
    state = _graph_state(graph)
    tensors = {key: t.detach().cpu().clone() for key, (t, _) in state.items()}
    infos = {key: TensorInfo(shape=list(t.shape), dtype=_dtype_name(t.dtype), requires_grad=grad)
             for key, (t, grad) in state.items()}
    frozen = {n: graph.module(n) for n in graph.edges if isinstance(graph.edge(n).block, FrozenBlock)}
    torch.save(tensors, folder / WEIGHTS_FILE)
    if frozen:
        _save_frozen(frozen, str(folder / FROZEN_FILE))
    saved = SavedGraph(spec=graph.spec(), weights_sha256=_sha256(folder / WEIGHTS_FILE), tensors=infos,
                       frozen_sha256=_sha256(folder / FROZEN_FILE) if frozen else None)
    (folder / SPEC_FILE).write_text(saved.model_dump_json(indent=1), encoding="utf-8")


def _is_graph_folder(folder: Path) -> bool:
    """An empty folder, or one holding a saved graph: what :func:`save_graph` may replace."""
    return (folder / SPEC_FILE).is_file() or not any(folder.iterdir())


def _save_frozen(frozen: dict[str, nn.Module], file: str) -> None:
    try:
        torch.save(frozen, file)
    except Exception as err:  # pickle raises PicklingError, AttributeError, TypeError, ...
        raise PersistenceError(
            f"cannot save the frozen module(s) of edge(s) {sorted(frozen)}: they cannot be pickled "
            f"({type(err).__name__}: {err}); define their classes at module level, or trace them as growable "
            "blocks instead") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


# ---------------------------------------------------------------------------------------- load
def load_graph(path: str | Path, map_location: str | torch.device | None = "cpu") -> "Graph":
    """Read a folder written by :func:`save_graph`; raises :class:`PersistenceError` on any mismatch.

    ``map_location`` places the tensors (as in ``torch.load``); the default is the CPU. A run
    folder (``daggrow grow --out DIR``) is read through the graph it keeps in ``DIR/graph``.
    """
    folder = graph_folder(path)
    saved = _read_spec(folder)
    tensors = _read_weights(folder, saved, map_location)
    frozen = _read_frozen(folder, saved, map_location)
    try:
        return _rebuild(folder, saved, tensors, frozen)
    except PersistenceError:
        raise
    except (DaggrowError, RuntimeError, KeyError, ValueError, TypeError) as err:
        raise PersistenceError(f"{folder}: the saved graph is inconsistent: {_one_line(err)}") from None


def graph_folder(path: str | Path) -> Path:
    """The saved graph folder to read for ``path``: ``path`` itself, the final graph of a run folder
    (``path/graph``), or the backup a killed save left (:func:`daggrow.atomic.readable`).

    A run folder whose run did not finish has no ``graph/`` yet: the error names its checkpoint.
    """
    folder = readable(path)
    if (folder / SPEC_FILE).exists() or not folder.is_dir():
        return folder
    inner = readable(folder / "graph")
    if (inner / SPEC_FILE).exists():
        return inner
    checkpoint = readable(folder / "checkpoint")
    if (checkpoint / "graph").is_dir():
        raise PersistenceError(f"{path}: a run folder whose run has not finished (no graph/ yet): its latest graph "
                               f"is {Path(path) / 'checkpoint' / 'graph'}; load that, or finish the run with "
                               f"`daggrow grow --resume {path}`")
    return folder


def _read_spec(folder: Path) -> SavedGraph:
    file = folder / SPEC_FILE
    if not folder.is_dir():
        raise PersistenceError(f"{folder}: not a saved graph folder (none exists there; Graph.save writes a "
                               f"folder holding {SPEC_FILE} and {WEIGHTS_FILE})")
    if not file.is_file():
        raise PersistenceError(f"{file}: missing (a saved graph folder holds {SPEC_FILE} and {WEIGHTS_FILE}, "
                               "written by Graph.save)")
    try:
        raw = json.loads(file.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PersistenceError(f"{file}: not valid JSON ({err}); the file is corrupt or truncated") from None
    spec = raw.get("spec") if isinstance(raw, dict) else None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT_NAME:
        raise PersistenceError(f"{file}: not a daggrow graph description (no \"spec\" object of format "
                               f"{FORMAT_NAME!r})")
    version = spec.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        fix = "upgrade daggrow to read it" if newer else "re-save it with the daggrow that wrote it"
        raise PersistenceError(f"{file}: format version {version!r}, but this daggrow reads version "
                               f"{FORMAT_VERSION}: {fix}")
    try:
        return SavedGraph.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:3])
        more = f" (and {err.error_count() - 3} more)" if err.error_count() > 3 else ""
        raise PersistenceError(f"{file}: invalid content: {problems}{more}") from None


def _check_hash(file: Path, expected: str) -> None:
    if not file.is_file():
        raise PersistenceError(f"{file}: missing ({SPEC_FILE} lists it; was the folder copied in part?)")
    if _sha256(file) != expected:
        raise PersistenceError(f"{file}: checksum mismatch with {SPEC_FILE}: the file is corrupt, truncated "
                               "or from another save")


def _read_weights(folder: Path, saved: SavedGraph, map_location) -> dict[str, torch.Tensor]:
    file = folder / WEIGHTS_FILE
    _check_hash(file, saved.weights_sha256)
    try:
        tensors = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt archives
        raise PersistenceError(f"{file}: cannot be read ({type(err).__name__}: {_one_line(err)})") from None
    if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise PersistenceError(f"{file}: not a dict of named tensors")
    expected = saved.tensors
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise PersistenceError(f"{file}: tensors do not match {SPEC_FILE} "
                               f"(missing: {missing[:5]}, unexpected: {extra[:5]})")
    for key, info in expected.items():
        t = tensors[key]
        if list(t.shape) != info.shape or _dtype_name(t.dtype) != info.dtype:
            raise PersistenceError(f"{file}: tensor {key} has shape {list(t.shape)} and dtype "
                                   f"{_dtype_name(t.dtype)}, {SPEC_FILE} says {info.shape} {info.dtype}")
    return tensors


def _read_frozen(folder: Path, saved: SavedGraph, map_location) -> dict[str, nn.Module]:
    file = folder / FROZEN_FILE
    names = sorted(e.name for e in saved.spec.edges if isinstance(e.block, FrozenBlock))
    if saved.frozen_sha256 is None:
        if names:
            raise PersistenceError(f"{folder / SPEC_FILE}: frozen edge(s) {names} but no checksum of {FROZEN_FILE}")
        return {}
    _check_hash(file, saved.frozen_sha256)
    try:
        frozen = torch.load(file, map_location=map_location, weights_only=False)  # pickled modules
    except Exception as err:
        raise PersistenceError(f"{file}: cannot be unpickled ({type(err).__name__}: {_one_line(err)}); "
                               "are the modules' classes importable here?") from None
    if not isinstance(frozen, dict) or not all(isinstance(m, nn.Module) for m in frozen.values()):
        raise PersistenceError(f"{file}: not a dict of modules")
    if sorted(frozen) != names:
        raise PersistenceError(f"{file}: holds modules for {sorted(frozen)}, {SPEC_FILE} has frozen edges {names}")
    return frozen


def _rebuild(folder: Path, saved: SavedGraph, tensors: dict[str, torch.Tensor],
             frozen: dict[str, nn.Module]) -> "Graph":
    """The graph of ``saved.spec`` through the public building API, with the saved tensors."""
    from .graph import Graph

    spec = saved.spec
    g = Graph()
    for node in spec.nodes:
        g.step = node.born
        if node.name in spec.inputs:
            g.add_input(node.name, node.width, node.shape)
            continue
        g.add_node(node.name, node.width, node.activation, shape=node.shape,
                   activation_params=node.activation_params, norm=node.norm, dropout=node.dropout)
        if node.norm is not None:
            with torch.device("meta"):
                norm = make_norm_module(node.norm, node.width, node.shape)
            _load_state(norm, f"norm:{node.name}.", tensors, saved)
            g._replace_node(g.node(node.name), norm)
    for edge in spec.edges:
        g.step = edge.born
        source, target = g.node(edge.source), g.node(edge.target)  # unknown names: a clear error first
        module = None
        if isinstance(edge.block, (LinearBlock, ConvBlock)):
            with torch.device("meta"):
                module = default_module(edge.block, source, target)
            _load_state(module, f"edge:{edge.name}.", tensors, saved)
        elif isinstance(edge.block, FrozenBlock):
            module = frozen[edge.name]
        g.add_edge(edge.source, edge.target, edge.block, name=edge.name, module=module)
    g.set_output(*spec.outputs)
    g.step = spec.step
    g.growth_log = list(spec.growth_log)
    g.validate(complete=True)
    rebuilt = g.spec()
    if rebuilt != spec:
        fields = [f for f in GraphSpec.model_fields if getattr(rebuilt, f) != getattr(spec, f)]
        raise PersistenceError(f"{folder / SPEC_FILE}: the rebuilt graph differs from its saved description "
                               f"in {fields} (was the file edited by hand?)")
    return g


def _load_state(module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], saved: SavedGraph) -> None:
    """Give ``module`` (built on the meta device) the saved tensors under ``prefix``, as they are."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    module.load_state_dict(state, strict=True, assign=True)
    for key, param in module.named_parameters():
        requires_grad = saved.tensors[prefix + key].requires_grad
        if requires_grad is not None:
            param.requires_grad_(requires_grad)
