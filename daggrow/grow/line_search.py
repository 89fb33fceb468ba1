"""The amplitude factor γ* = argmin_{γ∈[0,u]} L(θ ⊕ γ·change) on a held-out batch (docs/math.md §9).

No graph is copied or rewritten. A proposal changes the function only through terms added to
its targets' pre-activations: with the neurons' fan-in and fan-out at amplitude 1 (from
:func:`~daggrow.solve.activation_layout`: pairs for ReLU, √(1/c) scaling), amplitude γ scales
both by √γ, so

    Δz_t(γ) = √γ · W_t^out σ_w(√γ · t₁)        t₁ = the new neurons' pre-activations at γ = 1

(σ_w: the widened node's activation after its norm's map on new entries; a new node has no
norm), and a new edge adds Δz_v(γ) = γ · W [h_u; 1]. t₁ (or W [h_u; 1]) is computed once per
search from the cached values of the unchanged graph; every amplitude of a round is then
evaluated in batched passes: the held-out batch is stacked once per amplitude, and only the
targets and their descendants are recomputed (with the unchanged graph's modules), from cached
values everywhere else. Changes that reach different nodes take different passes (a pass
recomputes the union of its changes' nodes for every copy), and a pass stacks at most
:func:`stacked_values` values per node tensor.

Search: γ = 0 (the unchanged loss), a geometric grid u·2^-j (j < grid) in one pass; while the
best point is the bound u, the bound doubles (four doublings per pass) up to ``max_upper``, so
the chosen γ is an interior minimum unless the loss still falls at ``max_upper``; then rounds of
equally spaced points between the neighbours of the best point (``refine`` evaluations in all,
at most ``REFINE_ROUND`` per pass). γ = 0 always competes, so an accepted change never raises the
held-out loss.

Proposals whose change is not a sum of terms of that form (a widening whose readers take the new
columns through a concatenation, a new conv node or edge) take the general path: the proposal is
applied once and its new parameters are rescaled in place for each γ (:class:`ScaledChange`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch.nn import functional as F

from .. import distributed
from ..compile import eval_mode, node_values
from ..compile.evaluate import columns_term, new_entries_norm, pre_activation, rows_term
from ..graph.activations import get_activation
from ..graph.blocks import edge_forward, flattens_source
from ..solve import activation_layout
from ..stats import LossLike, per_sample_loss, split_batch
from ..stats.collect import graph_device
from .widening import widening

if TYPE_CHECKING:
    from ..graph import Graph
    from .propose import Proposal

REFINE_ROUND = 8          # refinement points evaluated per batched pass
STACKED_VALUES = 1 << 24      # values per node tensor of one batched pass on a GPU (64 MB in float32)
CPU_STACKED_VALUES = 1 << 18  # on the CPU (1 MB): malloc maps every block of several MB afresh, and
                              # page-faulting it in cost more than the whole pass's arithmetic (measured:
                              # ~5,000 page faults and +30% time per search at 1 << 24); smaller passes
                              # reuse freed memory and stay in cache


def stacked_values(device: torch.device) -> int:
    """Values per node tensor of one batched pass of the line search on ``device``."""
    return CPU_STACKED_VALUES if device.type == "cpu" else STACKED_VALUES


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
        self.n = int(self.y.shape[0])
        self.pre: dict[str, torch.Tensor] = {}
        with torch.no_grad(), eval_mode(graph):
            self.cache = node_values(graph, self.xs, pre=self.pre)
        self.base_loss = float(self.mean_losses(self.cache[graph.outputs[0]], 1)[0])
        self._order = graph.topological_order()

    def mean_losses(self, out: torch.Tensor, copies: int) -> torch.Tensor:
        """The mean held-out loss of each of ``copies`` stacked copies of the batch, (copies,).

        ``out`` is the output for the inputs stacked ``copies`` times ((copies·n, …)). Every loss
        of the line search is computed here; under ``torch.distributed`` each mean is over every
        process's part of the held-out batch (sums and counts all-reduced)."""
        y = self.y.expand(copies, *self.y.shape).reshape(copies * self.n, *self.y.shape[1:])
        losses = per_sample_loss(self.loss_fn, out, y).reshape(copies, self.n)
        if distributed.active():
            return torch.tensor(distributed.means_over_processes(losses.sum(1), self.n), dtype=torch.float64)
        return losses.mean(1)

    def loss(self, new: "Graph", changed: set[str], grown: dict[str, int] | None = None,
             added: Iterable[str] = ()) -> float:
        """Loss of ``new``, where only ``changed`` nodes (and their descendants) differ from the base;
        ``grown`` nodes only appended neurons (their first k values are taken from the base);
        ``added`` nodes only gained input terms (new edges, or new columns for a grown source)
        and keep the base's other weights: their old pre-activation is reused."""
        dirty = set(changed)
        for n in changed:
            if n in new.nodes:
                dirty |= new.descendants(n)
        reuse = [n for n in new.nodes if n not in dirty and n in self.cache]
        added_z = {n: self.pre[n] for n in added if n in self.pre}
        with torch.no_grad(), eval_mode(new):
            values = node_values(new, self.xs, cache=self.cache, reuse=reuse, grown=grown, added=added_z,
                                 old_edges=self.graph.edges)
            return float(self.mean_losses(values[new.outputs[0]], 1)[0])

    def losses(self, change: "Change", gammas: Sequence[float]) -> list[float]:
        """L(γ) of the base graph plus ``change`` at every amplitude in ``gammas``, batched."""
        return self.losses_many([(change, gammas)])[0]

    def losses_many(self, requests: Sequence[tuple["Change", Sequence[float]]]) -> list[list[float]]:
        """L(γ) for several changes, each at its own amplitudes, in as few batched passes as fit
        in :func:`stacked_values`: the held-out batch is stacked once per (change, γ) pair."""
        # changes that reach different nodes go to different passes: a pass recomputes the union
        # of its changes' dirty nodes for every copy, so one with few dirty nodes (a change into
        # the output) would otherwise pay for another's (a change deep in the graph)
        passes: dict[frozenset, list[tuple[int, float]]] = {}
        for i, (change, gammas) in enumerate(requests):
            passes.setdefault(frozenset(change.dirty), []).extend((i, float(gamma)) for gamma in gammas)
        out: list[list[float]] = [[] for _ in requests]
        with torch.no_grad(), eval_mode(self.graph):
            for dirty, pairs in passes.items():
                per_copy = max([self.cache[v][0].numel() for v in dirty] + [1]) * self.n
                step = max(1, stacked_values(self.y.device) // per_copy)
                for lo in range(0, len(pairs), step):
                    part = pairs[lo: lo + step]
                    values = self.mean_losses(self._stacked_output([requests[i][0] for i, _ in part],
                                                                   [gamma for _, gamma in part]), len(part))
                    for (i, _), value in zip(part, values.tolist()):
                        out[i].append(value)
        return out

    def _stacked_output(self, changes: list["Change"], gammas: list[float]) -> torch.Tensor:
        """The output for the batch stacked once per pair (changes[j], gammas[j])."""
        graph, g, n = self.graph, len(gammas), self.n
        runs: dict[str, list[tuple[int, int, torch.Tensor]]] = {}
        start = 0
        while start < g:  # runs of one change: its terms at its amplitudes, zero elsewhere
            stop = start
            while stop < g and changes[stop] is changes[start]:
                stop += 1
            terms = changes[start].terms(torch.tensor(gammas[start:stop], dtype=torch.float64), self.cache)
            for t, term in terms.items():
                runs.setdefault(t, []).append((start, stop, term))
            start = stop
        added = {t: _stack_runs(parts, g, n) for t, parts in runs.items()}  # new tensors: added into in place
        dirty = set().union(*(c.dirty for c in changes))
        stacked: dict[str, torch.Tensor] = {}

        def value(node: str) -> torch.Tensor:  # (g·n, …): repeated when no change reaches it
            if node in stacked:
                return stacked[node]
            v = self.cache[node]
            return v.expand(g, *v.shape).reshape(g * v.shape[0], *v.shape[1:])

        for name in self._order:
            if name not in dirty:
                continue
            spec = graph.node(name)
            if graph.op_module(name) is not None:
                z = pre_activation(graph, name, {s: value(s) for s in graph.predecessors(name)})
            elif name in self.pre and not any(e.source in stacked for e in graph.in_edges(name)):
                z = self.pre[name]  # only the changes' terms are new: broadcast the old sum
            else:
                z = None
                for e in graph.in_edges(name):
                    h = stacked.get(e.source, self.cache[e.source])
                    term = edge_forward(e.block, graph.module(e.name), graph.node(e.source), h, spec)
                    z = _add(z, term, g)
            if name in added:  # (g·n, …), ours: z is added into it
                z = added[name] if z is None else _add_into(added[name], z, g)
            if z.shape[0] != g * n:  # (g·n, …) from here on
                z = z.expand(g, *z.shape).reshape(g * z.shape[0], *z.shape[1:])
            norm = graph.norm_module(name)
            if norm is not None:
                z = norm(z)
            stacked[name] = get_activation(spec.activation).function(z, **spec.activation_params) \
                if spec.activation != "identity" else z
        return value(graph.outputs[0])


def _stack_runs(parts: list[tuple[int, int, torch.Tensor]], copies: int, n: int) -> torch.Tensor:
    """One (copies·n, …) tensor holding each part's term at copies start:stop and zero at the
    copies no part covers; a lone part that covers every copy is returned as it is."""
    start, stop, term = parts[0]
    if len(parts) == 1 and (start, stop) == (0, copies):
        return term
    out = term.new_empty(copies * n, *term.shape[1:])
    at = 0
    for start, stop, term in parts:
        out[at * n: start * n].zero_()
        out[start * n: stop * n].copy_(term)
        at = stop
    out[at * n:].zero_()
    return out


def _add_into(total: torch.Tensor, z: torch.Tensor, copies: int) -> torch.Tensor:
    """total += z in place, ``total`` stacked (copies·n, …) and z stacked or per sample (n, …)."""
    if z.shape[0] == total.shape[0]:
        return total.add_(z)
    total.view(copies, z.shape[0], *z.shape[1:]).add_(z)
    return total


def _add(z: torch.Tensor | None, term: torch.Tensor, copies: int) -> torch.Tensor:
    """z + term where either is per sample (n, …) or stacked (copies·n, …); the result is
    stacked as soon as one of them is."""
    if z is None:
        return term
    if z.shape[0] == term.shape[0]:
        return z + term
    big, small = (z, term) if z.shape[0] > term.shape[0] else (term, z)
    return (big.reshape(copies, small.shape[0], *small.shape[1:]) + small).reshape(big.shape)


class Change:
    """A proposal as terms added to its targets' pre-activations, as a function of γ."""

    @staticmethod
    def supports(graph: "Graph", proposal: "Proposal") -> bool:
        """True for linear new nodes and edges and for widenings read directly by their node's
        out-edges; conv blocks and readers behind a concatenation take :class:`ScaledChange`."""
        c = proposal.candidate
        if c.kind != "expand_node":
            return getattr(c, "block", None) is None
        return all(graph.edge(e).source == c.node for e, _ in reader_columns(graph, c.node))

    def __init__(self, graph: "Graph", proposal: "Proposal") -> None:
        from .propose import _split_expansion

        self.graph, self.proposal = graph, proposal
        self._values: dict[str, torch.Tensor] | None = None  # the values _unit was computed from
        self._unit_value: torch.Tensor | None = None
        c = proposal.candidate
        self.targets = list(dict.fromkeys(c.targets))
        self.dirty = set(self.targets)
        for t in self.targets:
            self.dirty |= graph.descendants(t)
        ref = next(graph.parameters())
        like = lambda t: t.detach().to(device=ref.device, dtype=ref.dtype)  # noqa: E731
        if c.kind == "new_edge":
            self.weight = like(proposal.weight)
            return
        layout = activation_layout(proposal.activation, proposal.activation_params)
        fan_in, fan_out = layout.neurons(proposal.fan_in, proposal.fan_out, 1.0)  # amplitude 1
        self.activation = get_activation(proposal.activation)
        if c.kind == "expand_node":
            ins, outs, bias = _split_expansion(graph, c, fan_in.T, fan_out, proposal.bias)
            self.fan_in = [(graph.edge(e), like(w), like(bias[e]) if e in bias else None) for e, w in ins.items()]
            self.fan_out = [(graph.edge(e), like(w)) for e, w in outs.items()]
            self.norm = graph.norm_module(c.node)
            self.tokens = graph.node(c.node).layout == "tokens"
        else:
            d_u = graph.node(c.sources[0]).features
            self.fan_in = [(None, like(fan_in[:d_u].T), like(fan_in[d_u]))]
            self.fan_out = [(None, like(fan_out))]
            self.norm, self.tokens = None, False

    def terms(self, gammas: torch.Tensor, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Δz_t for each target at each amplitude: (len(gammas)·n, …), amplitude-major; new
        tensors (the evaluator adds into them)."""
        graph, c, g = self.graph, self.proposal.candidate, gammas.numel()
        unit = self._unit(values)  # the edge's term, or the new neurons' pre-activations, at γ = 1
        if c.kind == "new_edge":
            scale = gammas.to(unit)
            return {c.targets[0]: (scale.reshape(g, *[1] * unit.ndim) * unit).reshape(g * unit.shape[0], *unit.shape[1:])}
        root = gammas.sqrt().to(unit).reshape(g, *[1] * unit.ndim)
        z = (root * unit).reshape(g * unit.shape[0], *unit.shape[1:])
        a = self.activation.function(new_entries_norm(self.norm, z), **self.proposal.activation_params)
        # the fan-out's √γ is applied to the new neurons' values (the readers' terms are linear in them)
        a = (root * a.reshape(g, -1, *a.shape[1:])).reshape(a.shape)
        out = {}
        for edge, w in self.fan_out:
            target = c.targets[0] if edge is None else edge.target
            term = F.linear(a, w) if edge is None else columns_term(graph.module(edge.name), a, w, self.tokens)
            out[target] = term if target not in out else out[target] + term
        return out

    def _unit(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the change adds at γ = 1 before any amplitude: a new edge's term W [h_u; 1], or
        the new neurons' pre-activations t₁; computed once per ``values`` (every round of a
        search reads the same cached values)."""
        if self._values is values:
            return self._unit_value
        graph, c = self.graph, self.proposal.candidate
        if c.kind == "new_edge":
            h = values[c.sources[0]]
            h = torch.flatten(h, 1) if graph.node(c.sources[0]).spatial else h
            unit = F.linear(h, self.weight[:, :-1], self.weight[:, -1])
        else:
            unit = None
            for edge, w, b in self.fan_in:
                if edge is None:  # a new node: a linear edge from its source (flattened if an image)
                    h = values[c.sources[0]]
                    term = F.linear(torch.flatten(h, 1) if graph.node(c.sources[0]).spatial else h, w, b)
                else:
                    term = rows_term(graph.module(edge.name), values[edge.source], w, b,
                                     flattens_source(edge.block, graph.node(edge.source)))
                unit = term if unit is None else unit + term
        self._values, self._unit_value = values, unit
        return unit


def reader_columns(graph: "Graph", node: str) -> list[tuple[str, int]]:
    """The edges reading new neurons of ``node`` (in ``graph``, before the widening) and the
    column (channel) where they start: its readers, through concatenations too
    (``daggrow.grow.widening``), at the insertion index in their source."""
    plan = widening(graph, node)
    if isinstance(plan, str):
        return []
    return [(e, plan.inserts[graph.edge(e).source][0]) for e in plan.out_edges]


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



def amplitude_search(losses: Callable[[list[float]], list[float]], at_zero: float, upper: float = 4.0,
                     grid: int = 10, refine: int = 16, max_upper: float = 2.0 ** 16) -> tuple[float, float, int]:
    """Minimise L over [0, ∞) with batched evaluations ``losses(γs)``: L(0) = ``at_zero``; the
    geometric grid upper·2^-j (j < grid); while the bound wins, doublings of it up to
    ``max_upper``; then ``refine`` equally spaced points in rounds of :data:`REFINE_ROUND`
    between the best point's neighbours. Returns (argmin, min, number of evaluations)."""
    search = _search(at_zero, upper, grid, refine, max_upper)
    request = next(search)
    while True:
        try:
            request = search.send(losses(request))
        except StopIteration as done:
            return done.value


def _search(at_zero: float, upper: float, grid: int, refine: int, max_upper: float):
    """:func:`amplitude_search` as a generator: yields the amplitudes of each round, receives
    their losses (so that several searches can share batched passes)."""
    points = [upper * 2.0 ** -j for j in reversed(range(grid))]
    found = dict(zip(points, (yield points)))
    found[0.0] = at_zero
    evaluations = len(points)
    while min(found, key=found.__getitem__) == max(found) and max(found) < max_upper:
        top = max(found)
        more = [top * 2.0 ** i for i in range(1, 5) if top * 2.0 ** i <= max_upper]
        found.update(zip(more, (yield more)))
        evaluations += len(more)
    left = refine
    while left > 0:
        xs = sorted(found)
        best = min(range(len(xs)), key=lambda i: (found[xs[i]], xs[i]))
        if best == 0:
            break
        lo, hi = xs[best - 1], xs[min(best + 1, len(xs) - 1)]
        k = min(left, REFINE_ROUND)
        new = [x for x in (lo + (hi - lo) * (i + 1) / (k + 1) for i in range(k)) if x not in found]
        if not new:
            break
        found.update(zip(new, (yield new)))
        evaluations += len(new)
        left -= k
    best = min(found, key=lambda x: (found[x], x))
    return best, found[best], evaluations


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
        self.indirect: set[str] = set()
        with torch.no_grad():
            for node, (start, stop) in record.neurons.items():
                rows = (slice(start, stop),)
                for e in self.graph.in_edges(node):
                    m = self.graph.module(e.name)
                    self._keep(m.weight, rows, 0.5)
                    if m.bias is not None:
                        self._keep(m.bias, rows, 0.5)
                readers = (reader_columns(graph, node) if node in graph.nodes   # concatenations' readers too
                           else [(e.name, 0) for e in self.graph.out_edges(node)])       # a new node's
                for e, at in readers:
                    weight = self.graph.module(e).weight
                    # a linear edge that flattens an image node holds P columns per channel
                    width = self.graph.node(self.graph.edge(e).source).width
                    rest = weight.shape[1] // width if weight.ndim == 2 else 1
                    self._keep(weight, (slice(None), slice(at * rest, (at + stop - start) * rest)), 0.5)
                    if self.graph.edge(e).source != node:   # its target's new term comes through a
                        self.indirect.add(self.graph.edge(e).target)  # widened concatenation
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
                upper: float = 4.0, grid: int = 10, refine: int = 16, max_upper: float = 2.0 ** 16,
                evaluator: BatchEvaluator | None = None) -> LineSearchResult:
    """γ* for ``proposal`` on a held-out ``batch``: the loss drop the strategy "amplitude" ranks by.

    Nothing is copied: the change is evaluated as terms added to its targets (:class:`Change`),
    each round of amplitudes in one batched pass (see the module docstring).
    """
    return line_search_many(graph, [proposal], batch, loss, upper=upper, grid=grid, refine=refine,
                            max_upper=max_upper, evaluator=evaluator)[0]


def line_search_many(graph: "Graph", proposals: Sequence["Proposal"], batch: Any, loss: LossLike = "mse", *,
                     upper: float = 4.0, grid: int = 10, refine: int = 16, max_upper: float = 2.0 ** 16,
                     evaluator: BatchEvaluator | None = None) -> list[LineSearchResult]:
    """:func:`line_search` of several proposals in lockstep: each round's amplitudes of all of
    them share one batched pass (the same answers as one search at a time)."""
    ev = evaluator if evaluator is not None else BatchEvaluator(graph, batch, loss)
    results: dict[int, tuple[float, float, int]] = {}
    fast = [i for i, p in enumerate(proposals) if Change.supports(graph, p)]
    for i, p in enumerate(proposals):
        if i not in fast:
            results[i] = _rescaled_search(graph, p, ev, upper, grid, refine, max_upper)
    changes = {i: Change(graph, proposals[i]) for i in fast}
    searches = {i: _search(ev.base_loss, upper, grid, refine, max_upper) for i in fast}
    requests = {i: next(s) for i, s in searches.items()}
    while requests:
        order = list(requests)
        values = ev.losses_many([(changes[i], requests[i]) for i in order])
        requests = {}
        for i, value in zip(order, values):
            try:
                requests[i] = searches[i].send(value)
            except StopIteration as done:
                results[i] = done.value
    return [LineSearchResult(results[i][0], ev.base_loss, results[i][1], results[i][2])
            for i in range(len(proposals))]


def _rescaled_search(graph: "Graph", proposal: "Proposal", ev: BatchEvaluator, upper: float, grid: int,
                     refine: int, max_upper: float) -> tuple[float, float, int]:
    """The search for a change :class:`Change` does not express (conv blocks, readers behind a
    concatenation): the proposal applied once, its new parameters rescaled per γ."""
    scaled = ScaledChange(graph, proposal)
    # the targets only gain terms (ScaledChange touches nothing else): their base pre-activations are reused
    targets = set(proposal.candidate.targets) - set(scaled.grown) - scaled.indirect
    changed = changed_nodes(proposal)

    def losses(gammas: list[float]) -> list[float]:
        out = []
        for gamma in gammas:
            scaled.at(gamma)
            out.append(ev.loss(scaled.graph, changed, scaled.grown, added=targets))
        return out

    return amplitude_search(losses, ev.base_loss, upper, grid, refine, max_upper)
