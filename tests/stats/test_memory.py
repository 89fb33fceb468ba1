"""The memory planner: byte counts against the real accumulators, budgets always respected
(pooled reads or left-out candidates, reported), the pooled view's exact lift and its λ bound,
and out-of-memory turned into StatisticsError."""

from __future__ import annotations

import warnings

import pytest
import torch

import daggrow as dg
from daggrow.stats.statistics import SUMS
from daggrow.errors import ConfigError, MemoryBudgetWarning, StatisticsError
from daggrow.grow.candidates import enumerate_candidates, statistics_plan
from daggrow.grow.propose import apply, propose
from daggrow.solve import RankDeficiencyWarning
from daggrow.stats import collect as collect_module
from daggrow.stats.memory import (
    DEFAULT_FRACTION,
    available_memory,
    fit_plan,
    format_bytes,
    parse_bytes,
    plan_blocks,
    plan_bytes,
    resolve_budget,
)

F64 = torch.float64
HUGE = 10**12


def image_graph(seed: int = 0) -> dg.Graph:
    """x (2×8×8) → c1 (conv, 4×8×8) → c2 (conv s2, 3×4×4) → h (5, reads flatten c2) → y (3)."""
    torch.manual_seed(seed)
    g = dg.Graph()
    g.add_input("x", 2, shape=(8, 8))
    g.add_node("c1", 4, "tanh", shape=(8, 8))
    g.add_node("c2", 3, "tanh", shape=(4, 4))
    g.add_node("h", 5, "tanh")
    g.add_node("y", 3)
    g.add_edge("x", "c1", dg.ConvBlock(dim=2, kernel_size=3, padding=1))
    g.add_edge("c1", "c2", dg.ConvBlock(dim=2, kernel_size=3, stride=2, padding=1))
    g.add_edge("c2", "h")
    g.add_edge("h", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.to(F64)
    return g


def batch(n: int = 64, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 8, 8, generator=gen, dtype=F64), torch.randn(n, 3, generator=gen, dtype=F64)


def test_parse_bytes_and_budget():
    assert parse_bytes("4GB") == 4 * 10**9 and parse_bytes("512 MiB") == 512 * 2**20
    assert parse_bytes("1.5g") == 1_500_000_000 and parse_bytes(1000) == 1000
    for bad in ("lots", "4 parsecs", "-1GB", 0, True):
        with pytest.raises(ConfigError, match="memory budget"):
            parse_bytes(bad)
    assert resolve_budget("2MB") == 2 * 10**6
    assert 0 < resolve_budget(None) <= DEFAULT_FRACTION * available_memory() * 1.1
    assert format_bytes(2.5e9) == "2.5 GB" and format_bytes(12) == "12 B" and format_bytes(3e3) == "3 kB"


def test_plan_bytes_equal_the_accumulators_collected():
    g = image_graph()
    cands = enumerate_candidates(g)
    plan = statistics_plan(g, cands)
    stats = dg.collect_statistics(g, [batch()], "mse", plan=plan)
    assert stats.hr and stats.expansion  # second-pass sums are counted too
    real = sum(t.numel() * t.element_size() for name in SUMS for t in getattr(stats, name).values())
    blocks = plan_blocks(g, plan)
    assert sum(b for k, b in blocks.items() if k[0] != "solve") == real
    assert plan_bytes(g, plan) > real


def _pooled_setup(cap: int):
    g = image_graph()
    cands = [c for c in enumerate_candidates(g, ["new_node", "new_edge"])
             if c.sources == ("c1",) and c.block is None]  # read flattened (a conv pair reads patches)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoryBudgetWarning)  # the cap alone pools silently
        plan, kept, report = fit_plan(g, cands, HUGE, max_view_features=cap)
    return g, cands, plan, kept, report


def test_wide_sources_are_read_pooled_and_lifted_exactly():
    X, Y = batch()
    g, cands, plan, kept, report = _pooled_setup(cap=64)
    assert kept == cands and {w for w, *_ in report.pooled} == {c.where for c in cands}
    assert report.pooled[0][1:] == ("c1|pool 4x4", 256, 64) and not report.over_budget
    assert "read pooled" in report.summary()
    full_plan = statistics_plan(g, cands)
    assert plan_bytes(g, plan) < plan_bytes(g, full_plan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        pooled = dg.collect_statistics(g, [(X, Y)], "mse", plan=plan)
        full = dg.collect_statistics(g, [(X, Y)], "mse", plan=full_plan)
        small = {p.where: p for p in propose(g, pooled, 3, candidates=cands, rel_threshold=0.0)}
        big = {p.where: p for p in propose(g, full, 3, candidates=cands, rel_threshold=0.0)}
    node = small["new node c1->y"]
    assert node.fan_in.shape[0] == 256 + 1  # lifted to the flattened view, constant last
    # λ of the pooled problem are a lower bound of the full view's (a TINY problem on a subspace)
    lam_small, lam_big = node.eigenvalues, big["new node c1->y"].eigenvalues
    assert all(a <= b * (1 + 1e-9) for a, b in zip(lam_small, lam_big))
    # the lifted fan-in is exact: its first-order gain from the *full* moments is the pooled one
    M_full = full.grad_moment(["c1|flatten"], ["y"])
    assert float(((node.fan_in.T @ M_full) * node.fan_out.T).sum()) == pytest.approx(node.first_order_gain, rel=1e-9)
    # ... and the grown graph computes αᵀ pool(h) + b: apply works and changes the loss as predicted
    edge = small["new edge c1->y"]
    assert edge.weight.shape == (3, 257)
    M = full.grad_moment(["c1|flatten"], ["y"])
    assert float((edge.weight * M.T).sum()) == pytest.approx(edge.first_order_gain, rel=1e-9)
    for p in (node, edge):
        grown = apply(g, p, 1e-4)
        with torch.no_grad():
            before = float(((g.compile()(X) - Y) ** 2).sum(1).mean())
            after = float(((grown.compile()(X) - Y) ** 2).sum(1).mean())
        assert (after - before) / 1e-4 == pytest.approx(-p.first_order_gain, rel=1e-2, abs=1e-6)


def test_a_tiny_budget_pools_then_leaves_out_with_a_warning():
    g = image_graph()
    cands = enumerate_candidates(g)
    base, _, _ = fit_plan(g, [], HUGE)
    full_plan, _, _ = fit_plan(g, cands, HUGE)
    budget = (plan_bytes(g, base) + plan_bytes(g, full_plan)) // 2
    with pytest.warns(MemoryBudgetWarning, match="memory plan") as caught:
        plan, kept, report = fit_plan(g, cands, budget)
    assert plan_bytes(g, plan) <= budget and report.needed <= budget
    assert report.left_out or report.over_budget
    assert "memory_budget=" in str(caught[0].message)
    left = {w for w, _ in report.left_out}
    assert {c.where for c in kept} | left == {c.where for c in cands} and not left & {c.where for c in kept}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        stats = dg.collect_statistics(g, [batch()], "mse", plan=plan, memory_budget=budget)
        assert propose(g, stats, 2, candidates=kept) is not None
    # below the bottleneck plan itself: a clear error, nothing allocated
    with pytest.raises(StatisticsError, match="bottleneck at every node alone need"):
        fit_plan(g, cands, plan_bytes(g, base) - 1)


def test_a_view_an_edge_reads_is_never_pooled():
    g = image_graph()
    cands = [c for c in enumerate_candidates(g, ["new_node"]) if c.sources == ("c2",)]  # h reads c2|flatten
    plan, kept, report = fit_plan(g, cands, HUGE, max_view_features=8)
    assert kept == cands and not report.pooled and not plan.aliases


def test_collect_refuses_a_plan_over_budget_and_reports_out_of_memory(monkeypatch):
    g = image_graph()
    plan = statistics_plan(g, enumerate_candidates(g))
    with pytest.raises(StatisticsError, match="over the memory budget of 1 kB"):
        dg.collect_statistics(g, [batch()], "mse", plan=plan, memory_budget=1000)

    def no_memory(*_a, **_k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 2147483648 bytes.")
    monkeypatch.setattr(collect_module, "_collect", no_memory)
    with pytest.raises(StatisticsError, match="out of memory during the statistics pass .*DefaultCPUAllocator"):
        dg.collect_statistics(g, [batch()], "mse", plan=plan)

    def cuda_oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(collect_module, "_collect", cuda_oom)
    with pytest.raises(StatisticsError, match="memory_budget="):
        dg.collect_statistics(g, [batch()], "mse", plan=plan)

    def other(*_a, **_k):
        raise RuntimeError("something else")
    monkeypatch.setattr(collect_module, "_collect", other)
    with pytest.raises(RuntimeError, match="something else"):
        dg.collect_statistics(g, [batch()], "mse", plan=plan)


def test_grower_under_a_tiny_budget_grows_and_records_what_it_left_out():
    g = image_graph()
    X, Y = batch(96)
    cands = enumerate_candidates(g, ("expand_node", "new_node"))
    base, _, _ = fit_plan(g, [], HUGE)
    full_plan, _, _ = fit_plan(g, cands, HUGE)
    budget = (plan_bytes(g, base) + plan_bytes(g, full_plan)) // 2
    grower = dg.Grower(g, loss="mse", memory_budget=budget)
    assert grower.settings()["memory_budget"] == budget
    with pytest.warns(MemoryBudgetWarning):
        event = grower.grow_step([(X, Y)], held_out=(X, Y))
    assert event is not None and "memory plan" in event.note
    with pytest.raises(ConfigError):
        dg.Grower(g, loss="mse", memory_budget="plenty")


@pytest.mark.gpu
def test_pooled_plan_budget_and_proposals_on_cuda():
    g = image_graph()
    gpu_graph = g.copy()
    gpu_graph.compile(device="cuda")
    X, Y = batch()
    cands = [c for c in enumerate_candidates(g, ["new_node"]) if c.sources == ("c1",) and c.block is None]  # flattened reads
    assert resolve_budget(None, "cuda") <= available_memory("cuda")
    plan, kept, report = fit_plan(gpu_graph, cands, resolve_budget(None, "cuda"), max_view_features=64)
    assert report.pooled and kept == cands
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        gpu = dg.collect_statistics(gpu_graph, [(X.cuda(), Y.cuda())], "mse", plan=plan)
        cpu = dg.collect_statistics(g, [(X, Y)], "mse", plan=plan)
        gpu_props = propose(gpu_graph, gpu, 2, candidates=kept, rel_threshold=0.0)
        cpu_props = propose(g, cpu, 2, candidates=kept, rel_threshold=0.0)
    assert gpu.hh[("c1|pool 4x4", "c1|pool 4x4")].is_cuda
    assert [p.where for p in gpu_props] == [p.where for p in cpu_props]
    for a, b in zip(gpu_props, cpu_props):
        torch.testing.assert_close(torch.tensor(a.eigenvalues), torch.tensor(b.eigenvalues), rtol=1e-7, atol=1e-9)
        assert a.fan_in.shape[0] == 257
        grown = apply(gpu_graph, a, 0.5)
        assert grown.compile()(X.cuda()).is_cuda


@pytest.mark.gpu
def test_out_of_memory_on_cuda_is_a_statistics_error():
    g = image_graph()
    g.compile(device="cuda")
    plan = statistics_plan(g, enumerate_candidates(g))
    with pytest.raises(StatisticsError, match="over the memory budget"):
        dg.collect_statistics(g, [tuple(t.cuda() for t in batch())], "mse", plan=plan, memory_budget=1000)


def test_a_budget_at_the_bottleneck_plan_leaves_every_candidate_out():
    g = image_graph()
    cands = enumerate_candidates(g)
    base, _, report = fit_plan(g, [], HUGE)
    assert report.summary() == ""
    budget = plan_bytes(g, base) + 8
    with pytest.warns(MemoryBudgetWarning, match=r"left out \(") as caught:
        plan, kept, report = fit_plan(g, cands, budget)
    # only candidates whose blocks Ψ already collects (a new node c2 → h: h reads c2) cost nothing
    have = set(plan_blocks(g, base))
    free = [c for c in cands if not set(plan_blocks(g, statistics_plan(g, [c]))) - have]
    assert kept == free and len(free) < len(cands)
    assert {w for w, _ in report.left_out} == {c.where for c in cands} - {c.where for c in free}
    assert all(b > 8 for _, b in report.left_out)
    assert plan_bytes(g, plan) <= budget and ", …" in str(caught[0].message)
    with pytest.warns(MemoryBudgetWarning):
        grower = dg.Grower(g, loss="mse", kinds=("expand_node",), memory_budget=budget)
        assert grower.grow_step([batch()]) is None
    with pytest.warns(MemoryBudgetWarning):
        stats = dg.collect_statistics(g, [batch()], "mse", memory_budget=budget)
    assert stats.left_out == {w for w, _ in report.left_out}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        assert {p.where for p in propose(g, stats, rel_threshold=0.0)} <= {c.where for c in free}
