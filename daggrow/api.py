"""The top-level functions of docs/api.md §2, wiring the stats, solve and grow rooms together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch

from .grow.candidates import KINDS, Candidate, Kind, enumerate_candidates
from .stats import LossLike, Statistics, StatisticsPlan
from .stats import collect_statistics as _collect
from .stats.collect import graph_device
from .stats.memory import fit_plan, resolve_budget

if TYPE_CHECKING:
    from .graph import Graph


def collect_statistics(
    graph: "Graph",
    loader: Iterable,
    loss: LossLike = "mse",
    *,
    candidates: Iterable[Candidate] | None = None,
    kinds: Iterable[Kind] = KINDS,
    bottleneck_nodes: Iterable[str] | None = None,
    plan: StatisticsPlan | None = None,
    device: torch.device | str | None = None,
    compute_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
    progress: bool = False,
    reuse: Statistics | None = None,
    memory_budget: int | str | None = None,
) -> Statistics:
    """One streaming pass collecting what Ψ of every node and every candidate expansion need.

    By default the candidates are all valid expansions of ``kinds`` (see
    :func:`daggrow.grow.enumerate_candidates`); pass ``candidates`` or a ``plan`` to collect less.
    ``bottleneck_nodes``: the nodes whose Ψ is collected besides what the candidates need
    (default: every non-input node; ``[]`` for the candidates alone, e.g. in a tight loop that
    never calls :func:`daggrow.bottleneck`).
    ``reuse``: an earlier pass over the same samples whose input-only moments are copied.
    ``memory_budget`` (bytes or e.g. ``"4GB"``; default: half the memory available): the plan is
    fitted to it (:func:`daggrow.stats.memory.fit_plan`: wide sources read pooled, candidates
    that do not fit left out with a :class:`~daggrow.errors.MemoryBudgetWarning`;
    ``stats.left_out`` names them and :func:`daggrow.propose` skips them).
    """
    budget = resolve_budget(memory_budget, device if device is not None else graph_device(graph))
    left_out: list[tuple[str, int]] = []
    if plan is None:
        cands = list(candidates) if candidates is not None else enumerate_candidates(graph, kinds)
        plan, _, report = fit_plan(graph, cands, budget, bottleneck_nodes=bottleneck_nodes)
        left_out = report.left_out
    stats = _collect(graph, loader, loss, plan=plan, device=device, compute_dtype=compute_dtype,
                     max_batches=max_batches, progress=progress, reuse=reuse, memory_budget=budget)
    stats.left_out = {where for where, _ in left_out}
    return stats
