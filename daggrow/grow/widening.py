"""Which tensors move when a node gains K neurons: the plan of one widening, as plain data.

Widening node w appends K features to w. When w is a branch of a concatenation (a placement
edge w → c at offset o), c gains the same K features at index o + d_w, the placements after w's
block shift by K, and the readers of c gain K columns there; a pooling or flatten that reads a
widened node passes the K features on (K·P after a flatten of P positions) to its own node, and
so on; a depthwise conv of stride 1 (MobileNet's) passes them on through new unit filters (1 at
the centre tap), so the projection after it reads them. Every edge that reads new features gets
new columns at the insertion index; every
growable edge that writes into a widened node other than w gets K zero rows there.

Two kinds of readers (docs/math.md §5 with the new features as the neuron's value):

- **live** (``Widening.out_edges``): linear or conv edges reading w, or a concatenation or
  depthwise conv of w (through placements of scale 1 only). Their new columns are the neurons' fan-out ω, solved
  in closed form; a concatenated node's BatchNorm gets identity entries for the new features,
  so the neuron seen there is σ_c(σ_w(αᵀb)), which is one activation (``Widening.activation``)
  when σ_w or σ_c is the identity, or both are the same clipping (relu, relu6, hardtanh).
- **dead** (``Widening.zero_edges``): linear or conv edges after a pooling or flatten of a new
  feature. They get zero columns: the function changes only through the live readers.

At amplitude 0 the new features are σ(0)-constants read through zero columns: the function is
kept. :func:`widening` returns the plan, or the reason in words why the node cannot widen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..graph.spec import is_growable
from ..stats.views import edge_view

if TYPE_CHECKING:
    from ..graph import Graph

BLOCKED_BY = {
    "operand": "an op node reads it (an opaque program may depend on its width)",
    "identity": "an identity edge (a residual stream) fixes its width",
    "frozen": "a frozen (leaf) module reads or writes it",
    "place": "it is a concatenation (its features are its branches': widen a branch instead)",
    "pool": "it is a pooling of another node (widen the node it pools instead)",
    "flatten": "it is a flatten of another node (widen the node it flattens instead)",
    "conv": "a grouped or depthwise convolution writes it (its channels follow the node that conv reads)",
}
READ_BY_GROUPED = ("a grouped or strided depthwise convolution reads it (only a depthwise conv of stride 1 that "
                   "keeps the shape passes new channels on)")
_CLIPS = frozenset({"relu", "relu6", "hardtanh"})  # σ∘σ = σ


@dataclass
class Widening:
    """Where K new neurons of ``node`` go. ``inserts[x] = (index, mult)``: node x gains K·mult
    features at ``index`` (``node`` itself at its end, mult 1; after a flatten of P positions,
    mult P). Edges: ``in_edges`` (fan-in rows of ``node``), ``out_edges`` (live readers, fan-out
    columns), ``zero_edges`` (dead readers, zero columns), ``zero_rows`` (growable edges writing
    into a widened node other than ``node``), ``shifted`` (placements whose offset moves by
    K·mult of their target)."""

    node: str
    activation: str
    activation_params: dict[str, float]
    inserts: dict[str, tuple[int, int]]
    in_edges: tuple[str, ...]
    out_edges: tuple[str, ...] = ()
    zero_edges: tuple[str, ...] = ()
    zero_rows: tuple[str, ...] = ()
    shifted: tuple[str, ...] = ()
    depthwise: tuple[str, ...] = ()   # depthwise convs passing the new channels on (unit filters)
    live: dict[str, tuple[str, tuple]] = field(default_factory=dict)  # live node → composed activation

    @property
    def carriers(self) -> list[str]:
        """Widened nodes other than ``node`` (concatenations, poolings, flattens)."""
        return [x for x in self.inserts if x != self.node]


def _compose(outer: tuple[str, tuple], inner: tuple[str, tuple]) -> tuple[str, tuple] | None:
    """σ_outer ∘ σ_inner as one activation, when it is one."""
    if inner[0] == "identity":
        return outer
    if outer[0] == "identity" or (outer == inner and outer[0] in _CLIPS):
        return inner
    return None


def _activation(graph: "Graph", node: str) -> tuple[str, tuple]:
    spec = graph.node(node)
    return spec.activation, tuple(sorted(spec.activation_params.items()))


def _own_blocker(graph: "Graph", node: str) -> str | None:
    spec = graph.node(node)
    if node in graph.inputs or node in graph.outputs:
        return "inputs and outputs keep their width"
    if spec.op is not None:
        return "it is an op node (its program fixes its width)"
    if spec.norm is not None and spec.norm.kind == "layernorm":
        return "a LayerNorm normalises it (a new feature would change the others)"
    return None


def widening(graph: "Graph", node: str) -> Widening | str:
    """The plan of a widening of ``node``, or why it cannot widen (a sentence)."""
    reason = _own_blocker(graph, node)
    if reason:
        return reason
    ins = graph.in_edges(node)
    if not ins or not graph.out_edges(node):
        return "it has no in- or out-edge"
    for e in ins:
        if not is_growable(e.block):
            return BLOCKED_BY.get(e.block.kind, f"its {e.block.kind} in-edge {e.name!r} is not growable")
    plan = Widening(node, *_split(_activation(graph, node)), inserts={node: (graph.node(node).width, 1)},
                    in_edges=tuple(e.name for e in ins), live={node: _activation(graph, node)})
    out, zero, rows, shifted = [], [], [], []
    queue = [node]
    while queue:
        x = queue.pop(0)
        index, mult = plan.inserts[x]
        for e in graph.out_edges(x):
            block = e.block
            if is_growable(block):
                (out if x in plan.live else zero).append(e.name)
                continue
            depthwise = block.kind == "conv" and passes_channels(graph, e)
            if block.kind not in ("place", "pool", "flatten") and not depthwise:
                where = "it" if x == node else f"the concatenation {x!r} it feeds"
                reason = READ_BY_GROUPED if block.kind == "conv" else BLOCKED_BY.get(
                    block.kind, f"its {block.kind} edge {e.name!r} is not growable")
                return reason if x == node else f"{where}: {reason}"
            c = e.target
            if c in plan.inserts:
                return f"it reaches {c!r} twice (through concatenations, poolings or flattens)"
            reason = _own_blocker(graph, c)
            if reason:
                return f"its new features pass into {c!r}, and there {reason}"
            if block.kind == "place":
                at, m = block.offset + index, mult
                end = block.offset + graph.node(x).width
                for f in graph.in_edges(c):
                    if f.name == e.name:
                        continue
                    if is_growable(f.block):
                        rows.append(f.name)
                    elif f.block.kind == "place" and f.block.offset >= end:
                        shifted.append(f.name)
                    elif f.block.kind != "place" or f.block.offset + graph.node(f.source).width > block.offset:
                        return f"the concatenation {c!r} it feeds also sums a {f.block.kind} edge {f.name!r}"
                if x in plan.live and block.scale == 1.0:
                    composed = _compose(_activation(graph, c), plan.live[x])
                    if composed is None:
                        return (f"the concatenation {c!r} applies {graph.node(c).activation} on top of "
                                f"{plan.live[x][0]} (not one activation)")
                    plan.live[c] = composed
            else:
                if len(graph.in_edges(c)) != 1:
                    return f"the {'depthwise' if depthwise else block.kind} node {c!r} it feeds has other in-edges"
                at, m = index, mult
                if depthwise:  # each new channel gets a centred unit filter: its value passes on
                    plan.depthwise += (e.name,)
                    if x in plan.live:
                        composed = _compose(_activation(graph, c), plan.live[x])
                        if composed is None:
                            return (f"the depthwise node {c!r} applies {graph.node(c).activation} on top of "
                                    f"{plan.live[x][0]} (not one activation)")
                        plan.live[c] = composed
                if block.kind == "flatten":
                    p = 1
                    for s in graph.node(x).shape:
                        p *= s
                    at, m = index * p, mult * p
            plan.inserts[c] = (at, m)
            queue.append(c)
    if not out:
        return "no linear or conv layer reads its new features (only poolings, flattens or residual sums)"
    acts = {plan.live[graph.edge(e).source] for e in out}
    if len(acts) > 1:
        return "its readers see it through different activations (it and a concatenation of it)"
    plan.activation, plan.activation_params = _split(acts.pop())
    targets = [graph.edge(e).target for e in out]
    if len(set(targets)) != len(targets):
        return "two of its readers write into the same node"
    if graph.node(node).spatial and len({_geometry(graph, e) for e in out}) > 1:
        return "its readers read it with different geometries (new channels share one S only with one)"
    plan.out_edges, plan.zero_edges, plan.zero_rows, plan.shifted = tuple(out), tuple(zero), tuple(rows), tuple(shifted)
    return plan


def passes_channels(graph: "Graph", edge) -> bool:
    """A depthwise conv (one filter per channel) of stride 1 whose centred tap maps each position
    to itself: a new channel with a unit filter there passes its value on unchanged."""
    block, width = edge.block, graph.node(edge.source).width
    return (block.groups == width == graph.node(edge.target).width and set(block.stride) == {1}
            and all(k % 2 == 1 and p == d * (k - 1) // 2
                    for k, p, d in zip(block.kernel_size, block.padding, block.dilation)))


def _split(act: tuple[str, tuple]) -> tuple[str, dict[str, float]]:
    return act[0], dict(act[1])


def _geometry(graph: "Graph", edge: str) -> str:
    """An out-edge's view key without its source's name (same geometry, same S)."""
    view = edge_view(graph, graph.edge(edge))
    return view.key.removeprefix(view.node)


def inserted_entries(old: "Graph", new: "Graph") -> dict[str, tuple[int, int, int]]:
    """Parameters of ``new`` whose new entries the last growth step inserted *inside* them (a
    concatenation's readers and BatchNorm, zero rows into it), by graph name
    (``edge:<name>.weight``) → (dim, index, count); the rest of a widening appends."""
    out: dict[str, tuple[int, int, int]] = {}
    if not new.growth_log:
        return out
    for node, (start, stop) in new.growth_log[-1].neurons.items():
        plan = widening(old, node) if node in old.nodes and start > 0 else None
        if plan is None or isinstance(plan, str):
            continue
        k = stop - start
        for x in plan.carriers:
            if old.norm_module(x) is not None:
                at, mult = plan.inserts[x]
                out[f"norm:{x}.weight"] = out[f"norm:{x}.bias"] = (0, at, k * mult)
        for e in plan.zero_rows + plan.depthwise:
            at, mult = plan.inserts[old.edge(e).target]
            out[f"edge:{e}.weight"] = out[f"edge:{e}.bias"] = (0, at, k * mult)
        for e in plan.out_edges + plan.zero_edges:
            source = old.edge(e).source
            if source == node:
                continue
            at, mult = plan.inserts[source]
            weight = old.module(e).weight
            rest = weight[0].numel() // old.node(source).width if weight.ndim == 2 else 1
            out[f"edge:{e}.weight"] = (1, at * rest, k * mult * rest)
    return out
