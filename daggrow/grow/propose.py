"""From statistics to proposals: assemble the moment blocks of each candidate, call the solver.

For a candidate with fan-in sources U and targets T (docs/math.md §5):

    S = S_U,   M = M_{U,T},   N = M_{U,T} − [P_{U,in(v)} δW_v*ᵀ]_{v∈T}

where δW_v* is the best update at each target (docs/math.md §4). The solver turns (S, N, M) into
neurons (many candidates at once: :mod:`daggrow.grow.problems`); this module ranks the
proposals and places them (:func:`apply`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Literal

import warnings

import torch

from ..errors import CandidateSkippedWarning, DaggrowError, GraphError
from ..graph.spec import is_growable
from ..solve import BestUpdate, activation_layout
from ..stats import Statistics, update_sources
from ..stats.updates import best_update_at
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


def node_update(graph: "Graph", stats: Statistics, node: str, rel_tol: float = 1e-10,
                memo: dict | None = None) -> NodeUpdate:
    """δW* at ``node``, jointly over its linear in-edges (docs/math.md §4), split per in-edge."""
    sol = best_update_at(graph, stats, node, rel_tol, memo)
    split: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    offset, bias_given = 0, False
    for e, key in zip([e for e in graph.in_edges(node) if is_growable(e.block)], update_sources(graph, node)):
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
    max_directions: int = 4,
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
    max_neurons: int | None = None,
) -> Proposals:
    """Solve every candidate; returns proposals, best first (see :func:`rank_key`).

    ``max_directions``: K, the most directions per proposal: a direction is one neuron, or a
    pair of neurons under ReLU-like activations (docs/math.md §8); ``max_neurons=`` is its older
    name and means the same.

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
    max_neurons = max_directions if max_neurons is None else max_neurons  # max_neurons=: the older name
    from .problems import SharedBlocks, assemble, proposal_of, solve_batched, solve_one, target_groups

    candidates = list(candidates) if candidates is not None else enumerate_candidates(graph, kinds)
    candidates = [c for c in candidates if c.where not in stats.left_out]  # left out by the memory planner
    ctx = SharedBlocks(graph, stats, rel_tol, shared=grouped)
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
        ctx.share(target_groups(graph, candidates))
    for cand in candidates:
        try:
            prob = assemble(ctx, cand, max_neurons, new_node_activation, name)
        except DaggrowError as err:
            skipped.append((cand, f"{type(err).__name__}: {err}"))
            continue
        if prob is not None:
            problems.append(prob)
    batched = grouped and init == "tiny"
    if batched:
        solutions = solve_batched(problems, rel_threshold, unprojected_fallback, skipped)
    else:
        solutions = []
        for prob in problems:
            try:
                solutions.append(solve_one(prob, init, rel_threshold, rel_tol, generator, unprojected_fallback))
            except DaggrowError as err:
                skipped.append((prob.cand, f"{type(err).__name__}: {err}"))
                solutions.append(None)
    proposals = [p for prob, sol in zip(problems, solutions) if (p := proposal_of(prob, sol, init, stats)) is not None]
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
