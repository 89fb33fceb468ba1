"""The graph IR: nodes are tensors, edges are blocks.

>>> import daggrow as dg
>>> g = dg.Graph()
>>> g.add_input("x", width=4)
>>> g.add_node("h", width=2, activation="relu")
>>> g.add_node("y", width=3)
>>> g.add_edge("x", "h"), g.add_edge("h", "y"), g.add_edge("x", "y")
('x_to_h', 'h_to_y', 'x_to_y')
>>> g.set_output("y")
>>> g.num_parameters()
31

Every mutating method checks its change first and refuses it with a :class:`GraphError`
subclass, leaving the graph as it was. A networkx ``MultiDiGraph`` holds the structure (two
edges may join the same pair of nodes, e.g. a conv and a skip); each edge keeps its
``nn.Module`` (``nn.Linear`` for linear blocks) beside its spec, so compiled modules share
their parameters with the graph.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterator, Literal

import networkx as nx
import torch
from torch import nn

from ..errors import (
    CycleError,
    DuplicateNameError,
    GraphError,
    IncompleteGraphError,
    UnknownNameError,
    WidthMismatchError,
)
from .activations import get_activation
from .blocks import check_module, check_shapes, default_module
from .opnodes import OpNodes
from .spec import (
    is_growable,
    Block,
    EdgeSpec,
    FlattenBlock,
    GraphSpec,
    GrowthRecord,
    IdentityBlock,
    Layout,
    LinearBlock,
    NodeSpec,
    NormSpec,
)

if TYPE_CHECKING:
    from torch.fx import GraphModule


def make_norm_module(norm: NormSpec, width: int, shape: tuple[int, ...] = ()) -> nn.Module:
    """The torch module for a node's normalisation of ``width`` features (channels when the
    node has a spatial ``shape``: BatchNorm1d for sequences, BatchNorm2d for images; a
    LayerNorm normalises the last dimension, the features of a vector or tokens node)."""
    if norm.kind == "batchnorm":
        return (nn.BatchNorm2d if len(shape) == 2 else nn.BatchNorm1d)(
            width, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
            track_running_stats=norm.track_running_stats,
        )
    return nn.LayerNorm(width, eps=norm.eps, elementwise_affine=norm.affine)


def _block_from(block: str | Block, bias: bool) -> Block:
    if not isinstance(block, str):
        return block
    if block == "linear":
        return LinearBlock(bias=bias)
    if block == "identity":
        return IdentityBlock()
    if block == "flatten":
        return FlattenBlock()
    raise GraphError(f"unknown block {block!r}: use 'linear', 'identity', 'flatten' or a block spec object "
                     "such as ConvBlock(dim=2, kernel_size=3, padding=1)")


class Graph(OpNodes):
    """A directed acyclic graph of tensors (nodes) joined by blocks (edges)."""

    def __init__(self) -> None:
        self._nx = nx.MultiDiGraph()
        self._nodes: dict[str, NodeSpec] = {}
        self._edges: dict[str, EdgeSpec] = {}
        self._edge_modules: dict[str, nn.Module] = {}
        self._norm_modules: dict[str, nn.Module] = {}
        self._op_modules: dict[str, nn.Module] = {}
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self.step: int = 0
        self.growth_log: list[GrowthRecord] = []

    # ------------------------------------------------------------------ building
    def add_input(self, name: str, width: int, shape: tuple[int, ...] = (), *, layout: Layout = "channels") -> None:
        """Declare an input tensor of ``width`` features, or of ``width`` channels over a spatial
        ``shape`` ((L,) for sequences, (H, W) for images), or with ``layout="tokens"`` of
        ``width`` features per token over a token grid ``shape``; inputs are fed in declaration order."""
        try:
            spec = NodeSpec(name=name, width=width, shape=tuple(shape), layout=layout, born=self.step)
        except ValueError as err:
            raise GraphError(f"invalid input {name!r}: {err}") from None
        self._insert_node(spec)
        self._inputs.append(name)

    def add_node(
        self,
        name: str,
        width: int,
        activation: str = "identity",
        *,
        shape: tuple[int, ...] = (),
        layout: Layout = "channels",
        activation_params: dict[str, float] | None = None,
        norm: NormSpec | Literal["batchnorm", "layernorm"] | None = None,
        dropout: float = 0.0,
        dropout_mode: Literal["element", "row", "batch"] = "element",
    ) -> None:
        """Add a hidden (or output) node: ``h = dropout(activation(norm(Σ in-edges)))``.

        ``shape`` is the spatial shape of an image/sequence node (``width`` is then its channels),
        or with ``layout="tokens"`` the token grid of a ``(n, *shape, width)`` node.
        ``dropout_mode``: ``element`` (``nn.Dropout``), or stochastic depth: ``row`` drops whole
        samples, ``batch`` the whole batch (training only, survivors scaled by 1/(1 − p)).
        """
        spec = self._node_spec(name=name, width=width, shape=tuple(shape), layout=layout, activation=activation,
                               activation_params=dict(activation_params or {}), norm=_norm_spec(norm),
                               dropout=dropout, dropout_mode=dropout_mode, born=self.step)
        self._insert_node(spec)

    def add_edge(
        self,
        source: str,
        target: str,
        block: str | Block = "linear",
        *,
        name: str | None = None,
        bias: bool = True,
        module: nn.Module | None = None,
    ) -> str:
        """Join ``source`` to ``target`` with a block; returns the edge's name.

        ``block`` is ``"linear"`` (default, a fresh ``nn.Linear`` unless ``module`` is given;
        an image/sequence source is flattened first), ``"identity"`` (a skip; widths must
        agree), ``"flatten"``, or a block spec such as ``ConvBlock(dim=2, kernel_size=3,
        padding=1)``, ``PoolBlock(op="max", dim=2, kernel_size=2)`` or ``FrozenBlock(...)``
        together with its ``module``.
        """
        block = _block_from(block, bias)
        name = name if name is not None else self._fresh_edge_name(source, target)
        spec = EdgeSpec(name=name, source=source, target=target, block=block, born=self.step)
        self._check_new_edge(spec)
        tied_check = module is not None
        if module is None:
            module = self._default_module(spec)
        self._check_edge_module(spec, module)
        if tied_check:
            self._check_not_tied(spec, module)
        self._attach_edge(spec, module)
        return name

    def set_output(self, *names: str) -> None:
        """Declare the output node(s); the compiled module returns them in this order."""
        if not names:
            raise GraphError("set_output needs at least one node name")
        for n in names:
            self._require_node(n)
            if n in self._inputs:
                raise GraphError(f"input {n!r} cannot be an output; add a node after it")
        if len(set(names)) != len(names):
            raise GraphError(f"set_output got a repeated name: {names}")
        self._outputs = list(names)

    # ------------------------------------------------------------------ removing
    def remove_edge(self, name: str) -> None:
        """Remove one edge (its weights go with it)."""
        spec = self._require_edge(name)
        self._nx.remove_edge(spec.source, spec.target, key=name)
        del self._edges[name]
        del self._edge_modules[name]

    def remove_node(self, name: str) -> None:
        """Remove a node together with the edges that touch it."""
        self._require_node(name)
        for e in [*self.in_edges(name), *self.out_edges(name)]:
            self.remove_edge(e.name)
        self._nx.remove_node(name)
        del self._nodes[name]
        self._norm_modules.pop(name, None)
        self._op_modules.pop(name, None)
        if name in self._inputs:
            self._inputs.remove(name)
        if name in self._outputs:
            self._outputs.remove(name)

    # ------------------------------------------------------------------ queries
    @property
    def nodes(self) -> Mapping[str, NodeSpec]:
        """Read-only mapping name → :class:`NodeSpec`, in insertion order."""
        return MappingProxyType(self._nodes)

    @property
    def edges(self) -> Mapping[str, EdgeSpec]:
        """Read-only mapping name → :class:`EdgeSpec`, in insertion order."""
        return MappingProxyType(self._edges)

    @property
    def inputs(self) -> list[str]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self._outputs)

    def node(self, name: str) -> NodeSpec:
        return self._require_node(name)

    def edge(self, name: str) -> EdgeSpec:
        return self._require_edge(name)

    def module(self, edge: str) -> nn.Module:
        """The ``nn.Module`` of an edge (``nn.Linear`` for a linear block)."""
        self._require_edge(edge)
        return self._edge_modules[edge]

    def norm_module(self, node: str) -> nn.Module | None:
        self._require_node(node)
        return self._norm_modules.get(node)

    def op_module(self, node: str) -> nn.Module | None:
        """The :class:`~daggrow.graph.opaque.OpaqueOp` computing an op node (``None`` for other nodes)."""
        self._require_node(node)
        return self._op_modules.get(node)

    def in_edges(self, node: str) -> list[EdgeSpec]:
        self._require_node(node)
        return [self._edges[k] for _, _, k in self._nx.in_edges(node, keys=True)]

    def out_edges(self, node: str) -> list[EdgeSpec]:
        self._require_node(node)
        return [self._edges[k] for _, _, k in self._nx.out_edges(node, keys=True)]

    def predecessors(self, node: str) -> list[str]:
        """Distinct source nodes of ``node``'s in-edges, in edge order."""
        return list(dict.fromkeys(e.source for e in self.in_edges(node)))

    def successors(self, node: str) -> list[str]:
        return list(dict.fromkeys(e.target for e in self.out_edges(node)))

    def is_ancestor(self, a: str, b: str) -> bool:
        """True when a path leads from ``a`` to ``b`` (a node is its own ancestor)."""
        self._require_node(a), self._require_node(b)
        return a == b or nx.has_path(self._nx, a, b)

    def descendants(self, node: str) -> set[str]:
        """Nodes reachable from ``node`` (not including it)."""
        self._require_node(node)
        return set(nx.descendants(self._nx, node))

    def topological_order(self) -> list[str]:
        """Node names, sources before targets; ties broken by insertion order (deterministic)."""
        rank = {n: i for i, n in enumerate(self._nodes)}
        return list(nx.lexicographical_topological_sort(self._nx, key=rank.__getitem__))

    def is_growable(self, edge: str) -> bool:
        return is_growable(self._require_edge(edge).block)

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter of every edge and node norm, each once."""
        seen: set[int] = set()
        for m in [*self._edge_modules.values(), *self._norm_modules.values(), *self._op_modules.values()]:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``("edge:<name>.weight", p)`` and ``("norm:<node>.weight", p)`` pairs."""
        for name, m in self._edge_modules.items():
            for pn, p in m.named_parameters():
                yield f"edge:{name}.{pn}", p
        for name, m in self._norm_modules.items():
            for pn, p in m.named_parameters():
                yield f"norm:{name}.{pn}", p
        for name, m in self._op_modules.items():
            for pn, p in m.named_parameters():
                yield f"op:{name}.{pn}", p

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    # ------------------------------------------------------------------ whole-graph
    def validate(self, complete: bool = True) -> None:
        """Check the invariants; with ``complete``, also inputs/outputs and reachability.

        Raises :class:`IncompleteGraphError` (or another :class:`GraphError`) naming the problem.
        """
        if not nx.is_directed_acyclic_graph(self._nx):
            cycle = nx.find_cycle(self._nx)
            raise CycleError(f"the graph has a cycle: {' -> '.join(str(e[0]) for e in cycle)}")
        for spec in self._edges.values():
            self._check_edge_widths(spec)
            self._check_edge_module(spec, self._edge_modules[spec.name])
        for n, spec in self._nodes.items():
            norm = self._norm_modules.get(n)
            if spec.norm is not None and norm is None:
                raise GraphError(f"node {n!r} declares a {spec.norm.kind} but has no norm module")
            if norm is not None and _norm_width(norm) != spec.width:
                raise WidthMismatchError(
                    f"node {n!r} has width {spec.width} but its {spec.norm.kind} has {_norm_width(norm)} features")
            self._check_op(n, spec)
        if not complete:
            return
        if not self._inputs:
            raise IncompleteGraphError("the graph has no input: call add_input(name, width)")
        if not self._outputs:
            raise IncompleteGraphError("the graph has no output: call set_output(name)")
        reachable = set(self._inputs).union(*(nx.descendants(self._nx, i) for i in self._inputs))
        used = set(self._outputs).union(*(nx.ancestors(self._nx, o) for o in self._outputs))
        for n in self._nodes:
            if n not in reachable:
                raise IncompleteGraphError(
                    f"node {n!r} is not reachable from any input ({', '.join(self._inputs)}): "
                    "give it an in-edge or remove it")
            if n not in used:
                raise IncompleteGraphError(
                    f"node {n!r} does not lead to any output ({', '.join(self._outputs)}): "
                    "give it an out-edge or remove it")

    def copy(self) -> "Graph":
        """A deep copy: new specs, new modules, cloned weights."""
        return _copy.deepcopy(self)

    def spec(self) -> GraphSpec:
        """The JSON-able description of the graph (no tensors)."""
        return GraphSpec(nodes=list(self._nodes.values()), edges=list(self._edges.values()),
                         inputs=list(self._inputs), outputs=list(self._outputs), step=self.step,
                         growth_log=list(self.growth_log))

    def summary(self) -> str:
        """A table of nodes (width, activation, in-edges) and the parameter count."""
        from .summary import summary

        return summary(self)

    def __repr__(self) -> str:
        return f"daggrow.Graph\n{self.summary()}"

    # ------------------------------------------------------------------ other rooms
    def compile(self, device: torch.device | str | None = None, *, taps: bool = False) -> "GraphModule":
        """A ``torch.fx.GraphModule`` computing the graph, sharing parameters with it.

        Without ``device``, the module is cached: the same object comes back until the graph's
        structure changes (a node, an edge, a module, the inputs or outputs: any mutation, each
        one replaces an object the cache key holds), then it is rebuilt. Parameters are shared,
        so training never invalidates it."""
        from ..compile import compile_graph

        if device is not None:
            return compile_graph(self, device=device, taps=taps)
        key = self._structure_key()
        cache = self.__dict__.setdefault("_compiled", {})
        hit = cache.get(taps)
        if hit is not None and hit[0] == key:
            return hit[1]
        module = compile_graph(self, taps=taps)
        cache[taps] = (key, module)
        return module

    def _structure_key(self) -> tuple:
        """Everything a compiled module depends on, as the objects themselves (compared by
        identity first; a mutation replaces at least one of them)."""
        return (tuple(self._nodes.items()), tuple(self._edges.items()), tuple(self._edge_modules.items()),
                tuple(self._norm_modules.items()), tuple(self._op_modules.items()), tuple(self._inputs),
                tuple(self._outputs))

    def save(self, path: str | Path) -> None:
        """Write the graph to ``path`` (a folder: ``graph.json`` + ``weights.pt``)."""
        from .io import save_graph

        save_graph(self, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device | None = "cpu", *, trust: bool = False) -> "Graph":
        """Read a folder written by :meth:`save`. Nothing in it runs: modules are rebuilt from their
        descriptions. Modules saved by pickle (user classes) load only with ``trust=True``."""
        from .io import load_graph

        return load_graph(path, map_location=map_location, trust=trust)

    def to_dot(self, **options: Any) -> str:
        """Graphviz DOT text of the graph (see :func:`daggrow.graph.dot.to_dot`)."""
        from .dot import to_dot

        return to_dot(self, **options)

    def render(self, path: str | Path, format: str = "svg", **options: Any) -> Path:
        """Render with Graphviz's ``dot`` to ``path`` (suffix added when missing)."""
        from .dot import render

        return render(self, path, format=format, **options)

    # ------------------------------------------------------------------ rewriting (internal)
    # The growth rewriter works on a copy with these, then calls validate(); a failure there
    # discards the copy, so the caller's graph is never half-changed.
    def _replace_node(self, spec: NodeSpec, norm_module: nn.Module | None = None) -> None:
        self._require_node(spec.name)
        self._nodes[spec.name] = spec
        self._nx.nodes[spec.name]["spec"] = spec
        if spec.norm is None:
            self._norm_modules.pop(spec.name, None)
        elif norm_module is not None:
            self._norm_modules[spec.name] = norm_module

    def _replace_edge_module(self, name: str, module: nn.Module) -> None:
        self._require_edge(name)
        self._edge_modules[name] = module

    def _replace_edge_spec(self, spec: EdgeSpec) -> None:
        """Same edge (name, source, target), another block spec (a placement's offset)."""
        old = self._require_edge(spec.name)
        if (old.source, old.target) != (spec.source, spec.target):
            raise GraphError(f"edge {spec.name!r} must keep its source and target")
        self._edges[spec.name] = spec

    def _add_edge_unchecked(self, spec: EdgeSpec, module: nn.Module) -> None:
        """Add an edge whose widths may only agree once the whole rewrite is done."""
        self._require_node(spec.source), self._require_node(spec.target)
        if spec.name in self._edges:
            raise DuplicateNameError(f"an edge named {spec.name!r} already exists")
        self._attach_edge(spec, module)

    # ------------------------------------------------------------------ helpers
    def _node_spec(self, **fields: Any) -> NodeSpec:
        act = get_activation(fields["activation"])
        unknown = set(fields["activation_params"]) - set(act.params)
        if unknown:
            raise GraphError(f"activation {act.name!r} takes no parameter(s) {sorted(unknown)}; "
                             f"it takes {list(act.params) or 'none'}")
        try:
            spec = NodeSpec(**fields)
        except ValueError as err:
            raise GraphError(f"invalid node {fields.get('name')!r}: {err}") from None
        norm = spec.norm
        if norm is not None and norm.kind == "layernorm" and spec.spatial:
            raise GraphError(f"node {spec.name!r}: LayerNorm normalises the features of a vector or tokens "
                             "node; use batchnorm on an image/sequence node")
        if norm is not None and norm.kind == "batchnorm" and spec.layout == "tokens":
            raise GraphError(f"node {spec.name!r}: BatchNorm normalises channels of a channels-first node; use "
                             "layernorm on a tokens node")
        return spec

    def _insert_node(self, spec: NodeSpec) -> None:
        if spec.name in self._nodes:
            raise DuplicateNameError(f"a node named {spec.name!r} already exists")
        self._nodes[spec.name] = spec
        self._nx.add_node(spec.name, spec=spec)
        if spec.norm is not None:
            self._norm_modules[spec.name] = make_norm_module(spec.norm, spec.width, spec.shape)

    def _attach_edge(self, spec: EdgeSpec, module: nn.Module) -> None:
        self._edges[spec.name] = spec
        self._edge_modules[spec.name] = module
        self._nx.add_edge(spec.source, spec.target, key=spec.name)

    def _require_node(self, name: str) -> NodeSpec:
        try:
            return self._nodes[name]
        except (KeyError, TypeError):
            known = ", ".join(list(self._nodes)[:20]) or "none yet"
            raise UnknownNameError(f"no node named {name!r} (nodes: {known})") from None

    def _require_edge(self, name: str) -> EdgeSpec:
        try:
            return self._edges[name]
        except (KeyError, TypeError):
            known = ", ".join(list(self._edges)[:20]) or "none yet"
            raise UnknownNameError(f"no edge named {name!r} (edges: {known})") from None

    def _fresh_edge_name(self, source: str, target: str, taken: set[str] = frozenset()) -> str:
        base = f"{source}_to_{target}"
        name, i = base, 2
        while name in self._edges or name in taken:
            name, i = f"{base}_{i}", i + 1
        return name

    def _check_new_edge(self, spec: EdgeSpec) -> None:
        if spec.name in self._edges:
            raise DuplicateNameError(f"an edge named {spec.name!r} already exists")
        self._require_node(spec.source), self._require_node(spec.target)
        if spec.target in self._inputs:
            raise GraphError(f"edge {spec.name!r} would enter input {spec.target!r}; inputs have no in-edges")
        if spec.source == spec.target or nx.has_path(self._nx, spec.target, spec.source):
            raise CycleError(f"edge {spec.source!r} -> {spec.target!r} would create a cycle "
                             f"({spec.target!r} is an ancestor of {spec.source!r})")
        self._check_edge_widths(spec)

    def _check_not_tied(self, spec: EdgeSpec, module: nn.Module) -> None:
        """Refuse a module (or parameter) that another edge already holds, unless both edges are
        frozen: growth rewrites a growable edge's weights on their own, which would untie them."""
        mine = {id(p) for p in module.parameters()}
        for name, other in self._edge_modules.items():
            if other is not module and not any(id(p) in mine for p in other.parameters()):
                continue
            if is_growable(spec.block) or is_growable(self._edges[name].block):
                raise GraphError(
                    f"edge {spec.name!r}: its module shares weights with edge {name!r}; growth changes a growable "
                    "edge's weights on their own, which would untie them: pass a copy (copy.deepcopy(module)) to "
                    "give the edge its own weights, or keep the shared module frozen on both edges (FrozenBlock)")

    def _check_edge_widths(self, spec: EdgeSpec) -> None:
        check_shapes(spec.block, self._nodes[spec.source], self._nodes[spec.target], spec.name)

    def _default_module(self, spec: EdgeSpec) -> nn.Module:
        return default_module(spec.block, self._nodes[spec.source], self._nodes[spec.target])

    def _check_edge_module(self, spec: EdgeSpec, module: nn.Module) -> None:
        check_module(spec.block, module, self._nodes[spec.source], self._nodes[spec.target], spec.name)

    def __deepcopy__(self, memo: dict) -> "Graph":
        new = Graph.__new__(Graph)
        for k, v in self.__dict__.items():
            if k == "_nx":
                new._nx = self._nx.copy()
            elif k == "_compiled":
                new._compiled = {}  # a copy compiles its own modules
            elif k in ("_nodes", "_edges", "_inputs", "_outputs", "growth_log"):
                new.__dict__[k] = _copy.copy(v)  # specs are frozen: sharing them is safe
            else:
                new.__dict__[k] = _copy.deepcopy(v, memo)
        return new


def _norm_spec(norm: NormSpec | str | None) -> NormSpec | None:
    return NormSpec(kind=norm) if isinstance(norm, str) else norm


def _norm_width(norm: nn.Module) -> int:
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return norm.num_features
    if isinstance(norm, nn.LayerNorm):
        return int(norm.normalized_shape[-1])
    return -1
