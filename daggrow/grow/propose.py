"""From statistics to proposals: assemble the moment blocks of each candidate, call the solver.

For a candidate with fan-in sources U and targets T (docs/math.md §5):

    S = S_U,   M = M_{U,T},   N = M_{U,T} − [P_{U,in(v)} δW_v*ᵀ]_{v∈T}

where δW_v* is the best update at each target (docs/math.md §4). The solver turns (S, N, M) into
neurons; this module only reads blocks and splits results back onto edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Literal

import warnings

import torch

from ..errors import CandidateSkippedWarning, DaggrowError, GraphError
from ..graph.spec import is_growable
from ..solve import BestUpdate, Decomposition, activation_layout, best_update, solve_neurons, whitening
from ..solve import new_edge as solve_new_edge
from ..solve.batched import WhitenedProblem, tiny_neurons_batched
from ..stats import Statistics, update_sources
from ..stats.plan import full_kernel
from .candidates import KINDS, Candidate, Kind, enumerate_candidates, source_keys

if TYPE_CHECKING:
    from ..graph import Graph

Init = Literal["tiny", "gradmax", "north", "random", "zero"]
ROUND_OFF = 1e-10


@dataclass
class NodeUpdate:
    """The best update δW* at one node, split per in-edge: ``edges[name] = (δW, δb or None)``."""

    node: str
    solution: BestUpdate
    edges: dict[str, tuple[torch.Tensor, torch.Tensor | None]]

    @property
    def first_order_gain(self) -> float:
        """L(η) ≈ L(0) − η·gain when η·δW* is applied (docs/math.md §4)."""
        return float(self.solution.gain)


@dataclass
class Proposal:
    """New neurons (or a new edge) at one candidate, ready for :func:`daggrow.apply`.

    ``fan_in`` is (Σd_U [+1]) × K with column k = α_k (constant row last when ``bias``);
    ``fan_out`` is (Σd_T) × K with column k = ω_k. ``first_order_gain`` is exact to first order:
    L(γ) ≈ L(0) − γ·first_order_gain for the new parts at amplitude γ.
    """

    candidate: Candidate
    init: str
    eigenvalues: list[float]
    first_order_gain: float
    bottleneck_decrease: float
    fan_in: torch.Tensor
    fan_out: torch.Tensor
    bias: bool
    activation: str = "identity"
    activation_params: dict[str, float] = field(default_factory=dict)
    node_name: str | None = None          # new_node: the name the new node will get
    weight: torch.Tensor | None = None     # new_edge: (d_v × (d_u + 1)), bias column last
    updates: dict[str, NodeUpdate] = field(default_factory=dict)  # δW* at the targets
    projected: bool = True  # False: solved on V, not V⊥ (the projected problem was empty)
    round_off: bool = False  # first-order gain ≤ round-off of the targets' energy (or < 0): ranked last

    @property
    def kind(self) -> Kind:
        return self.candidate.kind

    @property
    def sources(self) -> tuple[str, ...]:
        return self.candidate.sources

    @property
    def targets(self) -> tuple[str, ...]:
        return self.candidate.targets

    @property
    def where(self) -> str:
        return self.candidate.where

    @property
    def num_directions(self) -> int:
        return int(self.fan_in.shape[1]) if self.kind != "new_edge" else 0

    @property
    def num_neurons(self) -> int:
        """Neurons :func:`apply` adds: directions × (2 for paired activations such as ReLU)."""
        if self.kind == "new_edge":
            return 0
        return self.num_directions * len(activation_layout(self.activation, self.activation_params).signs)

    @property
    def num_new_parameters(self) -> int:
        if self.kind == "new_edge":
            return int(self.weight.numel())
        return self.num_neurons * (self.fan_in.shape[0] + self.fan_out.shape[0])

    def __repr__(self) -> str:
        lam = ", ".join(f"{x:.3g}" for x in self.eigenvalues[:4])
        note = "" if self.projected else ", unprojected"
        return (f"Proposal({self.where}, init={self.init}{note}, neurons={self.num_neurons}, λ=[{lam}], "
                f"first_order_gain={self.first_order_gain:.4g})")


def _has_bias(graph: "Graph", node: str) -> bool:
    return any(is_growable(e.block) and e.block.bias for e in graph.in_edges(node))


def moment_and_decomposition(graph: "Graph", stats: Statistics, sources: list[str], bias: bool, rel_tol: float,
                             memo: dict | None = None) -> tuple[torch.Tensor, Decomposition]:
    """S_U and its ``whitening``, decomposed once: per call through ``memo``, and across
    passes over the same samples through ``stats.data_cache`` when U holds only inputs."""
    key = (tuple(sources), bias, rel_tol)
    data_only = set(sources) <= set(graph.inputs)
    cache = stats.data_cache if data_only else memo
    if cache is not None and key in cache:
        return cache[key]
    S = stats.moment(sources, sources, bias, bias)
    value = (S, whitening(S, rel_tol))
    if cache is not None:
        cache[key] = value
    return value


def node_update(graph: "Graph", stats: Statistics, node: str, rel_tol: float = 1e-10,
                memo: dict | None = None) -> NodeUpdate:
    """δW* at ``node``, jointly over its linear in-edges (docs/math.md §4)."""
    edges = [e for e in graph.in_edges(node) if is_growable(e.block)]
    sources = update_sources(graph, node)
    bias = _has_bias(graph, node)
    g = stats.grad_energy(node)
    if not sources and not bias:
        empty = torch.zeros(graph.node(node).width, 0, dtype=torch.float64)
        return NodeUpdate(node, best_update(empty.new_zeros(0, 0), empty.T, g, rel_tol=rel_tol), {})
    S, decomposition = moment_and_decomposition(graph, stats, sources, bias, rel_tol, memo)
    M = stats.grad_moment(sources, [node], bias)
    sol = best_update(S, M, g, rel_tol=rel_tol, decomposition=decomposition)
    split: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    offset, bias_given = 0, False
    for e, key in zip(edges, sources):
        d = stats.widths[key]
        db = None
        if e.block.bias and not bias_given:
            db, bias_given = sol.delta[:, -1], True
        elif e.block.bias:
            db = torch.zeros_like(sol.delta[:, -1])
        split[e.name] = (sol.delta[:, offset: offset + d], db)
        offset += d
    return NodeUpdate(node, sol, split)


def bottleneck(graph: "Graph", stats: Statistics, rel_tol: float = 1e-10,
               updates: dict[str, NodeUpdate] | None = None) -> dict[str, float]:
    """Ψ_v = g_v − tr(M_inᵀ S_in⁺ M_in) for every node whose desired move was collected.

    ``updates``: δW* already solved from these statistics (``propose(...).updates``), reused."""
    memo: dict = {}
    updates = updates or {}
    return {v: float((updates[v] if v in updates else node_update(graph, stats, v, rel_tol, memo)).solution.bottleneck)
            for v in graph.topological_order() if v in stats.v}


class Proposals(list):
    """The proposals of one :func:`propose` call, best first (a plain list), with ``skipped``:
    ``(candidate, reason)`` for every candidate whose problem could not be solved, and
    ``updates``: the best updates δW* it solved (node → :class:`NodeUpdate`)."""

    skipped: list[tuple[Candidate, str]]
    updates: dict[str, NodeUpdate]

    def __init__(self, items: Iterable["Proposal"] = (), skipped: list[tuple[Candidate, str]] | None = None,
                 updates: dict[str, NodeUpdate] | None = None):
        super().__init__(items)
        self.skipped = list(skipped or [])
        self.updates = dict(updates or {})


def propose(
    graph: "Graph",
    stats: Statistics,
    max_neurons: int = 4,
    *,
    init: Init = "tiny",
    candidates: Iterable[Candidate] | None = None,
    kinds: Iterable[Kind] = KINDS,
    new_node_activation: str = "relu",
    rel_threshold: float = 1e-3,
    rel_tol: float = 1e-10,
    generator: torch.Generator | None = None,
    unprojected_fallback: bool = True,
    grouped: bool = True,
) -> Proposals:
    """Solve every candidate; returns proposals, best first (see :func:`rank_key`).

    With ``unprojected_fallback`` (default), a TINY candidate whose projected problem is empty
    (its targets already read its sources through linear edges, so V⊥ ⟂ B_U) is solved on V
    instead of V⊥; such proposals have ``projected=False`` and their Σλ² is the decrease of
    (1/n)‖V − ΩAᵀB‖², not of the bottleneck.

    ``grouped`` (default) shares work between candidates: one whitening F_U per source set U,
    one product F_U N_{U,v} and F_U M_{U,v} per (U, target v), a candidate's F N the columns of
    its targets' blocks, and the SVDs of all TINY candidates of one shape in one batched call.
    ``grouped=False`` solves each candidate on its own (the reference: same answers to round-off).

    One candidate never aborts the call: a candidate whose problem raises a
    :class:`~daggrow.errors.DaggrowError` (a factorisation that failed even after its fallbacks,
    statistics that were not collected for it) is skipped; one
    :class:`~daggrow.errors.CandidateSkippedWarning` per call lists them, and the returned
    :class:`Proposals` hold ``(candidate, reason)`` in ``.skipped``. Candidates with nothing to
    gain (K = 0) are dropped.

    Widening a node w that reads only u and writes only v (one linear edge each, w's activation
    = ``new_node_activation``, a bias, no norm) is the same function change as a new node
    u → n → v: the same statistics, the same neurons, the same loss at every amplitude. When
    both are candidates only the new node is proposed, because it keeps more room to grow
    (it can later be widened on its own and opens new node pairs) — otherwise growth from a
    chain x → h → y could never leave it.
    """
    candidates = list(candidates) if candidates is not None else enumerate_candidates(graph, kinds)
    candidates = [c for c in candidates if c.where not in stats.left_out]  # left out by the memory planner
    ctx = _Context(graph, stats, rel_tol, shared=grouped)
    name = _fresh_node_name(graph)
    problems, skipped = [], []
    pairs = {(c.sources, c.targets) for c in candidates if c.kind == "new_node"}
    candidates = [c for c in candidates if not (
        c.kind == "expand_node" and _same_as_new_node(graph, c, new_node_activation) in pairs)]
    # (the same change as a new node between its source and target: see the docstring)
    if grouped and init == "tiny" and not unprojected_fallback:
        # a new node u → v whose target already reads u linearly has F N = 0 (V⊥_v ⟂ B_u): only the
        # unprojected fallback gives it neurons, so without the fallback it is not solved at all
        candidates = [c for c in candidates if not (
            c.kind == "new_node" and source_keys(graph, c)[0] in ctx.info(c.targets[0])[0])]
    if grouped:
        ctx.share(_target_groups(graph, candidates))
    for cand in candidates:
        try:
            prob = _assemble(ctx, cand, max_neurons, new_node_activation, name)
        except DaggrowError as err:
            skipped.append((cand, f"{type(err).__name__}: {err}"))
            continue
        if prob is not None:
            problems.append(prob)
    batched = grouped and init == "tiny"
    if batched:
        solutions = _solve_batched(problems, rel_threshold, unprojected_fallback, skipped)
    else:
        solutions = []
        for prob in problems:
            try:
                solutions.append(_solve_one(prob, init, rel_threshold, rel_tol, generator, unprojected_fallback))
            except DaggrowError as err:
                skipped.append((prob.cand, f"{type(err).__name__}: {err}"))
                solutions.append(None)
    proposals = [p for prob, sol in zip(problems, solutions) if (p := _proposal(prob, sol, init, stats)) is not None]
    proposals.sort(key=rank_key)
    if skipped:
        warnings.warn(f"propose skipped {len(skipped)} candidate(s): "
                      + "; ".join(f"{c.where} ({why})" for c, why in skipped[:10])
                      + ("; …" if len(skipped) > 10 else ""), CandidateSkippedWarning, stacklevel=2)
    return Proposals(proposals, skipped, ctx.updates)


def rank_key(p: "Proposal") -> tuple:
    """Proposals rank by the loss decrease the growth step will make, to first order: a step
    adds the new parts only (not δW*), so L(γ) ≈ L(0) − γ·first_order_gain (the neurons'
    Σ α_kᵀ M ω_k, a new edge's tr(W M)); ties are broken by Σλ². A proposal whose gain is
    not above float64 round-off (at most ROUND_OFF times its targets' energy Σ g_v, negative
    included) ranks after every real one; gains equal to 12 digits keep the candidates' order.
    The strategy "amplitude" then measures the real loss drop of the first ones."""
    return (p.round_off, -_digits(p.first_order_gain), -_digits(p.bottleneck_decrease))


def _digits(x: float) -> float:
    """``x`` to 12 significant digits: values equal up to round-off tie, and ties keep the
    candidates' order (the sort is stable) however the sums were grouped."""
    return float(f"{x:.12g}")


def _target_groups(graph: "Graph", candidates: list[Candidate]) -> dict[tuple, list[str]]:
    """Every source set (with its bias flag) of the vector-node candidates, with all its targets."""
    groups: dict[tuple, list[str]] = {}
    for c in candidates:
        if c.kind == "expand_node" and graph.node(c.node).spatial:
            continue
        bias = _has_bias(graph, c.node) if c.kind == "expand_node" else True
        groups.setdefault((tuple(source_keys(graph, c)), bias), []).extend(c.targets)
    return groups


def _same_as_new_node(graph: "Graph", cand: Candidate, new_node_activation: str) -> tuple | None:
    """``((u,), (v,))`` when widening ``cand.node`` is the same change as a new node u → n → v."""
    if len(cand.in_edges) != 1 or len(cand.out_edges) != 1:
        return None
    spec = graph.node(cand.node)
    edges = [graph.edge(cand.in_edges[0]), graph.edge(cand.out_edges[0])]
    if (spec.shape or spec.norm is not None or spec.dropout or spec.activation != new_node_activation
            or spec.activation_params
            or any(e.block.kind != "linear" for e in edges) or not edges[0].block.bias):
        return None
    return cand.sources, cand.targets


class _Context:
    """What candidates share within one call: δW* per target, S_U and its whitening per source
    set, and (``shared``) the blocks M_{U,T}, N_{U,T} and their whitened forms per source set U,
    for all of U's targets T at once (:meth:`share`)."""

    def __init__(self, graph: "Graph", stats: Statistics, rel_tol: float, shared: bool) -> None:
        self.graph, self.stats, self.rel_tol, self.shared = graph, stats, rel_tol, shared
        self.memo: dict = {}
        self.updates: dict[str, NodeUpdate] = {}
        self.groups: dict[tuple, tuple] = {}  # (U, bias) → (target columns, (M, N, F M, F N))
        self.node_info: dict[str, tuple[list[str], bool]] = {}

    def update(self, v: str) -> NodeUpdate:
        if v not in self.updates:
            self.updates[v] = node_update(self.graph, self.stats, v, self.rel_tol, self.memo)
        return self.updates[v]

    def info(self, v: str) -> tuple[list[str], bool]:
        """(the views v's linear in-edges read, whether one of them has a bias)."""
        if v not in self.node_info:
            self.node_info[v] = (update_sources(self.graph, v), _has_bias(self.graph, v))
        return self.node_info[v]

    def block(self, sources: list[str], bias: bool, v: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(M_{U,v}, N_{U,v} = M_{U,v} − P_{U,in(v)} δW_v*ᵀ)."""
        key = (tuple(sources), bias)
        if self.shared and key in self.groups:
            return self._columns(key, v, 0)
        stats = self.stats
        M = stats.grad_moment(sources, [v], bias)
        upd = self.update(v)
        if upd.solution.delta.shape[1] == 0:
            return M, M
        in_sources, v_bias = self.info(v)
        P = stats.moment(sources, in_sources, bias, v_bias)
        return M, M - P @ upd.solution.delta.T.to(P.dtype)

    def whitened(self, sources: list[str], bias: bool, v: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(F_U M_{U,v}, F_U N_{U,v}) from the whitened blocks of U's group."""
        return self._columns((tuple(sources), bias), v, 2)

    def share(self, groups: dict[tuple, list[str]]) -> None:
        """Solve the blocks of every source set U (key ``(U, bias)``) for all its targets T_U at
        once: M_{U,T} in one read, N_{U,T} = M_{U,T} − P_{U,W} Δ_{W,T} with W the union of the
        targets' in-views, then F_U [M N] in one triangular solve. Δ (Σd_w + 1 × Σd_v, built
        once for every target of the call) holds each δW_v*ᵀ in its in-views' rows, its
        constant part in the last row."""
        targets = list(dict.fromkeys(v for ts in groups.values() for v in ts))
        try:
            self._build_delta(targets)
        except DaggrowError:
            return  # every candidate is then solved on its own (and skipped if it fails)
        for key, ts in groups.items():
            try:
                self.groups[key] = self._group(key, list(dict.fromkeys(ts)))
            except DaggrowError:
                pass  # the candidates of this source set fail one by one (and are skipped)

    def _build_delta(self, targets: list[str]) -> None:
        widths = self.stats.widths
        self.rows, self.cols = {}, {}
        rows = cols = 0
        for v in targets:
            self.cols[v] = (cols, cols + widths[v])
            cols += widths[v]
            if self.update(v).solution.delta.shape[1]:
                for w in self.info(v)[0]:
                    if w not in self.rows:
                        self.rows[w] = (rows, rows + widths[w])
                        rows += widths[w]
        delta = torch.zeros(rows + 1, cols, dtype=torch.float64, device=self.stats._device())
        for v in targets:
            d = self.update(v).solution.delta.to(delta)
            if d.shape[1] == 0:
                continue
            lo, hi = self.cols[v]
            in_sources, v_bias = self.info(v)
            at = 0
            for w in in_sources:
                r0, r1 = self.rows[w]
                delta[r0:r1, lo:hi] += d[:, at: at + r1 - r0].T
                at += r1 - r0
            if v_bias:
                delta[-1, lo:hi] = d[:, -1]
        self.delta = delta

    def _group(self, key: tuple, targets: list[str]):
        sources, bias = list(key[0]), key[1]
        stats = self.stats
        M = stats.grad_moment(sources, targets, bias)
        columns, offset = {}, 0
        for v in targets:
            columns[v] = (offset, offset + stats.widths[v])
            offset += stats.widths[v]
        W = list(dict.fromkeys(w for v in targets if self.update(v).solution.delta.shape[1] for w in self.info(v)[0]))
        N = M
        if W or any(self.info(v)[1] for v in targets):
            P = stats.moment(sources, W, bias, True)
            last = self.delta.shape[0] - 1
            rows = torch.tensor([r for w in W for r in range(*self.rows[w])] + [last], device=M.device)
            cols = torch.tensor([c for v in targets for c in range(*self.cols[v])], device=M.device)
            N = M - P @ self.delta.index_select(0, rows).index_select(1, cols)
        _, white = moment_and_decomposition(self.graph, stats, sources, bias, self.rel_tol, self.memo)
        both = white.whiten(torch.cat([M, N], 1))
        return columns, (M, N, both[:, : M.shape[1]], both[:, M.shape[1]:])

    def _columns(self, key: tuple, v: str, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        columns, blocks = self.groups[key]
        lo, hi = columns[v]
        return blocks[first][:, lo:hi], blocks[first + 1][:, lo:hi]


@dataclass
class _Problem:
    """One candidate's solver inputs and what its proposal needs besides the solution."""

    cand: Candidate
    S: torch.Tensor
    white: Decomposition
    M: torch.Tensor
    N: torch.Tensor
    bias: bool
    updates: dict[str, NodeUpdate]
    min_decrease: float
    max_neurons: int = 0
    activation: str = "identity"
    params: dict[str, float] = field(default_factory=dict)
    existing: torch.Tensor | None = None
    name: str | None = None
    FM: torch.Tensor | None = None  # F M and F N when the blocks were whitened per (U, v)
    FN: torch.Tensor | None = None
    sources: list[str] = field(default_factory=list)  # the views the fan-in reads (for Statistics.lift)


def _assemble(ctx: _Context, cand: Candidate, max_neurons: int, new_node_activation: str,
              name: str) -> _Problem | None:
    """S, its whitening, M and N of one candidate (docs/math.md §5), from the shared blocks."""
    graph, stats = ctx.graph, ctx.stats
    sources, targets = source_keys(graph, cand), list(cand.targets)
    bias = _has_bias(graph, cand.node) if cand.kind == "expand_node" else True
    FM = FN = None
    if cand.kind == "expand_node" and graph.node(cand.node).spatial:
        S, white, M, N = _channel_problem(graph, stats, cand, ctx.update, bias, ctx.rel_tol, ctx.memo)
    else:
        S, white = moment_and_decomposition(graph, stats, sources, bias, ctx.rel_tol, ctx.memo)
        blocks = [ctx.block(sources, bias, v) for v in targets]
        M, N = torch.cat([b[0] for b in blocks], 1), torch.cat([b[1] for b in blocks], 1)
        if (tuple(sources), bias) in ctx.groups and cand.kind != "new_edge":
            white_blocks = [ctx.whitened(sources, bias, v) for v in targets]
            FM, FN = torch.cat([b[0] for b in white_blocks], 1), torch.cat([b[1] for b in white_blocks], 1)
    updates = {v: ctx.update(v) for v in dict.fromkeys(targets)}
    # below this bottleneck decrease a direction is float64 round-off, not a real gain
    min_decrease = ROUND_OFF * sum(stats.grad_energy(v) for v in targets)
    prob = _Problem(cand, S, white, M, N, bias, updates, min_decrease, FM=FM, FN=FN, sources=sources)
    if cand.kind == "new_edge":
        return prob
    if cand.kind == "expand_node":
        spec = graph.node(cand.node)
        prob.activation, prob.params = spec.activation, dict(spec.activation_params)
        if cand.activation is not None:  # as the readers see it (through a concatenation's activation)
            prob.activation, prob.params = cand.activation, dict(cand.activation_params)
        prob.existing = _stacked_fan_in(graph, cand, bias)
    else:
        prob.activation, prob.name = new_node_activation, name
    if cand.room is not None:  # max_width: whole directions (a ReLU pair is two neurons) that fit
        max_neurons = min(max_neurons, cand.room // len(activation_layout(prob.activation, prob.params).signs))
        if max_neurons < 1:
            return None
    prob.max_neurons = max_neurons
    return prob


def _solve_one(prob: _Problem, init, rel_threshold, rel_tol, generator, unprojected_fallback):
    """The reference path: one candidate, one solver call (and the unprojected fallback)."""
    if prob.cand.kind == "new_edge":
        return solve_new_edge(prob.S, prob.N, prob.M, rel_tol=rel_tol, decomposition=prob.white), True
    sol = solve_neurons(init, S=prob.S, N=prob.N, M=prob.M, max_neurons=prob.max_neurons,
                        existing_fan_in=prob.existing, rel_threshold=rel_threshold, rel_tol=rel_tol,
                        min_decrease=prob.min_decrease, generator=generator, decomposition=prob.white)
    if sol.fan_in.shape[1] == 0 and init == "tiny" and unprojected_fallback:
        # V⊥ is orthogonal to B_U when the targets already read U linearly (e.g. a skip u→v):
        # the projected problem is empty, so solve the unprojected one (N = M, docs/math.md §5 with
        # V instead of V⊥). Its neurons act, to first order, like a low-rank step on the
        # existing linear map, and training can then use their non-linearity.
        sol = solve_neurons(init, S=prob.S, N=prob.M, M=prob.M, max_neurons=prob.max_neurons,
                            rel_threshold=rel_threshold, rel_tol=rel_tol, min_decrease=prob.min_decrease,
                            decomposition=prob.white)
        return sol, False
    return sol, True


def _solve_batched(problems: list[_Problem], rel_threshold: float, unprojected_fallback: bool,
                   skipped: list) -> list:
    """TINY for every problem, the SVDs of one shape in one call (new edges solved one by one)."""
    out: list = [None] * len(problems)
    neurons = [i for i, p in enumerate(problems) if p.cand.kind != "new_edge"]
    for i, p in enumerate(problems):
        if p.cand.kind == "new_edge":
            try:
                out[i] = (solve_new_edge(p.S, p.N, p.M, decomposition=p.white), True)
            except DaggrowError as err:
                skipped.append((p.cand, f"{type(err).__name__}: {err}"))

    def run(index: list[int], unprojected: bool) -> None:
        items = [WhitenedProblem(problems[i].white, problems[i].FM if unprojected else _fn(problems[i]),
                                 _fm(problems[i]), problems[i].max_neurons, problems[i].min_decrease)
                 for i in index]
        for i, sol in zip(index, tiny_neurons_batched(items, rel_threshold=rel_threshold)):
            if isinstance(sol, DaggrowError):
                skipped.append((problems[i].cand, f"{type(sol).__name__}: {sol}"))
            else:
                out[i] = (sol, not unprojected)

    run(neurons, False)
    if unprojected_fallback:
        empty = [i for i in neurons if out[i] is not None and out[i][0].fan_in.shape[1] == 0]
        run(empty, True)
    return out


def _fm(p: _Problem) -> torch.Tensor:
    if p.FM is None:
        p.FM = p.white.whiten(p.M)
    return p.FM


def _fn(p: _Problem) -> torch.Tensor:
    if p.FN is None:
        p.FN = p.white.whiten(p.N)
    return p.FN


def _proposal(prob: _Problem, solved, init: str, stats: Statistics) -> "Proposal | None":
    """The proposal of a solved problem; fan-ins solved on pooled reads are lifted to the full
    views (``Statistics.lift``: Aᵀα for a read A·flatten(h), docs/math.md)."""
    if solved is None:
        return None
    sol, projected = solved
    cand = prob.cand
    if cand.kind == "new_edge":
        if sol.gain <= prob.min_decrease:
            return None
        return Proposal(cand, "least_squares", [], float(sol.first_order_gain), float(sol.gain),
                        fan_in=prob.S.new_zeros(prob.S.shape[0], 0), fan_out=prob.S.new_zeros(prob.N.shape[1], 0),
                        bias=True, weight=stats.lift(prob.sources, sol.weight.T).T, updates=prob.updates,
                        round_off=float(sol.first_order_gain) <= prob.min_decrease)
    if sol.fan_in.shape[1] == 0:
        return None
    return Proposal(cand, init, [float(x) for x in sol.eigenvalues], float(sol.first_order_gain),
                    float(sol.bottleneck_decrease), fan_in=stats.lift(prob.sources, sol.fan_in), fan_out=sol.fan_out,
                    bias=prob.bias,
                    activation=prob.activation, activation_params=prob.params, node_name=prob.name,
                    updates=prob.updates, projected=projected,
                    round_off=float(sol.first_order_gain) <= prob.min_decrease)


def _channel_problem(graph: "Graph", stats: Statistics, cand: Candidate, update, bias: bool, rel_tol: float,
                     memo: dict) -> tuple[torch.Tensor, Decomposition, torch.Tensor, torch.Tensor]:
    """(S, decomposition, M, N) for new channels in an image/sequence node (docs/math.md §10).

    Each out-edge's offsets o are extra observations of S (its border-aware weighted covariance);
    columns (c, o) of M and N pair target channel c with offset o, and
    N[:, (c, o)] = M[:, (c, o)] − Σ_j P[j, :, o] δW*[c, j] projects out the target's best update.
    The out-edges share one S (``expandable`` requires one geometry), so one SVD serves them all.
    """
    blocks_m, blocks_n, S = [], [], None
    keep = slice(None) if bias else slice(0, -1)
    for e in cand.out_edges:
        fk = full_kernel(graph, cand.node, e)
        S_e, M_e, P_e = stats.full_kernel_moments(fk.key)
        S = S_e if S is None else S
        M_e = M_e.flatten(2)                                                 # C_v × D × offsets
        upd = update(fk.target)
        delta = upd.solution.delta.to(M_e.dtype)                             # C_v × (D_T [+1])
        # P's rows: the target's in-views, then its constant; δW* has a bias column only if the target does
        P_e = P_e.flatten(2)[: delta.shape[1]]
        N_e = M_e - torch.einsum("jdo,cj->cdo", P_e, delta) if delta.shape[1] else M_e
        blocks_m.append(M_e[:, keep].permute(1, 0, 2).reshape(M_e[:, keep].shape[1], -1))
        blocks_n.append(N_e[:, keep].permute(1, 0, 2).reshape(N_e[:, keep].shape[1], -1))
    S = S[keep, keep]
    key = ("channels", cand.node, bias, rel_tol)
    if key not in memo:
        memo[key] = whitening(S, rel_tol)
    return S, memo[key], torch.cat(blocks_m, 1), torch.cat(blocks_n, 1)


def _stacked_fan_in(graph: "Graph", cand: Candidate, bias: bool) -> torch.Tensor:
    """The existing neurons' fan-in as (Σd_U [+1]) × d_w, rows aligned with the candidate's B_U."""
    blocks, bias_col = [], None
    for e in cand.in_edges:
        m = graph.module(e)
        blocks.append(m.weight.detach().double().flatten(1).T)
        if m.bias is not None:
            bias_col = m.bias.detach().double()[None, :] if bias_col is None else bias_col + m.bias.detach().double()
    if bias:
        blocks.append(bias_col)
    return torch.cat(blocks, 0).cpu()


def _fresh_node_name(graph: "Graph") -> str:
    """``n<step>``: the growth step that creates the node (the event says between which nodes)."""
    name, i = f"n{graph.step + 1}", 2
    while name in graph.nodes:
        name, i = f"n{graph.step + 1}_{i}", i + 1
    return name


def apply(graph: "Graph", proposal: Proposal, amplitude: float = 1.0, *,
          update_amplitude: float = 0.0, step: int | None = None) -> "Graph":
    """A new graph with the proposal's neurons (or edge) at amplitude γ (pure; ``graph`` unchanged).

    Each neuron's fan-in and fan-out are scaled by √(γ/c) (c from the activation's layout,
    docs/math.md §8), so the new parts add γ·Ω Aᵀ b to the targets at first order; ``amplitude=0`` keeps the
    function. ``update_amplitude`` η also applies η·δW* at the targets.
    """
    if amplitude < 0:
        raise GraphError(f"amplitude must be ≥ 0, got {amplitude}")
    from . import rewrite

    step = graph.step + 1 if step is None else step
    cand = proposal.candidate
    if cand.kind == "new_edge":
        w = proposal.weight * amplitude
        d_u = w.shape[1] - 1  # the source's view (its features, or a conv's patch), then the bias column
        new = rewrite.new_edge(graph, cand.sources[0], cand.targets[0], w[:, :d_u], w[:, d_u], step=step,
                               block=cand.block)
    else:
        layout = activation_layout(proposal.activation, proposal.activation_params)
        fan_in, fan_out = layout.neurons(proposal.fan_in, proposal.fan_out, amplitude)
        fan_in = fan_in.T                                                                  # K' × D_U
        if cand.kind == "expand_node":
            new = rewrite.add_neurons(graph, cand.node, *_split_expansion(graph, cand, fan_in, fan_out,
                                                                          proposal.bias), step=step)
        else:
            d_u = fan_in.shape[1] - 1  # the source's view, then the bias column
            new = rewrite.new_node(graph, cand.sources[0], cand.targets[0], proposal.node_name,
                                   fan_in[:, :d_u], fan_out, fan_in[:, d_u], activation=proposal.activation,
                                   activation_params=proposal.activation_params, step=step, block=cand.block)
    if update_amplitude:
        deltas = {}
        for upd in proposal.updates.values():
            for e, (dw, db) in upd.edges.items():
                missing = new.module(e).weight.shape[1] - dw.shape[1]  # columns of neurons just added
                dw = torch.cat([dw, dw.new_zeros(dw.shape[0], missing)], 1) if missing else dw
                deltas[e] = (update_amplitude * dw, None if db is None else update_amplitude * db)
        new = rewrite.update_weights(new, deltas, step=step, record=False)  # one step, one record
    return new


def _split_expansion(graph: "Graph", cand: Candidate, fan_in: torch.Tensor, fan_out: torch.Tensor, bias: bool):
    """Cut the stacked fan-in (K' × D) and fan-out (Σ targets × K') into per-edge tensors shaped
    like the new rows of each in-edge weight and the new channel columns of each out-edge."""
    fan_in_by_edge, bias_by_edge, offset = {}, {}, 0
    k = fan_in.shape[0]
    for e in cand.in_edges:
        weight = graph.module(e).weight
        d = weight[0].numel()
        fan_in_by_edge[e] = fan_in[:, offset: offset + d].reshape(k, *weight.shape[1:])
        offset += d
    if bias:
        first = next(e for e in cand.in_edges if graph.edge(e).block.bias)
        bias_by_edge[first] = fan_in[:, offset]
    fan_out_by_edge, offset = {}, 0
    for e in cand.out_edges:
        weight, width = graph.module(e).weight, graph.node(graph.edge(e).source).width  # cand.node or its concatenation
        rows, rest = weight.shape[0], weight[0].numel() // width  # rest: kernel offsets or flattened positions
        block = fan_out[offset: offset + rows * rest].reshape(rows, rest, k).transpose(1, 2)
        fan_out_by_edge[e] = block.reshape(rows, k, *weight.shape[2:]) if weight.ndim > 2 else block.reshape(rows, -1)
        offset += rows * rest
    return fan_in_by_edge, fan_out_by_edge, bias_by_edge
