"""Save and load graphs: a folder with ``graph.json`` (pydantic spec) and ``weights.pt``.

``graph.json`` holds the :class:`GraphSpec` (versioned), the sha256 of ``weights.pt`` and the
name, shape and dtype of every tensor in it; opaque (frozen) edge modules are pickled in
``frozen.pt``. Loading checks all of it: a corrupt, truncated or mismatched folder raises
:class:`PersistenceError` naming the file and the problem, never a silent partial load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import DaggrowError, PersistenceError
from .graph import make_norm_module
from .spec import FORMAT_VERSION, FrozenBlock, GraphSpec, IdentityBlock, LinearBlock

if TYPE_CHECKING:
    from .graph import Graph

SPEC_FILE, WEIGHTS_FILE, FROZEN_FILE = "graph.json", "weights.pt", "frozen.pt"


class TensorInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    shape: list[int]
    dtype: str


class SavedGraph(BaseModel):
    """The content of ``graph.json``."""

    model_config = ConfigDict(extra="forbid")
    spec: GraphSpec
    weights_sha256: str
    tensors: dict[str, TensorInfo]
    frozen_sha256: str | None = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def graph_tensors(graph: "Graph") -> dict[str, torch.Tensor]:
    """Every tensor of the graph under a stable key: ``edge:<name>.<param>``, ``norm:<node>.<key>``."""
    out: dict[str, torch.Tensor] = {}
    for name in graph.edges:
        if isinstance(graph.edge(name).block, FrozenBlock):
            continue
        for key, t in graph.module(name).state_dict().items():
            out[f"edge:{name}.{key}"] = t.detach().cpu().clone()
    for node in graph.nodes:
        norm = graph.norm_module(node)
        if norm is not None:
            for key, t in norm.state_dict().items():
                out[f"norm:{node}.{key}"] = t.detach().cpu().clone()
    return out


def save_graph(graph: "Graph", path: str | Path) -> Path:
    """Write ``graph`` into the folder ``path`` (created if needed); returns the folder."""
    graph.validate(complete=True)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = graph_tensors(graph)
    _atomic_write(folder / WEIGHTS_FILE, lambda tmp: torch.save(tensors, tmp))
    frozen = {n: graph.module(n) for n in graph.edges if isinstance(graph.edge(n).block, FrozenBlock)}
    frozen_sha = None
    if frozen:
        _atomic_write(folder / FROZEN_FILE, lambda tmp: torch.save(frozen, tmp))
        frozen_sha = _sha256(folder / FROZEN_FILE)
    else:
        (folder / FROZEN_FILE).unlink(missing_ok=True)
    saved = SavedGraph(
        spec=graph.spec(), weights_sha256=_sha256(folder / WEIGHTS_FILE), frozen_sha256=frozen_sha,
        tensors={k: TensorInfo(shape=list(t.shape), dtype=str(t.dtype).removeprefix("torch.")) for k, t in tensors.items()},
    )
    _atomic_write(folder / SPEC_FILE, lambda tmp: Path(tmp).write_text(saved.model_dump_json(indent=1)))
    return folder


def _read_spec(folder: Path) -> SavedGraph:
    file = folder / SPEC_FILE
    if not folder.is_dir():
        raise PersistenceError(f"{folder}: not a saved graph folder (it should contain {SPEC_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise PersistenceError(f"{file}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PersistenceError(f"{file}: not valid JSON ({err}); the file is corrupt or truncated") from None
    version = raw.get("spec", {}).get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise PersistenceError(f"{file}: format version {version!r}, this daggrow reads version {FORMAT_VERSION}")
    try:
        return SavedGraph.model_validate(raw)
    except ValidationError as err:
        raise PersistenceError(f"{file}: invalid content:\n{err}") from None


def _check_hash(file: Path, expected: str | None) -> None:
    if not file.exists():
        raise PersistenceError(f"{file}: missing")
    if _sha256(file) != expected:
        raise PersistenceError(f"{file}: checksum mismatch: the file is corrupt, truncated or from another save")


def load_graph(path: str | Path, map_location: str | torch.device | None = "cpu") -> "Graph":
    """Read a folder written by :func:`save_graph`; raises :class:`PersistenceError` on any mismatch."""
    from .graph import Graph

    folder = Path(path)
    saved = _read_spec(folder)
    _check_hash(folder / WEIGHTS_FILE, saved.weights_sha256)
    try:
        tensors = torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt archives
        raise PersistenceError(f"{folder / WEIGHTS_FILE}: cannot be read ({type(err).__name__}: {err})") from None
    expected = saved.tensors
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise PersistenceError(f"{folder / WEIGHTS_FILE}: tensors do not match {SPEC_FILE} "
                               f"(missing: {missing[:5]}, unexpected: {extra[:5]})")
    for key, info in expected.items():
        t = tensors[key]
        if list(t.shape) != info.shape or str(t.dtype).removeprefix("torch.") != info.dtype:
            raise PersistenceError(f"{folder / WEIGHTS_FILE}: tensor {key} has shape {list(t.shape)} and dtype "
                                   f"{t.dtype}, {SPEC_FILE} says {info.shape} {info.dtype}")
    frozen: dict = {}
    if saved.frozen_sha256 is not None:
        _check_hash(folder / FROZEN_FILE, saved.frozen_sha256)
        # opaque modules are pickled Python objects: only load folders you trust
        frozen = torch.load(folder / FROZEN_FILE, map_location=map_location, weights_only=False)
    try:
        return _rebuild(Graph, saved.spec, tensors, frozen)
    except PersistenceError:
        raise
    except (DaggrowError, RuntimeError, KeyError, ValueError) as err:
        raise PersistenceError(f"{folder}: the saved graph is inconsistent: {err}") from None


def _rebuild(Graph, spec: GraphSpec, tensors: dict[str, torch.Tensor], frozen: dict) -> "Graph":
    g = Graph()
    for node in spec.nodes:
        g.step = node.born
        if node.name in spec.inputs:
            g.add_input(node.name, node.width)
        else:
            g.add_node(node.name, node.width, node.activation, activation_params=node.activation_params,
                       norm=node.norm, dropout=node.dropout)
            if node.norm is not None:
                norm = make_norm_module(node.norm, node.width)
                norm.load_state_dict(_prefixed(tensors, f"norm:{node.name}."))
                g._replace_node(g.node(node.name), norm)
    for edge in spec.edges:
        g.step = edge.born
        module = None
        if isinstance(edge.block, LinearBlock):
            weight = tensors[f"edge:{edge.name}.weight"]
            module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=edge.block.bias,
                                     dtype=weight.dtype, device=weight.device)
            module.load_state_dict(_prefixed(tensors, f"edge:{edge.name}."))
        elif isinstance(edge.block, FrozenBlock):
            if edge.name not in frozen:
                raise PersistenceError(f"frozen edge {edge.name!r} has no module in {FROZEN_FILE}")
            module = frozen[edge.name]
        g.add_edge(edge.source, edge.target, edge.block, name=edge.name, module=module)
    g.set_output(*spec.outputs)
    g.step = spec.step
    g.growth_log = list(spec.growth_log)
    g.validate(complete=True)
    if g.spec() != spec:
        raise PersistenceError("the rebuilt graph differs from its saved description")
    return g


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
