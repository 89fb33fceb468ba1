"""Which moments one statistics pass accumulates.

A pass needs, for the best update δW* of a node v (docs/math.md §4), the moments among the sources
of v's linear in-edges and between those sources and V_v; for an expansion with fan-in
sources U and fan-out targets T (docs/math.md §5), S_U, M_{U,T} and, for every v in T, either
P_{U,in(v)} (N = M − P δW*ᵀ) or, when v is an image or sequence node, the residual moment
N_{U,v} = (1/n) B_U V⊥_vᵀ itself, summed in a second pass once δW* is known (v's in-views
are conv patches, Πk times wider than v: P would cost Πk times M). :func:`plan_for` gathers
exactly those blocks, nothing more, so the pass costs what the candidates need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

from ..graph.spec import is_growable
from .views import View, edge_view, node_view

if TYPE_CHECKING:
    from ..graph import Graph


def in_views(graph: "Graph", node: str) -> list[View]:
    """The views read by ``node``'s growable in-edges, one per edge (the rows of B_in, docs/math.md §4)."""
    return [edge_view(graph, e) for e in graph.in_edges(node) if is_growable(e.block)]


def update_sources(graph: "Graph", node: str) -> list[str]:
    """Keys of the views of ``node``'s growable in-edges (a plain view's key is its node's name)."""
    return [v.key for v in in_views(graph, node)]


@dataclass(frozen=True)
class FullKernel:
    """New channels in image/sequence node ``node`` written into ``target`` through ``out_edge``
    (docs/math.md §10): their fan-in reads ``sources`` (views, at the node's positions); the out-edge's
    geometry ``out_view`` (a conv, or a flatten into a linear edge) spreads each channel over
    the target's positions."""

    node: str
    sources: tuple[str, ...]
    out_edge: str
    target: str
    out_view: View
    target_sources: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.node}=>{self.out_edge}"


def full_kernel(graph: "Graph", node: str, out_edge: str) -> FullKernel:
    """The :class:`FullKernel` description of new channels in ``node`` leaving through ``out_edge``."""
    edge = graph.edge(out_edge)
    view = edge_view(graph, edge)
    if view.kind == "flatten":  # a linear edge reads every position: a kernel as large as the node
        shape = graph.node(node).shape
        view = View(node, "patches", len(shape), shape, (1,) * len(shape), (0,) * len(shape), (1,) * len(shape))
    return FullKernel(node, tuple(update_sources(graph, node)), out_edge, edge.target, view,
                      tuple(update_sources(graph, edge.target)))


@dataclass
class StatisticsPlan:
    """Nodes whose values/desired moves are summed, and the pairs whose products are summed."""

    values: set[str] = field(default_factory=set)          # view keys
    grads: set[str] = field(default_factory=set)           # nodes whose desired move is summed
    value_pairs: set[tuple[str, str]] = field(default_factory=set)
    grad_pairs: set[tuple[str, str]] = field(default_factory=set)
    views: dict[str, View] = field(default_factory=dict)   # key → view, for every key in ``values``
    full_kernels: dict[str, FullKernel] = field(default_factory=dict)
    # (u, v): N_{u,v} = Σ b_u v⊥_vᵀ summed in the second pass (v an image/sequence node)
    residual_pairs: set[tuple[str, str]] = field(default_factory=set)
    # a candidate's source key → the cheaper view read instead (memory planner, :mod:`.memory`)
    aliases: dict[str, View] = field(default_factory=dict)
    # update_sources of the targets seen so far (the graph does not change while a plan is built)
    _sources: dict[str, list[str]] = field(default_factory=dict, repr=False, compare=False)

    def merge(self, other: "StatisticsPlan") -> None:
        """Add ``other``'s moments to this plan (in place)."""
        for name in ("values", "grads", "value_pairs", "grad_pairs", "residual_pairs"):
            getattr(self, name).update(getattr(other, name))
        for name in ("views", "full_kernels", "aliases"):
            getattr(self, name).update(getattr(other, name))

    def add_value_pair(self, u: str, w: str, order: dict[str, int]) -> None:
        a, b = (u, w) if (order[self.views[u].node], u) <= (order[self.views[w].node], w) else (w, u)
        self.values.update((a, b))
        self.value_pairs.add((a, b))

    def _register(self, graph: "Graph", node: str) -> None:
        for view in in_views(graph, node):
            self.views.setdefault(view.key, view)

    def add_best_update(self, graph: "Graph", v: str, order: dict[str, int]) -> None:
        """Moments for δW* and Ψ at ``v``."""
        self.grads.add(v)
        self._register(graph, v)
        sources = update_sources(graph, v)
        for i, u in enumerate(sources):
            self.grad_pairs.add((u, v))
            for w in sources[i:]:
                self.add_value_pair(u, w, order)

    def add_full_kernel(self, graph: "Graph", fk: FullKernel, order: dict[str, int]) -> None:
        """Sums for new channels through one out-edge (docs/math.md §10), and δW* at its target."""
        self._register(graph, fk.node)
        self.add_best_update(graph, fk.target, order)
        for i, u in enumerate(fk.sources):  # Σ b bᵀ of the node's in-views: S is read off it
            for w in fk.sources[i:]:
                self.add_value_pair(u, w, order)
        self.values.update(fk.sources)
        self.values.update(fk.target_sources)
        self.full_kernels[fk.key] = fk

    def add_expansion(self, graph: "Graph", sources: Sequence[str], targets: Sequence[str],
                      order: dict[str, int]) -> None:
        """Moments for new neurons reading ``sources`` (view keys; a vector node's name is its
        plain view) and writing into ``targets`` (vector nodes, or image/sequence nodes for new
        conv nodes and edges: their N is a residual pair)."""
        for u in sources:
            if u not in self.views:
                self.views[u] = node_view(graph, u.removesuffix("|flatten"))
        for i, u in enumerate(sources):
            for w in sources[i:]:
                self.add_value_pair(u, w, order)
        for v in targets:
            if v not in self.grads:  # δW* at v: the same moments for every expansion into v
                self.add_best_update(graph, v, order)
            in_v = update_sources(graph, v) if v not in self._sources else self._sources[v]
            self._sources[v] = in_v
            for u in sources:
                self.grad_pairs.add((u, v))
                if graph.node(v).spatial and self.views[u].kind == "patches":  # a conv into an image node
                    self.residual_pairs.add((u, v))
                    continue
                for w in in_v:
                    self.add_value_pair(u, w, order)

    @property
    def second_pass(self) -> bool:
        """Whether the plan has sums projected with a δW* the first pass solves."""
        return bool(self.full_kernels or self.residual_pairs)


def plan_for(graph: "Graph", expansions: Iterable[tuple[Sequence[str], Sequence[str]]] = (),
             bottleneck_nodes: Iterable[str] | None = None,
             full_kernels: Iterable[FullKernel] = ()) -> StatisticsPlan:
    """The plan for Ψ at ``bottleneck_nodes`` (default: every node but inputs and op nodes), for each
    expansion into vector nodes given as ``(sources, targets)``, and for each new-channel
    expansion of an image/sequence node given as a :class:`FullKernel`."""
    order = {n: i for i, n in enumerate(graph.topological_order())}
    plan = StatisticsPlan()
    nodes = [n for n in graph.nodes if n not in graph.inputs and graph.node(n).op is None] \
        if bottleneck_nodes is None else bottleneck_nodes  # an op node's Ψ is its whole gradient: nothing to solve
    for v in nodes:
        plan.add_best_update(graph, v, order)
    for sources, targets in expansions:
        plan.add_expansion(graph, sources, targets, order)
    for fk in full_kernels:
        plan.add_full_kernel(graph, fk, order)
    return plan
