"""The top-level functions of docs/api.md §2, wiring the stats, solve and grow rooms together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch

from .grow.candidates import KINDS, Candidate, Kind, enumerate_candidates, statistics_plan
from .stats import LossLike, Statistics, StatisticsPlan
from .stats import collect_statistics as _collect

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
) -> Statistics:
    """One streaming pass collecting what Ψ of every node and every candidate expansion need.

    By default the candidates are all valid expansions of ``kinds`` (see
    :func:`daggrow.grow.enumerate_candidates`); pass ``candidates`` or a ``plan`` to collect less.
    ``bottleneck_nodes``: the nodes whose Ψ is collected besides what the candidates need
    (default: every non-input node; ``[]`` for the candidates alone, e.g. in a tight loop that
    never calls :func:`daggrow.bottleneck`).
    ``reuse``: an earlier pass over the same samples whose input-only moments are copied.
    """
    if plan is None:
        cands = list(candidates) if candidates is not None else enumerate_candidates(graph, kinds)
        plan = statistics_plan(graph, cands, bottleneck_nodes)
    return _collect(graph, loader, loss, plan=plan, device=device, compute_dtype=compute_dtype,
                    max_batches=max_batches, progress=progress, reuse=reuse)
