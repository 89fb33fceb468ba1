"""Where a graph can grow: every valid expansion, as plain data.

- ``expand_node`` w: new neurons in w, fan-in from the sources of w's in-edges, fan-out into
  the targets of w's out-edges (all of them linear blocks).
- ``new_node`` u→new→v: a new hidden node between two nodes (v not an ancestor of u).
- ``new_edge`` u→v: a direct linear block between two nodes not already joined by one.

>>> [c.where for c in enumerate_candidates(g)]          # doctest: +SKIP
['expand h', 'new node x->y', 'new edge x->y', ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal

from ..graph.spec import ConvBlock, is_growable
from ..stats import StatisticsPlan
from ..stats.memory import full_plan, requests_for
from ..stats.views import View, block_view, edge_view, node_view
from .conv_dag import conv_geometry, image_pair
from .widening import widening

if TYPE_CHECKING:
    from ..graph import Graph

Kind = Literal["expand_node", "new_node", "new_edge"]
KINDS: tuple[Kind, ...] = ("expand_node", "new_node", "new_edge")


@dataclass(frozen=True)
class Candidate:
    """One place to grow. ``sources``/``targets`` are node names, one per fan-in/fan-out edge."""

    kind: Kind
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    node: str | None = None            # expand_node: the node that widens
    in_edges: tuple[str, ...] = ()     # expand_node: the edges carrying the fan-in, aligned with sources
    out_edges: tuple[str, ...] = ()    # expand_node: the edges carrying the fan-out, aligned with targets
    room: int | None = None            # neurons it may add under max_width (None: no bound)
    activation: str | None = None      # expand_node: the new neurons' activation as their readers see it
    activation_params: tuple[tuple[str, float], ...] = ()
    block: ConvBlock | None = None     # new_node/new_edge between image nodes: the fan-in conv (the new edge)

    @property
    def where(self) -> str:
        if self.kind == "expand_node":
            return f"expand {self.node}"
        return f"{self.kind.replace('_', ' ')} {self.sources[0]}->{self.targets[0]}"

    @property
    def touches(self) -> tuple[str, ...]:
        """Existing nodes this candidate changes or connects."""
        return ((self.node,) if self.node else ()) + tuple(dict.fromkeys(self.sources + self.targets))


def source_keys(graph: "Graph", cand: Candidate) -> list[str]:
    """The views a candidate's fan-in reads (docs/math.md §5): its in-edges' views when it widens a node,
    else its source node (flattened when it is an image/sequence node)."""
    if cand.kind == "expand_node":
        return [edge_view(graph, graph.edge(e)).key for e in cand.in_edges]
    return [source_view(graph, cand).key]


def source_view(graph: "Graph", cand: Candidate) -> View:
    """The view a new node's fan-in or a new edge reads: the patches of its conv (a conv pair),
    else the source node's plain, flattened or per-token view."""
    if cand.block is not None:
        return block_view(cand.sources[0], cand.block)
    return node_view(graph, cand.sources[0])


def expandable(graph: "Graph", node: str) -> bool:
    """A hidden node that K new neurons can't break (``daggrow.grow.widening``): its in-edges are
    growable (linear, conv with groups=1), its readers are growable edges or concatenations,
    poolings and flattens passing the new features on, and at least one growable edge reads them.

    LayerNorm nodes are excluded: a new feature would change the mean and variance that the
    existing features are normalised by, so even amplitude 0 would change the function.
    Op nodes, and nodes an op node reads (an operand edge is not growable), are excluded too:
    an opaque program may depend on the width (a reshape, a concatenation, a product with a
    gate of fixed width), so widening its input could break or change it.
    :func:`expansion_blocker` says which rule applies.
    """
    return expansion_blocker(graph, node) is None


def expansion_blocker(graph: "Graph", node: str) -> str | None:
    """Why ``node`` cannot gain neurons (``None`` when it can), in words, e.g. ``"an op node
    reads it (an opaque program may depend on its width)"``."""
    plan = widening(graph, node)
    return plan if isinstance(plan, str) else None


def growth_blockers(graph: "Graph") -> dict[str, str]:
    """Every hidden node that cannot gain neurons, with the reason in words (what ``propose``
    leaves out, and ``daggrow show`` prints)."""
    out = {}
    for n in graph.topological_order():
        if n in graph.inputs or n in graph.outputs:
            continue
        reason = expansion_blocker(graph, n)
        if reason is not None:
            out[n] = reason
    return out


def _vector_target(graph: "Graph", v: str) -> bool:
    """A new node or edge u → v is a linear block into a vector node v that sums its in-edges,
    read from a vector or (flattened) image/sequence node u (``layout == "channels"``); tokens
    and opaque values, and op nodes as targets, are left out."""
    target = graph.node(v)
    return not target.shape and target.layout == "channels" and target.op is None


def enumerate_candidates(
    graph: "Graph",
    kinds: Iterable[Kind] = KINDS,
    *,
    max_width: int | None = None,
    max_nodes: int | None = None,
    max_fan_in: int | None = None,
) -> list[Candidate]:
    """All valid candidates of the given kinds, in a deterministic order.

    ``max_width`` caps node widths, new nodes' included (each candidate's ``room``),
    ``max_nodes`` the node count, ``max_fan_in`` the number of in-edges a target may have.
    """
    kinds = tuple(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown candidate kinds {sorted(unknown)}; use {KINDS}")
    order = graph.topological_order()
    out: list[Candidate] = []
    if "expand_node" in kinds:
        for w in order:
            plan = widening(graph, w)
            if isinstance(plan, str) or (max_width is not None and graph.node(w).width >= max_width):
                continue
            outs = [graph.edge(e) for e in plan.out_edges]
            out.append(Candidate("expand_node", tuple(graph.edge(e).source for e in plan.in_edges),
                                 tuple(e.target for e in outs), node=w, in_edges=plan.in_edges,
                                 out_edges=plan.out_edges,
                                 room=None if max_width is None else max_width - graph.node(w).width,
                                 activation=plan.activation,
                                 activation_params=tuple(sorted(plan.activation_params.items()))))
    pair_kinds = [k for k in ("new_node", "new_edge") if k in kinds]
    if not pair_kinds:
        return out
    # per node once: O(nodes + edges) graph queries, then O(nodes²) set lookups for the pairs
    descendants = {n: graph.descendants(n) for n in order}
    fan_in = {n: len(graph.in_edges(n)) for n in order}
    joined = {u: {e.target for e in graph.out_edges(u) if is_growable(e.block)} for u in order}
    vector_sources = {u for u in order if graph.node(u).layout == "channels"}
    vector_targets = {v for v in order if v not in graph.inputs and _vector_target(graph, v)}
    room_for_nodes = max_nodes is None or len(graph) < max_nodes
    for u in order:
        for v in order:
            if u == v or v in graph.inputs or u in descendants[v]:
                continue  # v would be an ancestor of u: a cycle
            if max_fan_in is not None and fan_in[v] >= max_fan_in:
                continue
            conv = image_pair(graph, u, v)
            if not conv and not (u in vector_sources and v in vector_targets):
                continue
            if "new_node" in pair_kinds and room_for_nodes:
                block = conv_geometry(graph, u, v, "new_node") if conv else None
                if block is not None or not conv:
                    out.append(Candidate("new_node", (u,), (v,), room=max_width, block=block))
            if "new_edge" in pair_kinds and v not in joined[u]:
                block = conv_geometry(graph, u, v, "new_edge") if conv else None
                if block is not None or not conv:
                    out.append(Candidate("new_edge", (u,), (v,), block=block))
    return out


def statistics_plan(graph: "Graph", candidates: Iterable[Candidate],
                    bottleneck_nodes: Iterable[str] | None = None) -> StatisticsPlan:
    """The moments one pass must collect for every candidate and for Ψ at ``bottleneck_nodes``
    (default: every non-input node; ``[]``: only what the candidates need, i.e. δW* at their
    targets), every source read in full (:func:`daggrow.stats.memory.full_plan`;
    ``fit_plan`` is the same within a memory budget)."""
    return full_plan(graph, requests_for(graph, candidates), bottleneck_nodes)
