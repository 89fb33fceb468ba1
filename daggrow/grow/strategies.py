"""Where to grow: small pluggable strategy objects (docs/math.md §9).

A strategy receives the solved proposals and a :class:`SelectionContext` (which can run the
amplitude line search, cached per proposal) and returns a :class:`Choice`, or ``None`` to
decline growing. Write your own by subclassing :class:`Strategy`::

    class Widest(dg.Strategy):
        name = "widest"
        def select(self, proposals, ctx):
            p = max(proposals, key=lambda p: p.num_neurons)
            return dg.Choice(p, ctx.search(p))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from ..errors import DaggrowError
from ..stats import LossLike
from .line_search import LineSearchResult

if TYPE_CHECKING:
    from ..graph import Graph
    from .propose import Proposal


@dataclass
class Choice:
    proposal: "Proposal"
    search: LineSearchResult
    score: float = 0.0


@dataclass
class SelectionContext:
    """What a strategy may look at: the graph, its bottlenecks, the step, and a cached line search."""

    graph: "Graph"
    step: int
    bottlenecks: dict[str, float]
    loss: LossLike
    num_samples: int
    run_search: Callable[["Proposal"], LineSearchResult]
    # searches several proposals in shared batched passes (same answers as run_search one by one)
    run_many: Callable[[Sequence["Proposal"]], list[LineSearchResult]] | None = None
    _cache: dict[int, LineSearchResult] = field(default_factory=dict)

    def search(self, proposal: "Proposal") -> LineSearchResult:
        key = id(proposal)
        if key not in self._cache:
            self._cache[key] = self.run_search(proposal)
        return self._cache[key]

    def search_many(self, proposals: Sequence["Proposal"]) -> list[LineSearchResult]:
        """:meth:`search` of each proposal, the uncached ones together when ``run_many`` is set."""
        todo = list({id(p): p for p in proposals if id(p) not in self._cache}.values())
        if todo and self.run_many is not None:
            for p, r in zip(todo, self.run_many(todo)):
                self._cache[id(p)] = r
        return [self.search(p) for p in proposals]

    @property
    def evaluations(self) -> int:
        return sum(r.evaluations for r in self._cache.values())


class Strategy:
    """Base class: ``select(proposals, ctx) -> Choice | None``."""

    name = "strategy"

    def select(self, proposals: Sequence["Proposal"], ctx: SelectionContext) -> Choice | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _lambda1(p: "Proposal") -> float:
    """λ₁ for neurons; for a new edge (no eigenvalues) √(bottleneck decrease) plays its part."""
    return p.eigenvalues[0] if p.eigenvalues else math.sqrt(max(p.bottleneck_decrease, 0.0))


class Naive(Strategy):
    """Round-robin over places (the talk's "Naive"): attempt t grows place t mod #places."""

    name = "naive"

    def select(self, proposals, ctx):
        if not proposals:
            return None
        places = sorted({p.where for p in proposals})
        where = places[ctx.step % len(places)]
        p = max((p for p in proposals if p.where == where), key=_lambda1)
        return Choice(p, ctx.search(p), _lambda1(p))


class MaxEigenvalue(Strategy):
    """argmax λ₁: first-order information only (the talk's "MaxEigenValue")."""

    name = "max_eigenvalue"

    def select(self, proposals, ctx):
        if not proposals:
            return None
        p = max(proposals, key=_lambda1)
        return Choice(p, ctx.search(p), _lambda1(p))


class Amplitude(Strategy):
    """argmax of the real loss drop L(θ) − L(θ ⊕ γ*·change) after the line search (default).

    ``top_k`` bounds the cost: only the ``top_k`` proposals with the largest first-order gain
    (the list arrives sorted that way) get a line search; ``None`` searches them all.
    """

    name = "amplitude"

    def __init__(self, top_k: int | None = 8) -> None:
        self.top_k = top_k

    def score(self, p: "Proposal", r: LineSearchResult, ctx: SelectionContext) -> float:
        return r.loss_drop

    def shortlist(self, proposals: Sequence["Proposal"]) -> Sequence["Proposal"]:
        return proposals if self.top_k is None else list(proposals)[: self.top_k]

    def select(self, proposals, ctx):
        best = None
        shortlist = self.shortlist(proposals)
        for p, r in zip(shortlist, ctx.search_many(shortlist)):
            s = self.score(p, r, ctx)
            if best is None or s > best.score:
                best = Choice(p, r, s)
        return best


class BottleneckNode(Amplitude):
    """Only candidates touching the node with the largest Ψ_v (Douka et al.), then by loss drop."""

    name = "bottleneck_node"

    def select(self, proposals, ctx):
        if not ctx.bottlenecks:
            return super().select(proposals, ctx)
        worst = max(ctx.bottlenecks, key=ctx.bottlenecks.__getitem__)
        near = [p for p in proposals if worst in p.candidate.touches]
        return super().select(near or proposals, ctx)


class Efficiency(Amplitude):
    """Loss drop per added parameter."""

    name = "efficiency"

    def score(self, p, r, ctx):
        return r.loss_drop / max(p.num_new_parameters, 1)


class InformationCriterion(Amplitude):
    """Minimise an information criterion with a real likelihood (docs/math.md §9), BIC by default.

    log-lik = −n·CE for cross-entropy, −(n/2)·log MSE for MSE; the change of
    −2·log-lik + penalty·#params must be negative, otherwise growth is declined.
    """

    name = "information_criterion"

    def __init__(self, penalty: str | float = "bic", top_k: int | None = 8) -> None:
        super().__init__(top_k)
        self.penalty = penalty

    def _per_parameter(self, n: int) -> float:
        if self.penalty == "bic":
            return math.log(max(n, 2))
        if self.penalty == "aic":
            return 2.0
        return float(self.penalty)

    def _neg2_loglik(self, loss_value: float, ctx: SelectionContext) -> float:
        n = ctx.num_samples
        if ctx.loss == "cross_entropy":
            return 2.0 * n * loss_value
        if ctx.loss == "mse":
            return n * math.log(max(loss_value, 1e-300))
        raise DaggrowError("the information criterion needs loss='cross_entropy' or 'mse' (a known likelihood)")

    def score(self, p, r, ctx):
        delta = (self._neg2_loglik(r.loss_after, ctx) - self._neg2_loglik(r.loss_before, ctx)
                 + self._per_parameter(ctx.num_samples) * p.num_new_parameters)
        return -delta

    def select(self, proposals, ctx):
        best = super().select(proposals, ctx)
        return best if best is not None and best.score > 0 else None


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (Naive, MaxEigenvalue, Amplitude, BottleneckNode, Efficiency, InformationCriterion)
}


def get_strategy(strategy: str | Strategy) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    try:
        return STRATEGIES[strategy]()
    except KeyError:
        raise DaggrowError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)} "
                           "(or pass a Strategy object)") from None
