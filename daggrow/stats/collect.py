"""The statistics of a plan: a first streaming pass over the data sums the moments (values
and desired moves from :func:`.stream.stream`), and, when the plan has sums projected with a
best update, a second pass sums those (:func:`.residual.second_pass`).

Products are batched GEMMs in the model's dtype, added into float64 sums, chunk by chunk within
each group of views that share rows; nothing of a batch outlives its iteration.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import networkx as nx
import torch

from ..errors import StatisticsError
from .channels import ChannelSums
from .losses import LossLike
from .memory import ROWS_PER_CHUNK, format_bytes, plan_bytes, resolve_budget
from .plan import StatisticsPlan, plan_for
from .residual import second_pass
from .statistics import Statistics, empty_statistics
from .stream import check_inputs, graph_device, split_batch, stream
from .views import positions, value_rows, view_positions

__all__ = ["check_inputs", "collect_statistics", "graph_device", "split_batch"]

if TYPE_CHECKING:
    from ..graph import Graph


def collect_statistics(
    graph: "Graph",
    loader: Iterable,
    loss: LossLike = "mse",
    *,
    plan: StatisticsPlan | None = None,
    device: torch.device | str | None = None,
    compute_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
    train_mode: bool = False,
    progress: bool = False,
    reuse: Statistics | None = None,
    memory_budget: int | str | None = None,
    across_processes: bool = True,
) -> Statistics:
    """Accumulate the statistics of ``plan`` (default: Ψ of every node) over ``loader``.

    ``reuse``: statistics from an earlier pass over *the same samples*; the blocks that involve
    only input nodes (data moments such as S_x, independent of the weights) are copied from it
    instead of recomputed — in a growth loop the input covariance is the costliest block of
    a wide input. A mismatch in the number of samples raises :class:`StatisticsError`.

    ``compute_dtype`` is the dtype of the per-batch products (default: the model's); sums are
    float64 whatever it is. Under an initialised ``torch.distributed`` process group, with
    ``across_processes``, the sums are all-reduced: the statistics of the union of the processes'
    data (:mod:`daggrow.distributed`). The graph's modules are left exactly as they were (train/eval flags
    restored, no parameter or buffer changed in the default eval mode).

    Candidates into image/sequence nodes (new channels, conv nodes and edges) read the loader
    twice (docs/math.md §10): it must yield the same samples each time, in any order; an
    iterator, or a second pass over other samples, raises :class:`StatisticsError`.

    ``memory_budget`` (bytes or a size such as ``"4GB"``; default: half the memory available now,
    :mod:`daggrow.stats.memory`): a plan that needs more raises :class:`StatisticsError` before
    anything is allocated (``fit_plan`` makes plans that fit), and running out of memory during
    the pass raises one too, with the plan's numbers, never an allocator error.
    """
    plan = plan if plan is not None else plan_for(graph)
    device = torch.device(device) if device is not None else graph_device(graph)
    budget = resolve_budget(memory_budget, device)
    need = plan_bytes(graph, plan)
    if need > budget:
        raise StatisticsError(f"the statistics plan needs {format_bytes(need)}, over the memory budget of "
                              f"{format_bytes(budget)}: raise memory_budget= (--memory-budget), or plan with "
                              "daggrow.stats.memory.fit_plan, which reads large sources pooled or leaves them out")
    try:
        return _collect(graph, loader, loss, plan, device, compute_dtype, max_batches, train_mode, progress, reuse,
                        across_processes)
    except torch.OutOfMemoryError as err:
        raise StatisticsError(_out_of_memory(err, need, budget)) from None
    except RuntimeError as err:
        if "not enough memory" not in str(err) and "out of memory" not in str(err).lower():
            raise
        raise StatisticsError(_out_of_memory(err, need, budget)) from None


def _out_of_memory(err: Exception, need: int, budget: int) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"out of memory during the statistics pass ({first}): the plan needs {format_bytes(need)} (budget "
            f"{format_bytes(budget)}) plus the model's activations for one batch; lower memory_budget= "
            "(--memory-budget) so that large sources are read pooled or left out, or use smaller batches")


def _collect(graph: "Graph", loader: Iterable, loss: LossLike, plan: StatisticsPlan, device: torch.device,
             compute_dtype: torch.dtype | None, max_batches: int | None, train_mode: bool, progress: bool,
             reuse: Statistics | None, across_processes: bool) -> Statistics:
    if plan.second_pass and isinstance(loader, Iterator):  # read once only
        raise StatisticsError("candidates into image/sequence nodes (new channels, conv nodes and edges) need two "
                              "passes over the same data (the second is projected with the best update the first "
                              "one solves): pass a re-iterable loader such as a list of batches or a DataLoader, "
                              "not an iterator or a generator")
    views = plan.views
    widths = {t: graph.node(t).width for t in plan.grads}
    widths.update({k: views[k].features(graph) for k in plan.values})
    stats = empty_statistics(widths, plan.values, plan.value_pairs, plan.grads, plan.grad_pairs, device=device)
    stats.aliases = dict(plan.aliases)
    stats.shapes = {k: (graph.node(v.node).width, *graph.node(v.node).shape) for k, v in plan.aliases.items()}
    stats.positions = {t: positions(graph, t) for t in plan.grads}
    stats.positions.update({k: view_positions(graph, views[k]) for k in plan.values})
    inputs = {k for k in plan.values if views[k].node in graph.inputs}
    copied = set()
    if reuse is not None:
        for u, w in plan.value_pairs:
            if u in inputs and w in inputs and (u, w) in reuse.hh:
                stats.hh[(u, w)].copy_(reuse.hh[(u, w)])
                copied.add((u, w))
        for u in inputs:
            if u in reuse.h:
                stats.h[u].copy_(reuse.h[u])
        stats.data_cache.update(reuse.data_cache)
    pairs_by_source: dict[str, list[str]] = defaultdict(list)
    grams: list[str] = []  # S_u blocks: symmetric, so only their upper block triangle is multiplied
    for u, w in sorted(plan.value_pairs - copied):
        if u == w:
            grams.append(u)
        else:
            pairs_by_source[u].append(w)
    grads_by_source: dict[str, list[str]] = defaultdict(list)
    for u, t in sorted(plan.grad_pairs):
        grads_by_source[u].append(t)
    _share_rows(stats.hh, pairs_by_source)
    _share_rows(stats.hv, grads_by_source)
    groups = _groups(plan, stats, grams, pairs_by_source, grads_by_source, inputs if reuse is not None else set())
    kernels = [ChannelSums(graph, fk, views, stats, device) for fk in plan.full_kernels.values()]
    borders = {id(group): [k for k in kernels if set(k.fk.sources) <= set(group.keys)] for group in groups}

    def moments(n: int, vals: dict[str, torch.Tensor], moves: dict[str, torch.Tensor]) -> None:
        for group in groups:  # rows of one group's views at a time, its chunk of samples at a time
            for lo in range(0, n, group.chunk):
                part = slice(lo, lo + group.chunk)
                rows = {k: views[k].rows(vals[views[k].node][part]) for k in group.keys}
                _accumulate(stats, group, rows, {t: value_rows(graph, t, moves[t][part]) for t in group.targets},
                            compute_dtype)
                for sums in borders[id(group)]:  # new channels' S: the border part
                    sums.add_border(rows, min(n, lo + group.chunk) - lo)

    module = graph.compile(taps=True)
    flags = [(m, m.training) for m in module.modules()]
    module.train(train_mode)
    try:
        seen, fingerprint = stream(graph, module, loader, loss, device, {views[k].node for k in plan.values},
                                   sorted(plan.grads), max_batches, "statistics", progress, moments)
        stats.n += seen
        for u in grams:
            _mirror_lower_blocks(stats.hh[(u, u)])
        for sums in (stats.hh, stats.hv):  # the shared rows back to one tensor per pair
            for key, t in sums.items():
                if not t.is_contiguous():
                    sums[key] = t.contiguous()
        if across_processes:
            from ..distributed import reduce_statistics

            # blocks copied from ``reuse`` were summed over the processes when first collected
            reused = [("hh", p) for p in copied] + [("h", u) for u in inputs if reuse is not None and u in reuse.h]
            reduce_statistics(stats, exclude=reused)
        if stats.n == 0:
            raise StatisticsError("the loader yielded no batch")
        if reuse is not None and reuse.n != stats.n:
            raise StatisticsError(f"reuse= statistics cover {reuse.n} samples but this pass saw {stats.n}: "
                                  "input moments can only be reused over the same samples")
        for sums in kernels:
            sums.finish_s(stats)
        if plan.second_pass:
            second_pass(graph, module, loader, loss, plan, stats, kernels, device, compute_dtype, max_batches,
                        progress, (seen, fingerprint), across_processes)
    finally:
        for m, flag in flags:
            m.training = flag
    return stats


@dataclass
class _Group:
    """Blocks whose products share rows (a connected set of views and desired moves, all at the
    same positions), summed ``chunk`` samples at a time."""

    keys: list[str]                        # view keys
    targets: list[str]                     # nodes whose desired move is summed
    grams: list[str]
    pairs_by_source: dict[str, list[str]]
    grads_by_source: dict[str, list[str]]
    sums: list[str]                        # view keys whose Σ h is summed (not copied from ``reuse``)
    chunk: int


def _groups(plan: StatisticsPlan, stats: Statistics, grams: list[str], pairs_by_source: dict[str, list[str]],
            grads_by_source: dict[str, list[str]], skip_sums: set[str]) -> list[_Group]:
    """The plan's views and moves split into groups linked by products, each with its own chunk:
    at most ROWS_PER_CHUNK values of its rows at a time. A deep stage's views (few positions)
    are then multiplied over many samples at once — not over the few samples that the widest
    stage's views allow (GEMMs of a few dozen rows run at a fraction of the machine's rate)."""
    links = nx.Graph()
    links.add_nodes_from([("h", k) for k in plan.values] + [("v", t) for t in plan.grads])
    links.add_edges_from((("h", u), ("h", w)) for u, w in plan.value_pairs)
    links.add_edges_from((("h", u), ("v", t)) for u, t in plan.grad_pairs)
    groups = []
    for items in nx.connected_components(links):
        keys = sorted(k for kind, k in items if kind == "h")
        targets = sorted(t for kind, t in items if kind == "v")
        size = sum(stats.positions[k] * (stats.widths[k] + 1) for k in keys)
        size += sum(stats.positions[t] * stats.widths[t] for t in targets)
        groups.append(_Group(keys, targets, [u for u in grams if u in keys],
                             {u: ws for u, ws in pairs_by_source.items() if u in keys},
                             {u: ts for u, ts in grads_by_source.items() if u in keys},
                             [k for k in keys if k not in skip_sums], max(1, ROWS_PER_CHUNK // max(size, 1))))
    return groups


def _accumulate(stats: Statistics, group: _Group, values: dict[str, torch.Tensor], moves: dict[str, torch.Tensor],
                compute_dtype: torch.dtype | None) -> None:
    cast = (lambda t: t.to(compute_dtype)) if compute_dtype is not None else (lambda t: t)  # noqa: E731
    values = {k: cast(v) for k, v in values.items()}
    moves = {k: cast(v) for k, v in moves.items()}
    # per-batch sums in the product dtype, like the GEMMs (a float64 reduction of float32 values is
    # ~8× slower and no more accurate than the float32 Gram blocks); the running sums are float64
    for u in group.sums:
        stats.h[u] += values[u].sum(0)
    for t in group.targets:
        flat = moves[t].reshape(-1)
        stats.v[t] += moves[t].sum(0)
        stats.vv[t] += torch.dot(flat, flat)
    for u in group.grams:
        _add_gram(values[u], stats.hh[(u, u)])
    for u, ws in group.pairs_by_source.items():
        _add_products(values[u], [values[w] for w in ws], [stats.hh[(u, w)] for w in ws])
    for u, ts in group.grads_by_source.items():
        _add_products(values[u], [moves[t] for t in ts], [stats.hv[(u, t)] for t in ts])


def _share_rows(sums: dict, by_source: dict[str, list[str]]) -> None:
    """Make the sums of each source's pairs (u, w₁), (u, w₂), … column blocks of one float64
    tensor, so that :func:`_add_products` adds a batch's product in one operation, not one per
    pair (a DAG has O(nodes²) pairs); the pass ends with one contiguous tensor per pair again."""
    for u, ws in by_source.items():
        if len(ws) > 1:
            row = torch.cat([sums[(u, w)] for w in ws], 1)
            offset = 0
            for w in ws:
                width = sums[(u, w)].shape[1]
                sums[(u, w)] = row[:, offset: offset + width]
                offset += width


def _add_products(left: torch.Tensor, rights: list[torch.Tensor], sums: list[torch.Tensor]) -> None:
    """sums[k] += leftᵀ rights[k], as one GEMM over the concatenated right-hand sides (and one
    addition when the sums are the column blocks of one tensor, :func:`_share_rows`)."""
    right = rights[0] if len(rights) == 1 else torch.cat(rights, 1)
    # a narrow right-hand side (e.g. the moves of a 10-class output) as (rightᵀ left)ᵀ: the GEMM
    # of a transposed left operand into few output columns runs 5–8× slower (MKL, 1–4k rows)
    product = (right.T @ left).T if 4 * right.shape[1] <= left.shape[1] else left.T @ right
    base = sums[0]._base
    if len(sums) > 1 and base is not None and base.shape == product.shape and all(s._base is base for s in sums):
        base += product
        return
    offset = 0
    for s in sums:
        s += product[:, offset: offset + s.shape[1]]
        offset += s.shape[1]


GRAM_BLOCK = 128  # columns per block row of a Gram matrix (128: fastest at d = 785 on 2 cores)


def _add_gram(left: torch.Tensor, total: torch.Tensor) -> None:
    """total += leftᵀ left, computing only the block rows' upper part (≈ half the multiply-adds
    of one GEMM for wide inputs); :func:`_mirror_lower_blocks` fills the rest once per pass."""
    d = left.shape[1]
    for start in range(0, d, GRAM_BLOCK):
        stop = min(start + GRAM_BLOCK, d)
        total[start:stop, start:] += left[:, start:stop].T @ left[:, start:]


def _mirror_lower_blocks(total: torch.Tensor) -> None:
    """Copy the transposed upper blocks of a Gram sum built by :func:`_add_gram` below its diagonal."""
    for start in range(GRAM_BLOCK, total.shape[0], GRAM_BLOCK):
        total[start:, start - GRAM_BLOCK:start] = total[start - GRAM_BLOCK:start, start:].T
