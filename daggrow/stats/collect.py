"""One streaming pass: compile with taps, hook values and desired moves, accumulate sums.

Per batch: forward through the compiled module (eval mode by default), per-sample losses ℓ_i,
then ``torch.autograd.grad(Σ ℓ_i, [z_v …])`` gives ∂ℓ_i/∂z_v for every sample at once (no
weight gradients are computed). v_goal = −∂ℓ_i/∂z_v (docs/math.md §2). Products are batched GEMMs in
the model's dtype, added into float64 sums; nothing of a batch outlives its iteration.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable

import torch

from ..errors import StatisticsError
from .losses import LossLike, per_sample_loss
from .channels import ChannelSums
from .memory import ROWS_PER_CHUNK, format_bytes, plan_bytes, resolve_budget
from .plan import StatisticsPlan, plan_for
from .statistics import Statistics, empty_statistics
from .views import as_rows, positions, value_rows, view_positions

if TYPE_CHECKING:
    from ..graph import Graph


def split_batch(batch: Any, graph: "Graph | None" = None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """``(x, y)`` or ``((x1, x2), y)`` → (inputs tuple, targets); with ``graph``, the inputs are
    checked against its input nodes (:func:`check_inputs`)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise StatisticsError("each batch must be a pair (x, y), with x a tensor or a tuple of tensors")
    x, y = batch
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if graph is not None:
        check_inputs(graph, xs)
    if not isinstance(y, torch.Tensor):
        raise StatisticsError(f"the targets y must be a tensor, got {type(y).__name__}")
    return xs, y


def check_inputs(graph: "Graph", xs: tuple[torch.Tensor, ...]) -> None:
    """One tensor per input node, shaped (batch, *value shape) and of the parameters' dtype;
    a :class:`StatisticsError` that names the input and the fix otherwise (before anything runs)."""
    names = graph.inputs
    if len(xs) != len(names):
        raise StatisticsError(f"the graph has {len(names)} input(s) {names} but the batch gives {len(xs)} tensor(s)")
    dtype = next((p.dtype for p in graph.parameters()), None)
    for name, x in zip(names, xs):
        spec = graph.node(name)
        want = spec.value_shape
        if not isinstance(x, torch.Tensor):
            raise StatisticsError(f"input {name!r} must be a tensor, got {type(x).__name__}")
        if want is not None and tuple(x.shape[1:]) != want:
            raise StatisticsError(f"input {name!r}: got a batch of shape {tuple(x.shape)}, the graph expects "
                                  f"(batch, {', '.join(map(str, want))})")
        if dtype is not None and x.dtype != dtype:
            raise StatisticsError(f"input {name!r} is {x.dtype} but the graph's parameters are {dtype}: convert the "
                                  f"data (e.g. x.to({dtype})) or the parameters")


def graph_device(graph: "Graph") -> torch.device:
    for p in graph.parameters():
        return p.device
    return torch.device("cpu")


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
    module = graph.compile(taps=True)
    flags = [(m, m.training) for m in module.modules()]
    views = plan.views
    widths = {t: graph.node(t).width for t in plan.grads}
    widths.update({k: views[k].features(graph) for k in plan.values})
    stats = empty_statistics(widths, plan.values, plan.value_pairs, plan.grads, plan.grad_pairs, device=device)
    stats.aliases = dict(plan.aliases)
    stats.shapes = {k: (graph.node(v.node).width, *graph.node(v.node).shape) for k, v in plan.aliases.items()}
    stats.positions = {t: positions(graph, t) for t in plan.grads}
    stats.positions.update({k: view_positions(graph, views[k]) for k in plan.values})
    kernels = [ChannelSums(graph, fk, views, stats, device) for fk in plan.full_kernels.values()]
    grads_order = sorted(plan.grads)
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

    values: dict[str, torch.Tensor] = {}
    pre: dict[str, torch.Tensor] = {}
    handles = []

    def value_hook(node: str):
        def hook(_m, _inp, out):
            values[node] = out.detach()
        return hook

    def pre_hook(node: str):
        def hook(_m, _inp, out):
            if not out.requires_grad:  # nothing upstream is trainable: make z a leaf
                out = out.detach().requires_grad_()
            pre[node] = out
            return out
        return hook

    taps = module.daggrow_tap_attrs
    for node in {views[k].node for k in plan.values}:
        handles.append(module.get_submodule(taps[(node, "value")]).register_forward_hook(value_hook(node)))
    for node in plan.grads:
        handles.append(module.get_submodule(taps[(node, "pre")]).register_forward_hook(pre_hook(node)))

    batches = loader
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(loader, desc="statistics", unit="batch", leave=False)
    module.train(train_mode)
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            xs, y = split_batch(batch, graph)
            xs = tuple(x.to(device) for x in xs)
            y = y.to(device)
            for x in xs:
                if not _finite(x):
                    raise StatisticsError(f"batch {index}: the inputs contain NaN or infinite values")
            if not _finite(y):
                raise StatisticsError(f"batch {index}: the targets contain NaN or infinite values")
            values.clear(), pre.clear()
            with torch.enable_grad():
                out = module(*xs)
                losses = per_sample_loss(loss, out, y)
                if not torch.isfinite(losses).all():
                    raise StatisticsError(f"batch {index}: the loss is NaN or infinite")
                zs = [pre[t] for t in grads_order]
                grads = torch.autograd.grad(losses.sum(), zs, allow_unused=True) if zs else []
            moves = {t: (-g if g is not None else torch.zeros_like(z)).detach()
                     for t, z, g in zip(grads_order, zs, grads)}
            n = xs[0].shape[0]
            for lo in range(0, n, chunk := _chunk_size(n, plan, stats)):
                part = slice(lo, lo + chunk)
                vals = {k: v[part] for k, v in values.items()}
                mov = {t: m[part] for t, m in moves.items()}
                # unfold each patch view once per chunk: its rows and the new-channel sums share it
                signals = {k: views[k].signal(vals[views[k].node]) for k in plan.values if views[k].kind == "patches"}
                rows = {k: as_rows(signals[k]) if k in signals else views[k].rows(vals[views[k].node])
                        for k in plan.values}
                _accumulate(stats, rows, {t: value_rows(graph, t, m) for t, m in mov.items()},
                            pairs_by_source, grads_by_source, grams, compute_dtype,
                            skip_sums=inputs if reuse is not None else set())
                for sums in kernels:
                    sums.add(vals, signals, mov, compute_dtype)
            stats.n += n
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
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
    return stats


def _accumulate(stats: Statistics, values: dict[str, torch.Tensor], moves: dict[str, torch.Tensor],
                pairs_by_source: dict[str, list[str]], grads_by_source: dict[str, list[str]], grams: list[str],
                compute_dtype: torch.dtype | None, skip_sums: set[str] = frozenset()) -> None:
    cast = (lambda t: t.to(compute_dtype)) if compute_dtype is not None else (lambda t: t)  # noqa: E731
    values = {k: cast(v) for k, v in values.items()}
    moves = {k: cast(v) for k, v in moves.items()}
    # per-batch sums in the product dtype, like the GEMMs (a float64 reduction of float32 values is
    # ~8× slower and no more accurate than the float32 Gram blocks); the running sums are float64
    for u in stats.h:
        if u not in skip_sums:
            stats.h[u] += values[u].sum(0)
    for t in stats.v:
        flat = moves[t].reshape(-1)
        stats.v[t] += moves[t].sum(0)
        stats.vv[t] += torch.dot(flat, flat)
    for u in grams:
        _add_gram(values[u], stats.hh[(u, u)])
    for u, ws in pairs_by_source.items():
        _add_products(values[u], [values[w] for w in ws], [stats.hh[(u, w)] for w in ws])
    for u, ts in grads_by_source.items():
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
    product = left.T @ (rights[0] if len(rights) == 1 else torch.cat(rights, 1))
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


def _finite(t: torch.Tensor) -> bool:
    """No NaN or ±inf in ``t``: a NaN or inf makes the sum non-finite, so one reduction (no
    boolean mask) settles the common case; only a non-finite sum (maybe an overflow) is checked
    element-wise."""
    return not t.is_floating_point() or bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _chunk_size(n: int, plan: StatisticsPlan, stats: Statistics) -> int:
    """Samples per chunk, so that all the view rows of a chunk together (unfolded patches
    included) stay within ROWS_PER_CHUNK values: a pass's transient memory is bounded."""
    total = sum(stats.positions[k] * (stats.widths[k] + 1) for k in plan.values) + 1
    for fk in plan.full_kernels.values():  # its signal, and (small 2-d targets) its out-edge's windows
        d_in = sum(stats.widths[k] + 1 for k in fk.sources)
        offsets = 1
        for k in fk.out_view.kernel:
            offsets *= k
        total += d_in * (stats.positions[fk.sources[0]] + stats.positions[fk.target] * offsets)
    return max(1, min(n, ROWS_PER_CHUNK // total))
