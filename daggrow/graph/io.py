"""Save and load graphs: a folder with ``graph.json`` (pydantic spec) and ``weights.pt``.

``graph.json`` holds the :class:`GraphSpec` (versioned by ``format_version``), the sha256 of
``weights.pt`` and the name, shape, dtype and ``requires_grad`` of every tensor in it. Tensors
are keyed ``edge:<edge>.<param>``, ``norm:<node>.<key>`` and ``module:<id>.<key>``.

**Loading never runs code from the folder.** ``weights.pt`` is a plain dict of tensors read with
``weights_only=True``. The modules of frozen edges and op nodes are described in ``graph.json``
(:mod:`daggrow.graph.modules`: a ``torch.nn`` class and its constructor arguments, or an op's
allow-listed program) and rebuilt from that description. Only a module that has no such
description (a user's class, a program calling a function outside the allow-list) is pickled,
in ``frozen.pt``, and ``load_graph`` reads that file only with ``trust=True``: unpickling runs
whatever the file says, and a checksum kept in the same folder proves nothing about who wrote it.

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
from .modules import ModuleRecord, describe, own_tensors, rebuild
from .spec import FORMAT_VERSION, ConvBlock, FrozenBlock, GraphSpec, LinearBlock

READABLE_VERSIONS = (1, FORMAT_VERSION)  # version 1: no layouts or op nodes; frozen modules pickled

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
    modules: dict[str, ModuleRecord] = {}   # id → how to rebuild an opaque module
    module_of: dict[str, str] = {}          # "edge:<name>" / "op:<node>" → module id
    frozen_sha256: str | None = None        # frozen.pt: modules kept by pickle (read only with trust=True)


# ---------------------------------------------------------------------------------------- save
def graph_tensors(graph: "Graph") -> dict[str, torch.Tensor]:
    """Every tensor of the graph (CPU copies) under a stable key.

    ``edge:<name>.<param>`` for each linear/conv edge module's state dict, ``norm:<node>.<key>``
    for each node norm's state dict (running statistics included), ``module:<id>.<key>`` for the
    modules of frozen edges and op nodes that are described, not pickled.
    """
    return {key: t.detach().cpu().clone() for key, (t, _) in _graph_state(graph, _opaque_modules(graph)).items()}


class _Opaque:
    """The opaque modules of a graph: their records, who uses them, and the pickled ones."""

    def __init__(self, graph: "Graph") -> None:
        self.records: dict[str, ModuleRecord] = {}
        self.module_of: dict[str, str] = {}
        self.modules: dict[str, nn.Module] = {}
        ids: dict[int, str] = {}
        owners = [(f"edge:{e}", graph.module(e)) for e in graph.edges if isinstance(graph.edge(e).block, FrozenBlock)]
        owners += [(f"op:{n}", graph.op_module(n)) for n in graph.nodes if graph.node(n).op is not None]
        for owner, module in owners:
            _, key = describe(module, ids, self.records)
            self.module_of[owner] = key
        by_id = {}
        for owner, module in owners:
            for m in module.modules():
                by_id[id(m)] = m
        self.modules = {key: by_id[i] for i, key in ids.items()}

    @property
    def pickled(self) -> dict[str, nn.Module]:
        return {k: self.modules[k] for k, r in self.records.items() if r.kind == "pickled"}


def _opaque_modules(graph: "Graph") -> _Opaque:
    return _Opaque(graph)


def _graph_state(graph: "Graph", opaque: _Opaque) -> dict[str, tuple[torch.Tensor, bool | None]]:
    """key → (tensor, requires_grad or None for a buffer)."""
    modules: list[tuple[str, nn.Module]] = [
        (f"edge:{name}.", graph.module(name)) for name in graph.edges
        if isinstance(graph.edge(name).block, (LinearBlock, ConvBlock))]
    modules += [(f"norm:{node}.", graph.norm_module(node)) for node in graph.nodes
                if graph.norm_module(node) is not None]
    out: dict[str, tuple[torch.Tensor, bool | None]] = {}
    for prefix, module in modules:
        params = dict(module.named_parameters())
        for key, t in module.state_dict().items():
            out[prefix + key] = (t, params[key].requires_grad if key in params else None)
    for key, record in opaque.records.items():
        for name, value in own_tensors(opaque.modules[key], record).items():
            out[f"module:{key}.{name}"] = value
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
    """The files of a saved graph, written into the empty folder ``folder``: ``weights.pt`` (every
    tensor, op and frozen modules' included), ``graph.json`` (the spec and the module records),
    and ``frozen.pt`` only for modules that have no description (pickled; loaded with trust)."""
    opaque = _opaque_modules(graph)
    state = _graph_state(graph, opaque)
    tensors = {key: t.detach().cpu().clone() for key, (t, _) in state.items()}
    infos = {key: TensorInfo(shape=list(t.shape), dtype=_dtype_name(t.dtype), requires_grad=grad)
             for key, (t, grad) in state.items()}
    frozen = opaque.pickled
    torch.save(tensors, folder / WEIGHTS_FILE)
    if frozen:
        _save_frozen(frozen, str(folder / FROZEN_FILE), opaque.module_of)
    saved = SavedGraph(spec=graph.spec(), weights_sha256=_sha256(folder / WEIGHTS_FILE), tensors=infos,
                       modules=opaque.records, module_of=opaque.module_of,
                       frozen_sha256=_sha256(folder / FROZEN_FILE) if frozen else None)
    (folder / SPEC_FILE).write_text(saved.model_dump_json(indent=1), encoding="utf-8")


def _is_graph_folder(folder: Path) -> bool:
    """An empty folder, or one holding a saved graph: what :func:`save_graph` may replace."""
    return (folder / SPEC_FILE).is_file() or not any(folder.iterdir())


def _save_frozen(frozen: dict[str, nn.Module], file: str, owners: dict[str, str] | None = None) -> None:
    try:
        torch.save(frozen, file)
    except Exception as err:  # pickle raises PicklingError, AttributeError, TypeError, ...
        where = sorted(o.removeprefix("edge:") for o, k in (owners or {}).items() if k in frozen) or sorted(frozen)
        raise PersistenceError(
            f"cannot save the frozen module(s) of edge(s) {where}: they cannot be pickled "
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
def load_graph(path: str | Path, map_location: str | torch.device | None = "cpu", *, trust: bool = False) -> "Graph":
    """Read a folder written by :func:`save_graph`; raises :class:`PersistenceError` on any mismatch.

    ``map_location`` places the tensors (as in ``torch.load``); the default is the CPU. A run
    folder (``daggrow grow --out DIR``) is read through the graph it keeps in ``DIR/graph``.
    Nothing in the folder is executed: modules are rebuilt from their descriptions. A folder
    holding pickled modules (``frozen.pt``) is refused unless ``trust=True``, since unpickling
    runs code.
    """
    folder = graph_folder(path)
    saved = _read_spec(folder)
    tensors = _read_weights(folder, saved, map_location)
    pickled = _read_frozen(folder, saved, map_location, trust)
    try:
        return _rebuild(folder, saved, tensors, pickled)
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
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        fix = "upgrade daggrow to read it" if newer else "re-save it with the daggrow that wrote it"
        raise PersistenceError(f"{file}: format version {version!r}, but this daggrow reads version "
                               f"{FORMAT_VERSION}: {fix}")
    try:
        saved = SavedGraph.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:3])
        more = f" (and {err.error_count() - 3} more)" if err.error_count() > 3 else ""
        raise PersistenceError(f"{file}: invalid content: {problems}{more}") from None
    if version == 1:  # frozen.pt held {edge name: module}
        frozen = [e.name for e in saved.spec.edges if isinstance(e.block, FrozenBlock)]
        saved.modules = {name: ModuleRecord(kind="pickled", cls=e.block.module_type)
                         for e in saved.spec.edges if (name := e.name) in frozen}
        saved.module_of = {f"edge:{name}": name for name in frozen}
    return saved


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


def _read_frozen(folder: Path, saved: SavedGraph, map_location, trust: bool) -> dict[str, nn.Module]:
    """The pickled modules, read only when the caller trusts the folder."""
    file = folder / FROZEN_FILE
    keys = sorted(k for k, r in saved.modules.items() if r.kind == "pickled")
    if not keys:
        return {}
    users = sorted(o for o, k in saved.module_of.items() if k in keys)
    classes = sorted({saved.modules[k].cls for k in keys})
    if not trust:
        raise PersistenceError(
            f"{folder}: {', '.join(users) or 'some modules'} hold module(s) saved by pickle ({', '.join(classes)}); "
            "loading them runs code from the folder, so daggrow refuses by default. If you trust who wrote it, load "
            "with Graph.load(path, trust=True) (CLI: --trust); else rebuild the model and trace it again")
    if saved.frozen_sha256 is None:
        raise PersistenceError(f"{folder / SPEC_FILE}: frozen edge(s) {users} but no checksum of {FROZEN_FILE}")
    _check_hash(file, saved.frozen_sha256)
    try:
        frozen = torch.load(file, map_location=map_location, weights_only=False)  # trusted: pickled modules
    except Exception as err:
        raise PersistenceError(f"{file}: cannot be unpickled ({type(err).__name__}: {_one_line(err)}); "
                               "are the modules' classes importable here?") from None
    if not isinstance(frozen, dict) or not all(isinstance(m, nn.Module) for m in frozen.values()):
        raise PersistenceError(f"{file}: not a dict of modules")
    if sorted(frozen) != keys:
        raise PersistenceError(f"{file}: holds modules for {sorted(frozen)}, {SPEC_FILE} has frozen edges {keys}")
    return frozen


def _rebuild(folder: Path, saved: SavedGraph, tensors: dict[str, torch.Tensor],
             pickled: dict[str, nn.Module]) -> "Graph":
    """The graph of ``saved.spec`` through the public building API, with the saved tensors."""
    from .graph import Graph

    spec = saved.spec
    programs = {saved.module_of[f"op:{n.name}"]: n.op for n in spec.nodes
                if n.op is not None and f"op:{n.name}" in saved.module_of}
    grads = {k: info.requires_grad for k, info in saved.tensors.items()}
    built: dict[str, nn.Module] = {}

    def module(owner: str) -> nn.Module:
        if owner not in saved.module_of:
            raise PersistenceError(f"{folder / SPEC_FILE}: no module recorded for {owner}")
        return rebuild(saved.modules, saved.module_of[owner], tensors, grads, pickled, programs, built)

    g = Graph()
    for node in spec.nodes:
        g.step = node.born
        if node.name in spec.inputs:
            g.add_input(node.name, node.width, node.shape, layout=node.layout)
            continue
        common = dict(shape=node.shape, layout=node.layout, activation_params=node.activation_params,
                      norm=node.norm, dropout=node.dropout)
        if node.op is not None:
            operands = sorted((e for e in spec.edges if e.target == node.name and e.block.kind == "operand"),
                              key=lambda e: e.block.position)
            g.add_op_node(node.name, [e.source for e in operands], module(f"op:{node.name}"), width=node.width,
                          activation=node.activation, dropout_mode=node.dropout_mode,
                          edge_names=[e.name for e in operands], **common)
        else:
            g.add_node(node.name, node.width, node.activation, dropout_mode=node.dropout_mode, **common)
        if node.norm is not None:
            with torch.device("meta"):
                norm = make_norm_module(node.norm, node.width, node.shape)
            _load_state(norm, f"norm:{node.name}.", tensors, saved)
            g._replace_node(g.node(node.name), norm)
    for edge in spec.edges:
        g.step = edge.born
        source, target = g.node(edge.source), g.node(edge.target)  # unknown names: a clear error first
        if edge.block.kind == "operand":
            if edge.name not in g.edges:
                raise PersistenceError(f"{folder / SPEC_FILE}: operand edge {edge.name!r} does not match its op node")
            continue
        edge_module = None
        if isinstance(edge.block, (LinearBlock, ConvBlock)):
            with torch.device("meta"):
                edge_module = default_module(edge.block, source, target)
            _load_state(edge_module, f"edge:{edge.name}.", tensors, saved)
        elif isinstance(edge.block, FrozenBlock):
            edge_module = module(f"edge:{edge.name}")
        g.add_edge(edge.source, edge.target, edge.block, name=edge.name, module=edge_module)
    g.set_output(*spec.outputs)
    g.step = spec.step
    g.growth_log = list(spec.growth_log)
    g.validate(complete=True)
    g._edges = {e.name: g._edges[e.name] for e in _in_order(list(g._edges.values()), spec.edges)}  # saved order
    rebuilt = g.spec()
    spec = spec.model_copy(update={"format_version": FORMAT_VERSION})  # version 1 reads as the same graph
    if rebuilt != spec:
        fields = [f for f in GraphSpec.model_fields if getattr(rebuilt, f) != getattr(spec, f)]
        raise PersistenceError(f"{folder / SPEC_FILE}: the rebuilt graph differs from its saved description "
                               f"in {fields} (was the file edited by hand?)")
    return g


def _in_order(edges: list, order: list) -> list:
    """``edges`` in the order of ``order`` (op nodes add their operand edges with the node)."""
    rank = {e.name: i for i, e in enumerate(order)}
    return sorted(edges, key=lambda e: rank.get(e.name, len(rank)))


def _load_state(module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], saved: SavedGraph) -> None:
    """Give ``module`` (built on the meta device) the saved tensors under ``prefix``, as they are."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    module.load_state_dict(state, strict=True, assign=True)
    for key, param in module.named_parameters():
        requires_grad = saved.tensors[prefix + key].requires_grad
        if requires_grad is not None:
            param.requires_grad_(requires_grad)
