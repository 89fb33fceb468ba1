"""The memory planner: what a statistics plan costs before the pass, and a budget it respects.

A plan's blocks are known before any data is read, so is their size (float64 sums):

    sums      = 8·(Σ_u d_u + Σ_(u,w) d_u·d_w + Σ_t (d_t + 1) + Σ_(u,t) d_u·d_t + new-channel S, M, N)
    solver    = 16·Σ D_U²    over the distinct fan-in source sets U (propose keeps S_U and its factor)
    transient = 8·ROWS_PER_CHUNK + 4·max_u d_u·Σ_w d_w    (one chunk's rows, one product, float32)

:func:`fit_plan` starts from the plan for Ψ at every node and adds the candidates, cheapest first.
A candidate whose fan-in reads a flattened image/sequence node u (a new node or edge into a vector
node) is read through a **pooled view** when its flattened view is wider than
``max_view_features`` or does not fit: p = flatten(adaptive_avg_pool(h_u, grid)) = A·flatten(h_u),
with the largest grid (halving the positions) that fits. This is the same TINY problem (docs/math.md §5)
for the fan-ins α = Aᵀβ, i.e. restricted to the range of Aᵀ, so each λ_k of the pooled problem
is at most the full view's λ_k (the objective is maximised over a subspace), and the solved
fan-in Aᵀβ is exact for the graph's flattened edge. A candidate for which no view fits is left
out. Everything budget-driven is listed in a :class:`MemoryBudgetWarning` and in the report the
Grower writes into the growth event's note (docs/performance.md).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from ..errors import ConfigError, MemoryBudgetWarning, StatisticsError
from .plan import FullKernel, StatisticsPlan, plan_for, update_sources
from .views import View, node_view, pooled_view

if TYPE_CHECKING:
    from ..graph import Graph

DEFAULT_FRACTION = 0.5          # of the memory available now (MemAvailable, or free CUDA memory)
MAX_VIEW_FEATURES = 512         # wider flattened sources of a new node/edge are read pooled by default
ROWS_PER_CHUNK = 1 << 24        # values per chunk of views in a pass (collect.py reads it from here)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """``4_000_000_000``, ``"4GB"``, ``"512 MiB"`` or ``"1.5G"`` → bytes (GB = 10⁹, GiB = 2³⁰)."""
    if isinstance(value, bool):
        raise ConfigError(f"memory budget must be a size such as 4GB or 512MB, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ConfigError(f"memory budget must be a size such as 4GB, 512MB or 2GiB, got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"memory budget must be positive, got {value!r}")
    return size


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes free now: ``torch.cuda.mem_get_info`` on a CUDA device, else MemAvailable of
    /proc/meminfo (physical memory when that file is missing)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))  # pragma: no cover


def resolve_budget(budget: int | float | str | None, device: torch.device | str | None = None) -> int:
    """``budget`` in bytes; ``None``: DEFAULT_FRACTION of :func:`available_memory`."""
    if budget is None:
        return int(DEFAULT_FRACTION * available_memory(device))
    return parse_bytes(budget)


def format_bytes(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} B"


# ------------------------------------------------------------------------------------ costs
def _widths(graph: "Graph", plan: StatisticsPlan) -> dict[str, int]:
    widths = {t: graph.node(t).width for t in plan.grads}
    widths.update({k: plan.views[k].features(graph) for k in plan.values})
    return widths


def plan_blocks(graph: "Graph", plan: StatisticsPlan) -> dict[tuple, int]:
    """Every accumulator of ``plan`` (and each fan-in source set the solver decomposes) → bytes."""
    d = _widths(graph, plan)
    out: dict[tuple, int] = {("h", k): 8 * d[k] for k in plan.values}
    out.update({("hh", u, w): 8 * d[u] * d[w] for u, w in plan.value_pairs})
    out.update({("v", t): 8 * (d[t] + 1) for t in plan.grads})
    out.update({("hv", u, t): 8 * d[u] * d[t] for u, t in plan.grad_pairs})
    for t in plan.grads:  # δW* at t: S of its in-views and its factor, kept by propose
        D = sum(d[k] for k in update_sources(graph, t)) + 1
        out[("solve", tuple(update_sources(graph, t)))] = 16 * D * D
    for u, t in plan.residual_pairs:  # second pass: N_{u,t} directly (and the projected moves' sums)
        out[("hr", u, t)] = 8 * d[u] * d[t]
        out[("vr", t)] = 8 * d[t]
    for key, fk in plan.full_kernels.items():
        d_in = sum(d[k] for k in fk.sources) + 1
        offsets = 1
        for k in fk.out_view.kernel:
            offsets *= k
        out[("fk", key)] = 8 * (d_in * d_in + 2 * graph.node(fk.target).width * d_in * offsets)  # S, M, N
        out[("solve", ("channels", fk.node))] = 16 * d_in * d_in
    return out


def _product_bytes(graph: "Graph", plan: StatisticsPlan) -> int:
    """The largest per-chunk product leftᵀ·[rights] of a pass (float32)."""
    d = _widths(graph, plan)
    rights: dict[str, int] = {}
    for u, w in plan.value_pairs:
        rights[u] = rights.get(u, 0) + d[w]
    for u, t in plan.grad_pairs:
        rights[u] = rights.get(u, 0) + d[t]
    residual: dict[str, int] = {}
    for u, t in plan.residual_pairs:
        residual[u] = residual.get(u, 0) + d[t]
    return max([4 * d[u] * r for part in (rights, residual) for u, r in part.items()] + [0])


def plan_bytes(graph: "Graph", plan: StatisticsPlan) -> int:
    """Bytes a pass with ``plan`` and the proposals from it need (the module docstring's model)."""
    return sum(plan_blocks(graph, plan).values()) + 8 * ROWS_PER_CHUNK + _product_bytes(graph, plan)


# ------------------------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class Request:
    """What one candidate needs: a vector expansion (``sources`` → ``targets``) or new channels."""

    where: str
    sources: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    kernels: tuple[FullKernel, ...] = ()
    patches: View | None = None  # a new conv node or edge: the patch view it reads (its only source)

    def plan(self, graph: "Graph", order: dict[str, int], view: View | None = None) -> StatisticsPlan:
        """Its plan alone; ``view`` replaces its (single) source by a pooled read."""
        plan = StatisticsPlan()
        for fk in self.kernels:
            plan.add_full_kernel(graph, fk, order)
        if self.patches is not None:
            plan.views.setdefault(self.patches.key, self.patches)
        if self.targets:
            sources = list(self.sources)
            if view is not None:
                plan.views[view.key] = view
                plan.aliases[sources[0]] = view
                sources = [view.key]
            plan.add_expansion(graph, sources, self.targets, order)
        return plan


def requests_for(graph: "Graph", candidates: Iterable) -> list[Request]:
    """One :class:`Request` per growth candidate (``daggrow.grow.Candidate``)."""
    from ..grow.candidates import source_keys, source_view
    from .plan import full_kernel

    out = []
    for c in candidates:
        if c.kind == "expand_node" and graph.node(c.node).spatial:
            out.append(Request(c.where, kernels=tuple(full_kernel(graph, c.node, e) for e in c.out_edges)))
        elif getattr(c, "block", None) is not None:  # a conv pair reads its source's patches
            view = source_view(graph, c)
            out.append(Request(c.where, (view.key,), tuple(c.targets), patches=view))
        else:
            out.append(Request(c.where, tuple(source_keys(graph, c)), tuple(c.targets)))
    return out


def full_plan(graph: "Graph", requests: Sequence[Request], bottleneck_nodes: Iterable[str] | None = None
              ) -> StatisticsPlan:
    """The plan reading every request in full, with Ψ at ``bottleneck_nodes``: vector expansions
    that share a source set need its moments once, with all their targets; new channels their
    full kernels; a conv pair the patch view no edge has yet."""
    vector: dict[tuple[str, ...], dict[str, None]] = {}
    for r in requests:
        if r.targets and r.patches is None:
            vector.setdefault(tuple(r.sources), {}).update(dict.fromkeys(r.targets))
    plan = plan_for(graph, [(list(u), list(t)) for u, t in vector.items()], bottleneck_nodes,
                    [fk for r in requests for fk in r.kernels])
    order = {n: i for i, n in enumerate(graph.topological_order())}
    for r in requests:
        if r.patches is not None:
            plan.views.setdefault(r.patches.key, r.patches)
            plan.add_expansion(graph, list(r.sources), list(r.targets), order)
    return plan


@dataclass
class MemoryReport:
    """What :func:`fit_plan` decided: bytes, pooled reads and left-out candidates."""

    budget: int
    needed: int = 0
    pooled: list[tuple[str, str, int, int]] = field(default_factory=list)  # where, view, full, pooled features
    left_out: list[tuple[str, int]] = field(default_factory=list)           # where, bytes its cheapest view needs
    over_budget: list[str] = field(default_factory=list)                    # pooled because of the budget

    def summary(self) -> str:
        """One line for the growth event's note ('' when nothing was pooled or left out)."""
        parts = []
        if self.pooled:
            parts.append(f"{len(self.pooled)} read pooled (" + ", ".join(
                f"{w}: {full}→{small} features" for w, _, full, small in self.pooled[:6])
                + (", …" if len(self.pooled) > 6 else "") + ")")
        if self.left_out:
            parts.append(f"{len(self.left_out)} left out (" + ", ".join(
                f"{w}: {format_bytes(b)}" for w, b in self.left_out[:6]) + (", …" if len(self.left_out) > 6 else "") + ")")
        if not parts:
            return ""
        return (f"memory plan {format_bytes(self.needed)} of a {format_bytes(self.budget)} budget: "
                + "; ".join(parts))


def _grids(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Pooling grids for a node of spatial shape ``shape``: its sizes halved until all are 1."""
    grid, out = tuple(shape), []
    while any(g > 1 for g in grid):
        grid = tuple(max(1, (g + 1) // 2) for g in grid)
        out.append(grid)
    return out


def fit_plan(graph: "Graph", candidates: Sequence, budget: int, *, bottleneck_nodes: Iterable[str] | None = None,
             max_view_features: int = MAX_VIEW_FEATURES, warn: bool = True) -> tuple[StatisticsPlan, list, MemoryReport]:
    """(plan, the candidates it serves, report) within ``budget`` bytes (:func:`plan_bytes`).

    Candidates are added cheapest first; a flattened image/sequence source of a new node or edge
    is read pooled when wider than ``max_view_features`` or when its full view does not fit;
    a candidate no view fits is left out. Raises :class:`StatisticsError` when even Ψ at
    ``bottleneck_nodes`` (default: every node) does not fit.
    """
    order = {n: i for i, n in enumerate(graph.topological_order())}
    requests = requests_for(graph, candidates)
    report = MemoryReport(budget)
    # a view an existing edge reads is never replaced (δW* at its target needs it in full)
    read = {k for n in graph.nodes for k in update_sources(graph, n)}
    poolable = lambda r: _flat_source(r) and r.sources[0] not in read  # noqa: E731
    wide = any(poolable(r) and _too_wide(graph, r, max_view_features) for r in requests)
    if not wide:  # the common case: everything in full, one plan, no per-candidate accounting
        plan = full_plan(graph, requests, bottleneck_nodes)
        report.needed = plan_bytes(graph, plan)
        if report.needed <= budget:
            return plan, list(candidates), report
    plan = plan_for(graph, bottleneck_nodes=bottleneck_nodes)
    blocks = plan_blocks(graph, plan)
    fixed, product = 8 * ROWS_PER_CHUNK, _product_bytes(graph, plan)
    if sum(blocks.values()) + fixed + product > budget:
        raise StatisticsError(
            f"the statistics for the bottleneck at every node alone need "
            f"{format_bytes(sum(blocks.values()) + fixed + product)}, over the memory budget of "
            f"{format_bytes(budget)}: raise memory_budget= (--memory-budget), or collect on a machine with more memory")
    options = []
    for index, (cand, req) in enumerate(zip(candidates, requests)):
        choices = _choices(graph, req, order, max_view_features) if poolable(req) else [(None, req.plan(graph, order))]
        size = sum(b for k, b in plan_blocks(graph, choices[-1][1]).items() if k not in blocks)
        options.append((size, index, cand, req, choices))
    chosen: dict[str, View | None] = {}   # source key → the view all its candidates read
    kept = []
    for _, index, cand, req, choices in sorted(options, key=lambda o: (o[0], o[1])):
        key = req.sources[0] if req.targets else None
        allowed = [c for c in choices if key not in chosen or c[0] == chosen[key]]  # one view per source
        fitted, need = None, 0
        for view, sub in allowed:
            new = {k: b for k, b in plan_blocks(graph, sub).items() if k not in blocks}
            need = sum(new.values()) + max(product, _product_bytes(graph, sub)) - product
            if sum(blocks.values()) + fixed + product + need <= budget:
                fitted = (view, sub, new)
                break
        if fitted is None:
            report.left_out.append((req.where, need))
            continue
        view, sub, new = fitted
        if key is not None:
            chosen[key] = view
        plan.merge(sub)
        blocks.update(new)
        product = max(product, _product_bytes(graph, sub))
        kept.append((index, cand))
        if view is not None:
            node = key.removesuffix("|flatten")
            report.pooled.append((req.where, view.key, node_view(graph, node).features(graph), view.features(graph)))
            if view is not choices[0][0]:
                report.over_budget.append(req.where)
    report.needed = sum(blocks.values()) + fixed + product
    if warn and (report.left_out or report.over_budget):
        warnings.warn(f"{report.summary()}; raise memory_budget= (--memory-budget) to read them in full",
                      MemoryBudgetWarning, stacklevel=2)
    return plan, [c for _, c in sorted(kept, key=lambda x: x[0])], report


def _flat_source(req: Request) -> bool:
    """A vector expansion reading one flattened image/sequence node: it can be read pooled."""
    return len(req.sources) == 1 and bool(req.targets) and req.sources[0].endswith("|flatten")


def _too_wide(graph: "Graph", req: Request, max_view_features: int) -> bool:
    return node_view(graph, req.sources[0].removesuffix("|flatten")).features(graph) > max_view_features


def _choices(graph: "Graph", req: Request, order: dict[str, int], max_view_features: int) -> list:
    """[(view or None for the full read, its plan)], best first, for a :func:`_flat_source` request."""
    full = (None, req.plan(graph, order))
    node = req.sources[0].removesuffix("|flatten")
    shape = graph.node(node).shape
    pooled = [pooled_view(node, g) for g in _grids(shape)]
    if not _too_wide(graph, req, max_view_features):
        return [full] + [(v, req.plan(graph, order, v)) for v in pooled]
    small = [v for v in pooled if v.features(graph) <= max_view_features] or pooled[-1:]  # C alone may be wider
    return [(v, req.plan(graph, order, v)) for v in small] or [full]
