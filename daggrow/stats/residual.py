"""Sums projected with a target's best update, summed in the second pass (docs/math.md §5, §10).

A candidate writing into node v needs N = (1/n) B_U V⊥ᵀ, the fan-in views against the move left
after v's best update, V⊥ = V − δW* B_in(v). In one pass it is M − P δW*ᵀ with
P = (1/n) B_U B_in(v)ᵀ; when v is an image or sequence node its in-views are conv patches
(C·Πk wide), so P costs Πk times M. Once the first pass has solved δW*, N costs what M costs:

    hr[u, v] = Σ_{i,p} b_u(i, p) v⊥(i, p)ᵀ,   vr[v] = Σ_{i,p} v⊥(i, p)   (the constant row of N)

with v⊥(i, p) = v(i, p) − δW* b_in(i, p) at every position p of v (:func:`projected_move`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from torch.nn import functional as F

from .statistics import Statistics
from .views import View, value_rows

if TYPE_CHECKING:
    from ..graph import Graph

_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight}


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


class ResidualSums:
    """The residual pairs of one set of image/sequence targets (connected by shared sources):
    hr[u, v] and vr[v] (the module docstring), streamed chunk by chunk."""

    def __init__(self, graph: "Graph", pairs: Iterable[tuple[str, str]], views: dict[str, View],
                 in_keys: dict[str, list[str]], deltas: dict[str, torch.Tensor], stats: Statistics,
                 device: torch.device) -> None:
        self.graph, self.views, self.in_keys = graph, views, in_keys
        self.by_source: dict[str, list[str]] = {}
        for u, v in sorted(pairs):
            self.by_source.setdefault(u, []).append(v)
        self.targets = sorted({v for vs in self.by_source.values() for v in vs})
        self.deltas = {v: deltas[v].to(device) for v in self.targets}
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        for u, vs in self.by_source.items():
            for v in vs:
                stats.hr[(u, v)] = z(stats.widths[u], graph.node(v).width)
        for v in self.targets:
            stats.vr[v] = z(graph.node(v).width)
        self.stats = stats

    def values_per_sample(self) -> int:
        """Values one sample adds to a chunk: the sources' rows, the targets' in-view signals and moves."""
        stats, graph = self.stats, self.graph
        total = sum(stats.positions[u] * (stats.widths[u] + 1) for u in self.by_source)
        for v in self.targets:
            total += math.prod(graph.node(v).shape) * (sum(stats.widths[k] for k in self.in_keys[v]) + 2 * graph.node(v).width)
        return total

    def add(self, values: dict[str, torch.Tensor], moves: dict[str, torch.Tensor],
            compute_dtype: torch.dtype | None) -> None:
        """Add one chunk of samples: ``values`` of the nodes the views read, ``moves`` of the targets."""
        cast = (lambda t: t.to(compute_dtype)) if compute_dtype is not None else (lambda t: t)  # noqa: E731
        perp, residual = {}, {}
        for v in self.targets:
            perp[v] = projected_move(self.views, self.in_keys[v], values, self.deltas[v], cast(moves[v]))
            residual[v] = value_rows(self.graph, v, perp[v])
            self.stats.vr[v] += residual[v].sum(0)
        for u, vs in self.by_source.items():
            view, h = self.views[u], cast(values[self.views[u].node])
            if view.kind == "patches":  # Σ patches·v⊥ᵀ is the weight gradient of a conv u → [vs]
                moves_u = torch.cat([perp[v] for v in vs], 1) if len(vs) > 1 else perp[vs[0]]
                grad = _WEIGHT_GRAD[view.dim](h, (moves_u.shape[1], h.shape[1], *view.kernel), moves_u,
                                              stride=view.stride, padding=view.padding, dilation=view.dilation)
                product = grad.flatten(1).T
            else:
                rows = view.rows(h)
                product = rows.T @ (residual[vs[0]] if len(vs) == 1 else torch.cat([residual[v] for v in vs], 1))
            offset = 0
            for v in vs:
                block = self.stats.hr[(u, v)]
                block += product[:, offset: offset + block.shape[1]]
                offset += block.shape[1]
