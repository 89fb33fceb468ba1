"""The amplitude factor γ* = argmin_{γ∈[0,u]} L(θ ⊕ γ·change) on a held-out batch (MATH §6).

A coarse geometric grid over (0, u] plus γ = 0, then golden-section refinement around the
best grid point: a bounded number of evaluations, and γ = 0 always competes, so an accepted
change never raises the held-out loss. Each evaluation recomputes only the nodes downstream
of the change, from cached values of the unchanged graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from .. import distributed
from ..compile import eval_mode, node_values
from ..stats import LossLike, per_sample_loss, split_batch
from ..stats.collect import graph_device

if TYPE_CHECKING:
    from ..graph import Graph
    from .propose import Proposal


@dataclass(frozen=True)
class LineSearchResult:
    amplitude: float
    loss_before: float
    loss_after: float
    evaluations: int

    @property
    def loss_drop(self) -> float:
        """L(0) − L(γ*) ≥ 0."""
        return self.loss_before - self.loss_after


class BatchEvaluator:
    """Loss of changed graphs on one batch, reusing the base graph's node values."""

    def __init__(self, graph: "Graph", batch: Any, loss: LossLike) -> None:
        xs, y = split_batch(batch, graph)
        device = graph_device(graph)
        self.graph, self.loss_fn = graph, loss
        self.xs, self.y = tuple(x.to(device) for x in xs), y.to(device)
        self.pre: dict[str, torch.Tensor] = {}
        with torch.no_grad(), eval_mode(graph):
            self.cache = node_values(graph, self.xs, pre=self.pre)
        self.base_loss = self._loss_of(graph, self.cache)

    def _loss_of(self, graph: "Graph", values: dict[str, torch.Tensor]) -> float:
        out = values[graph.outputs[0]]
        losses = per_sample_loss(self.loss_fn, out, self.y)
        if distributed.active():  # the mean over every process's part of the held-out batch
            return distributed.mean_over_processes(losses.sum(), losses.shape[0])
        return float(losses.mean())

    def loss(self, new: "Graph", changed: set[str], grown: dict[str, int] | None = None,
             added: Iterable[str] = ()) -> float:
        """Loss of ``new``, where only ``changed`` nodes (and their descendants) differ from the base;
        ``grown`` nodes only appended neurons (their first k values are taken from the base);
        ``added`` nodes only gained input terms (new edges, or new columns for a grown source)
        and keep the base's other weights: their old pre-activation is reused."""
        with eval_mode(new):
            return self.evaluation(new, changed, grown, added)()

    def evaluation(self, new: "Graph", changed: set[str], grown: dict[str, int] | None = None,
                   added: Iterable[str] = ()) -> Callable[[], float]:
        """:meth:`loss` prepared once for a graph whose parameters change in place between calls
        (its structure must not): the returned function evaluates ``new`` as it is when called.
        Hold :func:`~daggrow.compile.eval_mode` of ``new`` around the calls."""
        dirty = set(changed)
        for n in changed:
            if n in new.nodes:
                dirty |= new.descendants(n)
        reuse = [n for n in new.nodes if n not in dirty and n in self.cache]
        added_z = {n: self.pre[n] for n in added if n in self.pre}

        def run() -> float:
            with torch.no_grad():
                return self._loss_of(new, node_values(new, self.xs, cache=self.cache, reuse=reuse, grown=grown,
                                                      added=added_z, old_edges=self.graph.edges))
        return run


def changed_nodes(proposal: "Proposal") -> set[str]:
    """Nodes whose value a proposal can change (before adding descendants)."""
    c = proposal.candidate
    nodes = set(c.targets)
    if c.node:
        nodes.add(c.node)
    if proposal.node_name:
        nodes.add(proposal.node_name)
    return nodes


def golden_section(f: Callable[[float], float], upper: float = 4.0, grid: int = 10, refine: int = 8) -> tuple[float, float, int]:
    """Minimise f over [0, upper]: f(0), a geometric grid upper·2^-j (j < grid), then golden
    section around the best point. Returns (argmin, min, number of evaluations)."""
    points = [0.0] + [upper * 2.0 ** -j for j in reversed(range(grid))]
    values = [f(p) for p in points]
    evaluations = len(points)
    i = min(range(len(points)), key=values.__getitem__)
    best_x, best_f = points[i], values[i]
    if refine and 0 < i:
        lo, hi = points[i - 1], points[min(i + 1, len(points) - 1)]
        ratio = (math.sqrt(5) - 1) / 2
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fa, fb = f(a), f(b)
        evaluations += 2
        for _ in range(refine - 2):
            if fa < fb:
                hi, b, fb = b, a, fa
                a = hi - ratio * (hi - lo)
                fa = f(a)
            else:
                lo, a, fa = a, b, fb
                b = lo + ratio * (hi - lo)
                fb = f(b)
            evaluations += 1
        for x, fx in ((a, fa), (b, fb)):
            if fx < best_f:
                best_x, best_f = x, fx
    return best_x, best_f, evaluations


class ScaledChange:
    """The graph with a proposal applied once, whose new parameters are rescaled in place for
    each amplitude γ: neuron fan-ins and fan-outs by √γ, a new edge's weights by γ (exactly what
    :func:`~daggrow.grow.propose.apply` would build at γ, without copying the graph again)."""

    def __init__(self, graph: "Graph", proposal: "Proposal") -> None:
        from .propose import apply

        self.graph = apply(graph, proposal, 1.0)
        record = self.graph.growth_log[-1]
        # a widened node keeps its old neurons: the evaluator appends only the new ones
        self.grown = {n: start for n, (start, _) in record.neurons.items() if start > 0 and n in graph.nodes}
        self.parts: list[tuple[torch.Tensor, tuple, torch.Tensor, float]] = []
        with torch.no_grad():
            for node, (start, stop) in record.neurons.items():
                rows = (slice(start, stop),)
                for e in self.graph.in_edges(node):
                    m = self.graph.module(e.name)
                    self._keep(m.weight, rows, 0.5)
                    if m.bias is not None:
                        self._keep(m.bias, rows, 0.5)
                for e in self.graph.out_edges(node):
                    weight = self.graph.module(e.name).weight
                    # a linear edge that flattens an image node holds P columns per channel
                    rest = weight.shape[1] // stop if weight.ndim == 2 else 1
                    self._keep(weight, (slice(None), slice(start * rest, stop * rest)), 0.5)
            if record.action == "new_edge":
                for name in record.edges:
                    for p in self.graph.module(name).parameters():
                        self._keep(p, (slice(None),) * p.ndim, 1.0)

    def _keep(self, tensor: torch.Tensor, index: tuple, power: float) -> None:
        self.parts.append((tensor, index, tensor[index].detach().clone(), power))

    def at(self, gamma: float) -> "Graph":
        with torch.no_grad():
            for tensor, index, base, power in self.parts:
                tensor[index] = base * gamma ** power
        return self.graph


def line_search(graph: "Graph", proposal: "Proposal", batch: Any, loss: LossLike = "mse", *,
                upper: float = 4.0, grid: int = 10, refine: int = 8,
                evaluator: BatchEvaluator | None = None) -> LineSearchResult:
    """γ* for ``proposal`` on a held-out ``batch``: the loss drop the strategy "amplitude" ranks by.

    The proposal is applied once; each γ rescales only its new parameters and re-evaluates
    only the nodes downstream of the change.
    """
    ev = evaluator if evaluator is not None else BatchEvaluator(graph, batch, loss)
    changed = changed_nodes(proposal)
    scaled = ScaledChange(graph, proposal)

    # the targets only gain terms: the new neurons' or the new edge's (ScaledChange touches
    # nothing else), so their base pre-activations are reused
    targets = set(proposal.candidate.targets) - set(scaled.grown)

    evaluate = ev.evaluation(scaled.graph, changed, scaled.grown, added=targets)

    def f(gamma: float) -> float:
        if gamma == 0.0:
            return ev.base_loss
        scaled.at(gamma)
        return evaluate()

    with eval_mode(scaled.graph):
        gamma, value, evaluations = golden_section(f, upper, grid, refine)
    return LineSearchResult(gamma, ev.base_loss, value, evaluations)
