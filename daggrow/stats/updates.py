"""The best update δW* at a node, read off collected statistics (docs/math.md §4).

    δW_v* = M_vᵀ S_v⁺,   S_v = (1/n) B_in(v) B_in(v)ᵀ,   M_v = (1/n) B_in(v) V_vᵀ

with B_in(v) the stacked views of v's linear in-edges (a constant row last when one of them has
a bias). Both :func:`daggrow.propose` and the statistics pass need it: the new-channel sums of
an image node are projected with the δW* of their target (:mod:`daggrow.stats.channels`), so the
pass solves it between its two data passes. Each is solved once per :class:`Statistics`: the
answers are kept in ``stats.updates`` (pure functions of sums that no longer change).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch.nn import functional as F

from ..graph.spec import is_growable
from ..solve import BestUpdate, Decomposition, best_update, whitening
from .plan import update_sources
from .statistics import Statistics
from .views import View

if TYPE_CHECKING:
    from ..graph import Graph

REL_TOL = 1e-10  # eigenvalues of S below REL_TOL·λ_max count as zero (the solver's default)


def has_bias(graph: "Graph", node: str) -> bool:
    """Whether one of ``node``'s linear in-edges has a bias (B_in(v) then has a constant row)."""
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


def best_update_at(graph: "Graph", stats: Statistics, node: str, rel_tol: float = REL_TOL,
                   memo: dict | None = None) -> BestUpdate:
    """δW* at ``node``, jointly over its linear in-edges; columns aligned with the rows of
    B_in(v) (:func:`update_sources`, then the constant when :func:`has_bias`)."""
    key = (node, rel_tol)
    if key in stats.updates:
        return stats.updates[key]
    sources, bias = update_sources(graph, node), has_bias(graph, node)
    g = stats.grad_energy(node)
    if not sources and not bias:
        empty = torch.zeros(graph.node(node).width, 0, dtype=torch.float64)
        sol = best_update(empty.new_zeros(0, 0), empty.T, g, rel_tol=rel_tol)
    else:
        S, decomposition = moment_and_decomposition(graph, stats, sources, bias, rel_tol, memo)
        M = stats.grad_moment(sources, [node], bias)
        sol = best_update(S, M, g, rel_tol=rel_tol, decomposition=decomposition)
    stats.updates[key] = sol
    return sol


def projected_move(views: dict[str, View], in_keys: Sequence[str], values: dict[str, torch.Tensor],
                   delta: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
    """v⊥ = v − δW* b_in at every position of the target, shaped like ``move`` (n, C_v, *shape).

    ``in_keys``: the target's in-views (the columns of δW*, then its bias column if it has one).
    A patch view's part δW*_k b_k is the conv of its node's value with δW*_k as the kernel (the
    patches are never unfolded)."""
    if delta.shape[1] == 0:
        return move
    delta = delta.to(move.dtype)
    fit, at = move.new_zeros(move.shape[0], move.shape[1], math.prod(move.shape[2:])), 0
    for k in in_keys:
        view, h = views[k], values[views[k].node].to(move.dtype)
        if view.kind == "patches":
            kernel = delta[:, at: at + h.shape[1] * math.prod(view.kernel)].reshape(move.shape[1], h.shape[1],
                                                                                    *view.kernel)
            conv = F.conv1d if view.dim == 1 else F.conv2d
            part = conv(h, kernel, stride=view.stride, padding=view.padding, dilation=view.dilation)
            fit += part.flatten(2)
            at += kernel[0].numel()
        else:
            signal = view.signal(h).flatten(2)                                          # (n, d_k, P)
            fit += torch.matmul(delta[:, at: at + signal.shape[1]], signal)
            at += signal.shape[1]
    if delta.shape[1] > at:  # the bias column, against the constant 1
        fit += delta[:, at, None]
    return move - fit.reshape(move.shape)
