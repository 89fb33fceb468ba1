"""From statistics to proposals: assemble the moment blocks of each candidate, call the solver.

For a candidate with fan-in sources U and targets T (MATH §5):

    S = S_U,   M = M_{U,T},   N = M_{U,T} − [P_{U,in(v)} δW_v*ᵀ]_{v∈T}

where δW_v* is the best update at each target (MATH §4). The solver turns (S, N, M) into
neurons; this module only reads blocks and splits results back onto edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Literal

import torch

from ..errors import GraphError
from ..graph.spec import is_growable
from ..solve import BestUpdate, Decomposition, activation_layout, best_update, solve_neurons, whitening
from ..solve import new_edge as solve_new_edge
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
        """L(η) ≈ L(0) − η·gain when η·δW* is applied (MATH §4)."""
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
    """δW* at ``node``, jointly over its linear in-edges (MATH §4)."""
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


def bottleneck(graph: "Graph", stats: Statistics, rel_tol: float = 1e-10) -> dict[str, float]:
    """Ψ_v = g_v − tr(M_inᵀ S_in⁺ M_in) for every node whose desired move was collected."""
    memo: dict = {}
    return {v: float(node_update(graph, stats, v, rel_tol, memo).solution.bottleneck)
            for v in graph.topological_order() if v in stats.v}


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
) -> list["Proposal"]:
    """Solve every candidate; returns proposals, best first (by first-order gain, then Σλ²).

    With ``unprojected_fallback`` (default), a TINY candidate whose projected problem is empty
    (its targets already read its sources through linear edges, so V⊥ ⟂ B_U) is solved on V
    instead of V⊥; such proposals have ``projected=False`` and their Σλ² is the decrease of
    (1/n)‖V − ΩAᵀB‖², not of the bottleneck.

    Candidates whose statistics were not collected are an error (collect with a plan that
    includes them); candidates with nothing to gain (K = 0) are dropped.

    Widening a node w that reads only u and writes only v (one linear edge each, w's activation
    = ``new_node_activation``, a bias, no norm) is the same function change as a new node
    u → n → v: the same statistics, the same neurons, the same loss at every amplitude. When
    both are candidates only the new node is proposed, because it keeps more room to grow
    (it can later be widened on its own and opens new node pairs) — otherwise growth from a
    chain x → h → y could never leave it.
    """
    candidates = list(candidates) if candidates is not None else enumerate_candidates(graph, kinds)
    updates: dict[str, NodeUpdate] = {}

    memo: dict = {}

    def update(v: str) -> NodeUpdate:
        if v not in updates:
            updates[v] = node_update(graph, stats, v, rel_tol, memo)
        return updates[v]

    proposals = []
    pairs = {(c.sources, c.targets) for c in candidates if c.kind == "new_node"}
    for cand in candidates:
        if cand.kind == "expand_node" and _same_as_new_node(graph, cand, new_node_activation) in pairs:
            continue  # the same change as a new node between its source and target: see the docstring
        p = _propose_one(graph, stats, cand, update, max_neurons, init, new_node_activation,
                         rel_threshold, rel_tol, generator, memo, unprojected_fallback)
        if p is not None:
            proposals.append(p)
    proposals.sort(key=lambda p: (-p.first_order_gain, -p.bottleneck_decrease))
    return proposals


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


def _propose_one(graph, stats, cand: Candidate, update, max_neurons, init, new_node_activation,
                 rel_threshold, rel_tol, generator, memo, unprojected_fallback) -> Proposal | None:
    sources, targets = source_keys(graph, cand), list(cand.targets)
    bias = _has_bias(graph, cand.node) if cand.kind == "expand_node" else True
    if cand.kind == "expand_node" and graph.node(cand.node).spatial:
        S, decomposition, M, N = _channel_problem(graph, stats, cand, update, bias, rel_tol, memo)
    else:
        S, decomposition = moment_and_decomposition(graph, stats, sources, bias, rel_tol, memo)
        M = stats.grad_moment(sources, targets, bias)
        blocks = []
        for v in targets:
            upd = update(v)
            in_sources = update_sources(graph, v)
            if upd.solution.delta.shape[1] == 0:
                blocks.append(stats.grad_moment(sources, [v], bias))
                continue
            P = stats.moment(sources, in_sources, bias, _has_bias(graph, v))
            blocks.append(stats.grad_moment(sources, [v], bias) - P @ upd.solution.delta.T.to(P.dtype))
        N = torch.cat(blocks, 1)
    target_updates = {v: update(v) for v in dict.fromkeys(targets)}
    # below this bottleneck decrease a direction is float64 round-off, not a real gain
    min_decrease = ROUND_OFF * sum(stats.grad_energy(v) for v in targets)
    if cand.kind == "new_edge":
        sol = solve_new_edge(S, N, M, rel_tol=rel_tol, decomposition=decomposition)
        if sol.gain <= min_decrease:
            return None
        return Proposal(cand, "least_squares", [], float(sol.first_order_gain), float(sol.gain),
                        fan_in=S.new_zeros(S.shape[0], 0), fan_out=S.new_zeros(N.shape[1], 0), bias=True,
                        weight=sol.weight, updates=target_updates)
    if cand.kind == "expand_node":
        spec = graph.node(cand.node)
        activation, params = spec.activation, dict(spec.activation_params)
        if cand.activation is not None:  # as the readers see it (through a concatenation's activation)
            activation, params = cand.activation, dict(cand.activation_params)
        existing = _stacked_fan_in(graph, cand, bias)
        name = None
    else:
        activation, params, existing = new_node_activation, {}, None
        name = _fresh_node_name(graph)
    if cand.room is not None:  # max_width: whole directions (a ReLU pair is two neurons) that fit
        max_neurons = min(max_neurons, cand.room // len(activation_layout(activation, params).signs))
        if max_neurons < 1:
            return None
    sol = solve_neurons(init, S=S, N=N, M=M, max_neurons=max_neurons, existing_fan_in=existing,
                        rel_threshold=rel_threshold, rel_tol=rel_tol, min_decrease=min_decrease,
                        generator=generator, decomposition=decomposition)
    projected = True
    if sol.fan_in.shape[1] == 0 and init == "tiny" and unprojected_fallback:
        # V⊥ is orthogonal to B_U when the targets already read U linearly (e.g. a skip u→v):
        # the projected problem is empty, so solve the unprojected one (N = M, MATH §5 with
        # V instead of V⊥). Its neurons act, to first order, like a low-rank step on the
        # existing linear map, and training can then use their non-linearity.
        sol = solve_neurons(init, S=S, N=M, M=M, max_neurons=max_neurons, rel_threshold=rel_threshold,
                            rel_tol=rel_tol, min_decrease=min_decrease, decomposition=decomposition)
        projected = False
    if sol.fan_in.shape[1] == 0:
        return None
    return Proposal(cand, init, [float(x) for x in sol.eigenvalues], float(sol.first_order_gain),
                    float(sol.bottleneck_decrease), fan_in=sol.fan_in, fan_out=sol.fan_out, bias=bias,
                    activation=activation, activation_params=params, node_name=name, updates=target_updates,
                    projected=projected)


def _channel_problem(graph: "Graph", stats: Statistics, cand: Candidate, update, bias: bool, rel_tol: float,
                     memo: dict) -> tuple[torch.Tensor, Decomposition, torch.Tensor, torch.Tensor]:
    """(S, decomposition, M, N) for new channels in an image/sequence node (MATH §7).

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

    Each neuron's fan-in and fan-out are scaled by √(γ/c) (c from the activation's layout, MATH
    §5), so the new parts add γ·Ω Aᵀ b to the targets at first order; ``amplitude=0`` keeps the
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
