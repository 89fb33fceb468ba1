"""Which moments one statistics pass accumulates.

A pass needs, for the best update δW* of a node v (MATH §4), the moments among the sources
of v's linear in-edges and between those sources and V_v; for an expansion with fan-in
sources U and fan-out targets T (MATH §5), S_U, M_{U,T} and P_{U,in(v)} for every v in T.
:func:`plan_for` gathers exactly those blocks, nothing more, so the pass costs what the
candidates need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

from ..graph.spec import GROWABLE_KINDS

if TYPE_CHECKING:
    from ..graph import Graph


def update_sources(graph: "Graph", node: str) -> list[str]:
    """Sources of ``node``'s growable in-edges, one entry per edge (the rows of B_in, MATH §4)."""
    return [e.source for e in graph.in_edges(node) if e.block.kind in GROWABLE_KINDS]


@dataclass
class StatisticsPlan:
    """Nodes whose values/desired moves are summed, and the pairs whose products are summed."""

    values: set[str] = field(default_factory=set)
    grads: set[str] = field(default_factory=set)
    value_pairs: set[tuple[str, str]] = field(default_factory=set)
    grad_pairs: set[tuple[str, str]] = field(default_factory=set)

    def add_value_pair(self, u: str, w: str, order: dict[str, int]) -> None:
        a, b = (u, w) if order[u] <= order[w] else (w, u)
        self.values.update((a, b))
        self.value_pairs.add((a, b))

    def add_best_update(self, graph: "Graph", v: str, order: dict[str, int]) -> None:
        """Moments for δW* and Ψ at ``v``."""
        self.grads.add(v)
        sources = update_sources(graph, v)
        for i, u in enumerate(sources):
            self.grad_pairs.add((u, v))
            for w in sources[i:]:
                self.add_value_pair(u, w, order)

    def add_expansion(self, graph: "Graph", sources: Sequence[str], targets: Sequence[str],
                      order: dict[str, int]) -> None:
        """Moments for new neurons reading ``sources`` and writing into ``targets``."""
        for i, u in enumerate(sources):
            for w in sources[i:]:
                self.add_value_pair(u, w, order)
        for v in targets:
            self.add_best_update(graph, v, order)
            for u in sources:
                self.grad_pairs.add((u, v))
                for w in update_sources(graph, v):
                    self.add_value_pair(u, w, order)

    def cost(self, widths: dict[str, int]) -> int:
        """Multiply-adds per sample spent on products (a rough size of the pass)."""
        return (sum((widths[u] + 1) * (widths[w] + 1) for u, w in self.value_pairs)
                + sum((widths[u] + 1) * widths[v] for u, v in self.grad_pairs))


def plan_for(graph: "Graph", expansions: Iterable[tuple[Sequence[str], Sequence[str]]] = (),
             bottleneck_nodes: Iterable[str] | None = None) -> StatisticsPlan:
    """The plan for Ψ at ``bottleneck_nodes`` (default: every non-input node) and for each
    expansion given as ``(sources, targets)``."""
    order = {n: i for i, n in enumerate(graph.topological_order())}
    plan = StatisticsPlan()
    nodes = [n for n in graph.nodes if n not in graph.inputs] if bottleneck_nodes is None else bottleneck_nodes
    for v in nodes:
        plan.add_best_update(graph, v, order)
    for sources, targets in expansions:
        plan.add_expansion(graph, sources, targets, order)
    return plan
