"""Solver inputs of many candidates at once, for :func:`~daggrow.grow.propose.propose`.

A candidate with fan-in sources U and targets T needs (docs/math.md §5)

    S = S_U,   M = M_{U,T},   N = M_{U,T} − [P_{U,in(v)} δW_v*ᵀ]_{v∈T}

and, for TINY, the whitened F_U N (F_U M only for the unprojected fallback). Candidates share
most of it: δW* per target, S_U and its whitening per source set, and (grouped) M_{U,T}, N_{U,T}
and F_U N per source set for all of U's targets at once; a candidate takes column slices. :func:`solve_batched` then
solves every TINY problem with the SVDs of one shape in one call. This module reads blocks and
calls the solver; it does no linear algebra of its own beyond the products that form N.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from ..errors import DaggrowError
from ..solve import Decomposition, activation_layout, solve_neurons, whitening
from ..solve import new_edge as solve_new_edge
from ..solve.batched import WhitenedProblem, tiny_neurons_batched
from ..stats import Statistics, update_sources
from ..errors import StatisticsError
from ..stats.plan import full_kernel
from ..stats.updates import has_bias, moment_and_decomposition
from .candidates import Candidate, source_keys
from .propose import ROUND_OFF, NodeUpdate, Proposal, node_update

if TYPE_CHECKING:
    from ..graph import Graph


def target_groups(graph: "Graph", candidates: list[Candidate]) -> dict[tuple, list[str]]:
    """Every source set (with its bias flag) of the vector-node candidates, with all its targets."""
    groups: dict[tuple, list[str]] = {}
    for c in candidates:
        if c.kind == "expand_node" and graph.node(c.node).spatial:
            continue
        bias = has_bias(graph, c.node) if c.kind == "expand_node" else True
        groups.setdefault((tuple(source_keys(graph, c)), bias), []).extend(c.targets)
    return groups


class SharedBlocks:
    """What candidates share within one call: δW* per target, S_U and its whitening per source
    set, and (``shared``) the blocks M_{U,T}, N_{U,T} and their whitened forms per source set U,
    for all of U's targets T at once (:meth:`share`)."""

    def __init__(self, graph: "Graph", stats: Statistics, rel_tol: float, shared: bool) -> None:
        self.graph, self.stats, self.rel_tol, self.shared = graph, stats, rel_tol, shared
        self.memo: dict = {}
        self.updates: dict[str, NodeUpdate] = {}
        self.groups: dict[tuple, tuple] = {}  # (U, bias) → (target columns, (M, N, F N))
        self.node_info: dict[str, tuple[list[str], bool]] = {}

    def update(self, v: str) -> NodeUpdate:
        if v not in self.updates:
            self.updates[v] = node_update(self.graph, self.stats, v, self.rel_tol, self.memo)
        return self.updates[v]

    def info(self, v: str) -> tuple[list[str], bool]:
        """(the views v's linear in-edges read, whether one of them has a bias)."""
        if v not in self.node_info:
            self.node_info[v] = (update_sources(self.graph, v), has_bias(self.graph, v))
        return self.node_info[v]

    def block(self, sources: list[str], bias: bool, v: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(M_{U,v}, N_{U,v} = M_{U,v} − P_{U,in(v)} δW_v*ᵀ), N summed directly for an image/sequence v."""
        key = (tuple(sources), bias)
        if self.shared and key in self.groups:
            return self._columns(key, v)
        stats = self.stats
        M = stats.grad_moment(sources, [v], bias)
        if self.summed_directly(sources, v):
            return M, self.residual(sources, [v], bias)
        upd = self.update(v)
        if upd.solution.delta.shape[1] == 0:
            return M, M
        in_sources, v_bias = self.info(v)
        P = stats.moment(sources, in_sources, bias, v_bias)
        return M, M - P @ upd.solution.delta.T.to(P.dtype)

    def summed_directly(self, sources: list[str], v: str) -> bool:
        """Whether the pass summed N_{U,v} itself (a conv into an image node, the plan's residual
        pairs) rather than the P_{U,in(v)} that N = M − P δW*ᵀ needs."""
        return bool(sources) and all((self.stats.key(u), v) in self.stats.hr for u in sources)

    def residual(self, sources: list[str], targets: list[str], bias: bool) -> torch.Tensor:
        """N_{U,T} of image/sequence targets, summed in the statistics' second pass against the
        moves after the best updates solved at the pass's rel_tol (another would need another pass)."""
        for v in targets:
            projected_with(self.stats, v, self.rel_tol)
            self.update(v)  # δW* at the target, for the proposal (the one N was projected with)
        return self.stats.residual_moment(sources, targets, bias)

    def whitened(self, sources: list[str], bias: bool, v: str) -> torch.Tensor:
        """F_U N_{U,v} from the whitened block of U's group."""
        columns, blocks = self.groups[(tuple(sources), bias)]
        lo, hi = columns[v]
        return blocks[2][:, lo:hi]

    def share(self, groups: dict[tuple, list[str]]) -> None:
        """Solve the blocks of every source set U (key ``(U, bias)``) for all its targets T_U at
        once: M_{U,T} in one read, N_{U,T} = M_{U,T} − P_{U,W} Δ_{W,T} with W the union of the
        targets' in-views, then F_U N in one triangular solve. Δ (Σd_w + 1 × Σd_v, built
        once for every target of the call) holds each δW_v*ᵀ in its in-views' rows, its
        constant part in the last row. F_U M is not formed: the gains are α_kᵀ M ω_k."""
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
        plain = [v for v in targets if not self.summed_directly(sources, v)]
        W = list(dict.fromkeys(w for v in plain if self.update(v).solution.delta.shape[1] for w in self.info(v)[0]))
        N = M
        if W or any(self.info(v)[1] for v in plain):
            P = stats.moment(sources, W, bias, True)
            last = self.delta.shape[0] - 1
            rows = torch.tensor([r for w in W for r in range(*self.rows[w])] + [last], device=M.device)
            cols = torch.tensor([c for v in plain for c in range(*self.cols[v])], device=M.device)
            correction = P @ self.delta.index_select(0, rows).index_select(1, cols)  # the plain targets' columns
            N, at = M.clone(), 0
            for v in plain:
                lo, hi = columns[v]
                N[:, lo:hi] -= correction[:, at: at + hi - lo]
                at += hi - lo
        for v in targets:  # convs into image nodes: N summed in the second pass
            if v not in plain:
                N = M.clone() if N is M else N
                lo, hi = columns[v]
                N[:, lo:hi] = self.residual(sources, [v], bias)
        _, white = moment_and_decomposition(self.graph, stats, sources, bias, self.rel_tol, self.memo)
        return columns, (M, N, white.whiten(N))

    def _columns(self, key: tuple, v: str) -> tuple[torch.Tensor, torch.Tensor]:
        columns, blocks = self.groups[key]
        lo, hi = columns[v]
        return blocks[0][:, lo:hi], blocks[1][:, lo:hi]


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
    existing: Callable[[], torch.Tensor] | None = None  # the existing fan-in (NORTH only), on demand
    name: str | None = None
    FN: torch.Tensor | None = None  # F N when the blocks were whitened per (U, v)
    FM: torch.Tensor | None = None  # F M, only for the unprojected fallback
    sources: list[str] = field(default_factory=list)  # the views the fan-in reads (for Statistics.lift)


def assemble(ctx: SharedBlocks, cand: Candidate, max_neurons: int, new_node_activation: str,
              name: str) -> _Problem | None:
    """S, its whitening, M and N of one candidate (docs/math.md §5), from the shared blocks."""
    graph, stats = ctx.graph, ctx.stats
    sources, targets = source_keys(graph, cand), list(cand.targets)
    bias = has_bias(graph, cand.node) if cand.kind == "expand_node" else True
    FN = None
    if cand.kind == "expand_node" and graph.node(cand.node).spatial:
        S, white, M, N = channel_problem(graph, stats, cand, ctx.update, bias, ctx.rel_tol, ctx.memo)
    else:
        S, white = moment_and_decomposition(graph, stats, sources, bias, ctx.rel_tol, ctx.memo)
        blocks = [ctx.block(sources, bias, v) for v in targets]
        M, N = _side_by_side([b[0] for b in blocks]), _side_by_side([b[1] for b in blocks])
        if (tuple(sources), bias) in ctx.groups and cand.kind != "new_edge":
            FN = _side_by_side([ctx.whitened(sources, bias, v) for v in targets])
    updates = {v: ctx.update(v) for v in dict.fromkeys(targets)}
    # below this bottleneck decrease a direction is float64 round-off, not a real gain
    min_decrease = ROUND_OFF * sum(stats.grad_energy(v) for v in targets)
    prob = _Problem(cand, S, white, M, N, bias, updates, min_decrease, FN=FN, sources=sources)
    if cand.kind == "new_edge":
        return prob
    if cand.kind == "expand_node":
        spec = graph.node(cand.node)
        prob.activation, prob.params = spec.activation, dict(spec.activation_params)
        if cand.activation is not None:  # as the readers see it (through a concatenation's activation)
            prob.activation, prob.params = cand.activation, dict(cand.activation_params)
        prob.existing = lambda: _stacked_fan_in(graph, cand, bias)  # a float64 copy of W: only NORTH reads it
    else:
        prob.activation, prob.name = new_node_activation, name
    if cand.room is not None:  # max_width: whole directions (a ReLU pair is two neurons) that fit
        max_neurons = min(max_neurons, cand.room // len(activation_layout(prob.activation, prob.params).signs))
        if max_neurons < 1:
            return None
    prob.max_neurons = max_neurons
    return prob


def _side_by_side(blocks: list[torch.Tensor]) -> torch.Tensor:
    """The blocks' columns side by side; a lone block as it is (a view of the group's block: no
    copy, nothing writes into it)."""
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)


def solve_one(prob: _Problem, init, rel_threshold, rel_tol, generator, unprojected_fallback):
    """The reference path: one candidate, one solver call (and the unprojected fallback)."""
    if prob.cand.kind == "new_edge":
        return solve_new_edge(prob.S, prob.N, prob.M, rel_tol=rel_tol, decomposition=prob.white), True
    sol = solve_neurons(init, S=prob.S, N=prob.N, M=prob.M, max_neurons=prob.max_neurons,
                        existing_fan_in=prob.existing() if init == "north" and prob.existing else None,
                        rel_threshold=rel_threshold, rel_tol=rel_tol,
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


def solve_batched(problems: list[_Problem], rel_threshold: float, unprojected_fallback: bool,
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
        items = [WhitenedProblem(problems[i].white, _fm(problems[i]) if unprojected else _fn(problems[i]),
                                 problems[i].M, problems[i].max_neurons, problems[i].min_decrease)
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


def proposal_of(prob: _Problem, solved, init: str, stats: Statistics) -> "Proposal | None":
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


def channel_problem(graph: "Graph", stats: Statistics, cand: Candidate, update, bias: bool, rel_tol: float,
                     memo: dict) -> tuple[torch.Tensor, Decomposition, torch.Tensor, torch.Tensor]:
    """(S, decomposition, M, N) for new channels in an image/sequence node (docs/math.md §10).

    Each out-edge's offsets o are extra observations of S (its border-aware weighted covariance);
    columns (c, o) of M and N pair target channel c with offset o. The pass summed N against
    the target's move after its best update, v − δW* b_in, with the δW* that ``update`` gives
    at the pass's ``REL_TOL``; another ``rel_tol`` would need another pass.
    The out-edges share one S (``expandable`` requires one geometry), so one SVD serves them all.
    """
    blocks_m, blocks_n, S = [], [], None
    keep = slice(None) if bias else slice(0, -1)
    for e in cand.out_edges:
        fk = full_kernel(graph, cand.node, e)
        S_e, M_e, N_e = stats.full_kernel_moments(fk.key)
        projected_with(stats, fk.target, rel_tol)
        update(fk.target)  # δW* at the target, for the proposal (the one N was projected with)
        S = S_e if S is None else S
        M_e, N_e = M_e.flatten(2), N_e.flatten(2)                            # C_v × D × offsets
        blocks_m.append(M_e[:, keep].permute(1, 0, 2).reshape(M_e[:, keep].shape[1], -1))
        blocks_n.append(N_e[:, keep].permute(1, 0, 2).reshape(N_e[:, keep].shape[1], -1))
    S = S[keep, keep]
    key = ("channels", cand.node, bias, rel_tol)
    if key not in memo:
        memo[key] = whitening(S, rel_tol)
    return S, memo[key], torch.cat(blocks_m, 1), torch.cat(blocks_n, 1)


def projected_with(stats: Statistics, v: str, rel_tol: float) -> None:
    """Sums projected with the best update at ``v`` (second pass) hold its δW* at the pass's
    rel_tol: a :class:`StatisticsError` unless that is ``rel_tol``."""
    if (v, rel_tol) not in stats.updates:
        solved = sorted(tol for node, tol in stats.updates if node == v)
        raise StatisticsError(f"the sums into {v!r} were projected with its best update solved at rel_tol={solved}; "
                              "propose with that rel_tol")


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
