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

from ..graph.spec import is_growable
from ..stats import StatisticsPlan, plan_for
from ..stats.plan import full_kernel
from ..stats.views import edge_view, node_view

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
    return [node_view(graph, cand.sources[0]).key]


def expandable(graph: "Graph", node: str) -> bool:
    """A hidden node whose in- and out-edges are all growable (linear, conv with groups=1), that a
    new neuron can't break. An image/sequence node's out-edges must share one geometry.

    LayerNorm nodes are excluded: a new feature would change the mean and variance that the
    existing features are normalised by, so even amplitude 0 would change the function.
    Op nodes, and nodes an op node reads (an operand edge is not growable), are excluded too:
    an opaque program may depend on the width (a reshape, a concatenation, a product with a
    gate of fixed width), so widening its input could break or change it.
    :func:`expansion_blocker` says which rule applies.
    """
    return expansion_blocker(graph, node) is None


_BLOCKED_BY = {
    "operand": "an op node reads it (an opaque program may depend on its width)",
    "identity": "an identity edge (a residual stream) fixes its width",
    "place": "it is part of a concatenation (growth through concatenations comes later)",
    "pool": "a pooling passes its channels on unchanged",
    "flatten": "a flatten edge passes its features on unchanged",
    "frozen": "a frozen (leaf) module reads or writes it",
    "conv": "a grouped or depthwise convolution fixes its channels",
}


def expansion_blocker(graph: "Graph", node: str) -> str | None:
    """Why ``node`` cannot gain neurons (``None`` when it can), in words, e.g. ``"an op node
    reads it (an opaque program may depend on its width)"``."""
    spec = graph.node(node)
    if node in graph.inputs or node in graph.outputs:
        return "inputs and outputs keep their width"
    if spec.op is not None:
        return "it is an op node (its program fixes its width)"
    if spec.norm is not None and spec.norm.kind == "layernorm":
        return "a LayerNorm normalises it (a new feature would change the others)"
    ins, outs = graph.in_edges(node), graph.out_edges(node)
    if not ins or not outs:
        return "it has no in- or out-edge"
    for e in ins + outs:
        if not is_growable(e.block):
            return _BLOCKED_BY.get(e.block.kind, f"its {e.block.kind} edge {e.name!r} is not growable")
    if spec.spatial and len({edge_view(graph, e).key for e in outs}) > 1:
        return "its out-edges read it with different geometries (new channels share one S only with one)"
    if len({e.target for e in outs}) != len(outs):
        return "two of its out-edges join the same target"
    return None


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
            if expandable(graph, w) and (max_width is None or graph.node(w).width < max_width):
                ins, outs = graph.in_edges(w), graph.out_edges(w)
                out.append(Candidate("expand_node", tuple(e.source for e in ins), tuple(e.target for e in outs),
                                     node=w, in_edges=tuple(e.name for e in ins),
                                     out_edges=tuple(e.name for e in outs),
                                     room=None if max_width is None else max_width - graph.node(w).width))
    pair_kinds = [k for k in ("new_node", "new_edge") if k in kinds]
    if not pair_kinds:
        return out
    # per node once: O(nodes + edges) graph queries, then O(nodes²) set lookups for the pairs
    descendants = {n: graph.descendants(n) for n in order}
    fan_in = {n: len(graph.in_edges(n)) for n in order}
    joined = {u: {e.target for e in graph.out_edges(u) if is_growable(e.block)} for u in order}
    sources = [u for u in order if graph.node(u).layout == "channels"]
    targets = [v for v in order if v not in graph.inputs and _vector_target(graph, v)
               and (max_fan_in is None or fan_in[v] < max_fan_in)]
    room_for_nodes = max_nodes is None or len(graph) < max_nodes
    for u in sources:
        for v in targets:
            if u == v or u in descendants[v]:
                continue  # v would be an ancestor of u: a cycle
            if "new_node" in pair_kinds and room_for_nodes:
                out.append(Candidate("new_node", (u,), (v,), room=max_width))
            if "new_edge" in pair_kinds and v not in joined[u]:
                out.append(Candidate("new_edge", (u,), (v,)))
    return out


def statistics_plan(graph: "Graph", candidates: Iterable[Candidate],
                    bottleneck_nodes: Iterable[str] | None = None) -> StatisticsPlan:
    """The moments one pass must collect for every candidate and for Ψ at ``bottleneck_nodes``
    (default: every non-input node; ``[]``: only what the candidates need, i.e. δW* at their
    targets)."""
    vector: dict[tuple[str, ...], dict[str, None]] = {}
    channels = []
    for c in candidates:
        if c.kind == "expand_node" and graph.node(c.node).spatial:
            channels += [full_kernel(graph, c.node, e) for e in c.out_edges]
        else:  # candidates that share a source set need its moments once, with all their targets
            vector.setdefault(tuple(source_keys(graph, c)), {}).update(dict.fromkeys(c.targets))
    return plan_for(graph, [(list(u), list(t)) for u, t in vector.items()], bottleneck_nodes=bottleneck_nodes,
                    full_kernels=channels)
