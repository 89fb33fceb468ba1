"""Sums projected with a target's best update, summed in the second pass (docs/math.md §5, §10).

A candidate writing into node v needs N = (1/n) B_U V⊥ᵀ, the fan-in views against the move left
after v's best update, V⊥ = V − δW* B_in(v). In one pass it is M − P δW*ᵀ with
P = (1/n) B_U B_in(v)ᵀ; when v is an image or sequence node its in-views are conv patches
(C·Πk wide), so P costs Πk times M. Once the first pass has solved δW*, N costs what M costs:

    hr[u, v] = Σ_{i,p} b_u(i, p) v⊥(i, p)ᵀ,   vr[v] = Σ_{i,p} v⊥(i, p)   (the constant row of N)

with v⊥(i, p) = v(i, p) − δW* b_in(i, p) at every position p of v (:func:`.updates.projected_move`),
computed once per batch and target for every sum that reads it (new channels included).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import networkx as nx
import torch

from ..errors import StatisticsError
from .channels import ChannelSums
from .losses import LossLike
from .memory import ROWS_PER_CHUNK
from .plan import StatisticsPlan, update_sources
from .statistics import SECOND_PASS, Statistics
from .stream import stream
from .updates import best_update_at, projected_move
from .views import View

if TYPE_CHECKING:
    from ..graph import Graph

_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight}


class ResidualSums:
    """The residual pairs of one set of image/sequence targets (connected by shared sources, each
    a patch view): hr[u, v] and vr[v] (the module docstring), streamed chunk by chunk."""

    def __init__(self, graph: "Graph", pairs: Iterable[tuple[str, str]], views: dict[str, View], stats: Statistics,
                 device: torch.device) -> None:
        self.graph, self.views = graph, views
        self.by_source: dict[str, list[str]] = {}
        for u, v in sorted(pairs):
            self.by_source.setdefault(u, []).append(v)
        self.targets = sorted({v for vs in self.by_source.values() for v in vs})
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        for u, vs in self.by_source.items():
            for v in vs:
                stats.hr[(u, v)] = z(stats.widths[u], graph.node(v).width)
        for v in self.targets:
            stats.vr[v] = z(graph.node(v).width)
        self.stats = stats

    def values_per_sample(self) -> int:
        """Values one sample adds to a chunk: the sources' rows and the targets' projected moves."""
        stats, graph = self.stats, self.graph
        total = sum(stats.positions[u] * (stats.widths[u] + 1) for u in self.by_source)
        return total + sum(math.prod(graph.node(v).shape) * graph.node(v).width for v in self.targets)

    def add(self, values: dict[str, torch.Tensor], moves: dict[str, torch.Tensor],
            perps: dict[str, torch.Tensor]) -> None:
        """Add one chunk of samples: ``values`` of the nodes the views read, ``perps`` the targets'
        moves after their best update (v⊥, in the product dtype); ``moves`` is not needed."""
        for v in self.targets:
            self.stats.vr[v] += perps[v].flatten(2).sum((0, 2))
        for u, vs in self.by_source.items():  # Σ patches·v⊥ᵀ: the weight gradient of a conv u → [vs]
            view = self.views[u]
            h = values[view.node].to(perps[vs[0]].dtype)
            moves_u = torch.cat([perps[v] for v in vs], 1) if len(vs) > 1 else perps[vs[0]]
            grad = _WEIGHT_GRAD[view.dim](h, (moves_u.shape[1], h.shape[1], *view.kernel), moves_u,
                                          stride=view.stride, padding=view.padding, dilation=view.dilation)
            product = grad.flatten(1).T
            offset = 0
            for v in vs:
                block = self.stats.hr[(u, v)]
                block += product[:, offset: offset + block.shape[1]]
                offset += block.shape[1]


def second_pass(graph: "Graph", module: torch.nn.Module, loader: Iterable, loss: LossLike, plan: StatisticsPlan,
                stats: Statistics, kernels: list[ChannelSums], device: torch.device,
                compute_dtype: torch.dtype | None, max_batches: int | None, progress: bool,
                first: tuple[int, tuple], across_processes: bool) -> None:
    """The sums projected with a target's δW* (solved here from the first pass's reduced sums):
    every new-channel expansion's M and N (:mod:`.channels`) and the residual pairs
    (:mod:`.residual`), each summed over chunks of its own size. ``first``: the first pass's
    samples and fingerprint (:func:`.stream.stream`); the second must see the same samples."""
    views, memo = plan.views, {}
    targets = sorted({fk.target for fk in plan.full_kernels.values()} | {v for _, v in plan.residual_pairs})
    deltas = {v: best_update_at(graph, stats, v, memo=memo).delta for v in targets}
    in_keys = {v: update_sources(graph, v) for v in targets}
    sums: list = list(kernels)
    sums += [ResidualSums(graph, pairs, views, stats, device) for pairs in _connected(plan.residual_pairs)]
    keys = {k for fk in plan.full_kernels.values() for k in fk.sources}
    keys |= {u for u, _ in plan.residual_pairs} | {k for v in targets for k in in_keys[v]}

    def add(n: int, vals: dict[str, torch.Tensor], moves: dict[str, torch.Tensor]) -> None:
        if compute_dtype is not None:
            moves = {t: m.to(compute_dtype) for t, m in moves.items()}
        # v⊥ once per target and batch, for every sum that reads it
        perps = {v: projected_move(views, in_keys[v], vals, deltas[v], moves[v]) for v in targets}
        for part_sums in sums:
            chunk = max(1, ROWS_PER_CHUNK // part_sums.values_per_sample())
            for lo in range(0, n, chunk):
                part = slice(lo, lo + chunk)
                part_sums.add({k: v[part] for k, v in vals.items()}, {t: m[part] for t, m in moves.items()},
                              {t: p[part] for t, p in perps.items()})

    seen, fingerprint = stream(graph, module, loader, loss, device, {views[k].node for k in keys}, targets,
                               max_batches, "statistics (projected)", progress, add)
    same = all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(fingerprint, first[1]))
    if seen != first[0] or not same:
        what = f"{seen} samples, the first {first[0]}" if seen != first[0] else "other samples than the first"
        raise StatisticsError(f"the second pass over the loader saw {what}: candidates into image/sequence nodes "
                              "need a loader that yields the same samples every time it is iterated (a shuffled "
                              "loader is fine when it yields all of them, not with max_batches)")
    if across_processes:
        from ..distributed import reduce_statistics

        # the new channels' S is read off the first pass, already reduced
        reduce_statistics(stats, exclude=[("expansion", (k.fk.key, "S")) for k in kernels], only=SECOND_PASS)


def _connected(pairs: Iterable[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """``pairs`` (source, target) split into the sets connected through a shared source or target."""
    pairs = sorted(pairs)
    links = nx.Graph()
    links.add_edges_from((("u", u), ("v", v)) for u, v in pairs)
    part_of = {node: i for i, part in enumerate(nx.connected_components(links)) for node in part}
    groups: dict[int, list[tuple[str, str]]] = {}
    for u, v in pairs:
        groups.setdefault(part_of[("u", u)], []).append((u, v))
    return list(groups.values())
