"""Grouped ``propose`` (shared whitenings and blocks, batched SVDs) against the per-candidate
reference path; skipped candidates; ranking with round-off proposals last."""

from __future__ import annotations

import dataclasses
import importlib
import warnings

import pytest
import torch

import daggrow as dg
from daggrow.errors import CandidateSkippedWarning, SolverError
from daggrow.grow.candidates import enumerate_candidates, statistics_plan
from daggrow.grow.propose import ROUND_OFF, propose, rank_key

from .test_conv_growth import cnn
from .test_conv_growth import data as conv_data
from .test_first_order import dag
from .test_first_order import data as dag_data

F64 = torch.float64
propose_module = importlib.import_module("daggrow.grow.propose")
updates_module = importlib.import_module("daggrow.stats.updates")


def random_dag(hidden: int = 8, width: int = 3, seed: int = 0) -> dg.Graph:
    """A chain of ReLU nodes with random skips (several sources and targets per node)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    g = dg.Graph()
    g.add_input("x", 6)
    names = ["x"]
    for i in range(hidden):
        g.add_node(f"h{i}", width, "relu")
        g.add_edge(names[-1], f"h{i}")
        for u in names[:-1]:
            if float(torch.rand((), generator=gen)) < 0.3:
                g.add_edge(u, f"h{i}")
        names.append(f"h{i}")
    g.add_node("y", 4)
    g.add_edge(names[-1], "y")
    g.add_edge("x", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.to(F64)
    return g


def assert_same(a, b) -> None:
    # same ranking up to ties within round-off (e.g. a new node and a new edge of equal gain)
    assert [p.first_order_gain for p in a] == pytest.approx([p.first_order_gain for p in b], rel=1e-10, abs=1e-14)
    key = lambda p: (p.kind, p.where)  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b)) and len(a) == len(b)
    b = {key(q): q for q in b}
    for p in a:
        q = b[key(p)]
        assert (p.kind, p.num_neurons, p.projected, p.round_off) == (q.kind, q.num_neurons, q.projected, q.round_off)
        assert p.eigenvalues == pytest.approx(q.eigenvalues, rel=1e-10, abs=1e-14)
        assert p.first_order_gain == pytest.approx(q.first_order_gain, rel=1e-10, abs=1e-14)
        assert p.bottleneck_decrease == pytest.approx(q.bottleneck_decrease, rel=1e-10, abs=1e-14)
        for x, y in ((p.fan_in, q.fan_in), (p.fan_out, q.fan_out)):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
        if p.weight is not None:
            torch.testing.assert_close(p.weight, q.weight, rtol=1e-10, atol=1e-10)


def both(g, stats, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return propose(g, stats, grouped=True, **kw), propose(g, stats, grouped=False, **kw)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_grouped_equals_per_candidate_on_a_dag_with_every_kind(activation):
    g = dag(activation)
    X, Y = dag_data(n=200)
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    grouped, single = both(g, stats, max_neurons=2)
    assert {p.kind for p in grouped} == {"expand_node", "new_node", "new_edge"}
    assert_same(grouped, single)


def test_grouped_equals_per_candidate_with_skips_relu_pairs_and_the_unprojected_fallback():
    g = random_dag()
    X = torch.randn(300, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    Y = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(4))
    stats = dg.collect_statistics(g, [(X, Y)], "cross_entropy")
    for fallback in (False, True):
        grouped, single = both(g, stats, max_neurons=3, unprojected_fallback=fallback)
        assert len(grouped) > 20 and any(p.num_neurons == 2 * p.num_directions for p in grouped)
        assert any(len(p.sources) > 1 for p in grouped)  # a widened node with several sources
        assert_same(grouped, single)
    # x → y is a skip: a new node x→y has an empty projected problem, solved unprojected
    assert any(not p.projected for p in grouped)


@pytest.mark.parametrize("dim", [1, 2])
def test_grouped_equals_per_candidate_for_new_channels(dim):
    g = cnn("relu", dim, norm="batchnorm")
    X, Y = conv_data(g)
    cands = enumerate_candidates(g)
    stats = dg.collect_statistics(g, [(X, Y)], "mse", plan=statistics_plan(g, cands))
    grouped, single = both(g, stats, candidates=cands, max_neurons=2)
    assert {p.candidate.node for p in grouped if p.kind == "expand_node"} == {"c1", "c2"}
    assert_same(grouped, single)


@pytest.mark.parametrize("grouped", [True, False])
def test_a_candidate_whose_factorisation_fails_is_skipped_with_one_warning(monkeypatch, grouped):
    g = dag("tanh")
    X, Y = dag_data(n=200)
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    every = propose(g, stats, max_neurons=2, grouped=grouped)
    real = updates_module.whitening

    def failing(S, *a, **k):
        if S.shape[0] == 7:  # S of the input x (6 features + constant): every candidate reading x
            raise SolverError("eigh, jitter and SVD all failed")
        return real(S, *a, **k)

    monkeypatch.setattr(updates_module, "whitening", failing)
    stats = dg.collect_statistics(g, [(X, Y)], "mse")  # fresh: S_x's factor is cached with its statistics
    with pytest.warns(CandidateSkippedWarning) as caught:
        kept = propose(g, stats, max_neurons=2, grouped=grouped)
    assert len([w for w in caught if issubclass(w.category, CandidateSkippedWarning)]) == 1
    reading_x = {p.where for p in every if p.sources == ("x",)}  # S is S_x
    assert reading_x and {c.where for c, _ in kept.skipped} >= reading_x
    assert all("SolverError: eigh, jitter and SVD all failed" in why for _, why in kept.skipped)
    # the others are solved as before: skipping is per candidate
    assert kept and {p.where for p in kept} == {p.where for p in every} - {c.where for c, _ in kept.skipped}
    before = {p.where: p for p in every}
    assert all(p.first_order_gain == pytest.approx(before[p.where].first_order_gain, rel=1e-12) for p in kept)


def test_round_off_proposals_rank_last_and_are_flagged_by_their_gain():
    g = random_dag()
    X = torch.randn(300, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    Y = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(4))
    stats = dg.collect_statistics(g, [(X, Y)], "cross_entropy")
    props = propose(g, stats, max_neurons=2)
    for p in props:
        energy = sum(stats.grad_energy(v) for v in p.targets)
        assert p.round_off == (p.first_order_gain <= ROUND_OFF * energy)
    best = props[0]
    # the mobilenet case: a round-off gain must not come first, even above every real gain
    noise = dataclasses.replace(best, first_order_gain=4.6e-21, bottleneck_decrease=1.0, round_off=True)
    loud = dataclasses.replace(best, first_order_gain=10 * best.first_order_gain + 1, round_off=True)
    ranked = sorted([noise, loud, *props], key=rank_key)
    real = [i for i, p in enumerate(ranked) if not p.round_off]
    assert real and max(real) < min(ranked.index(noise), ranked.index(loud))
    assert [p for p in ranked if p is not noise and p is not loud][: len(real)] == props[: len(real)]
    gains = [p.first_order_gain for p in props if not p.round_off]
    assert all(a >= b * (1 + 1e-12) or a == pytest.approx(b, rel=1e-11) for a, b in zip(gains, gains[1:]))


def test_bottleneck_reuses_the_updates_propose_solved():
    from daggrow.grow.propose import bottleneck

    g = dag("tanh")
    X, Y = dag_data(n=200)
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    props = propose(g, stats, max_neurons=2)
    assert set(props.updates) >= {"b", "y"}
    assert bottleneck(g, stats, updates=props.updates) == pytest.approx(bottleneck(g, stats), rel=1e-12)


def test_requests_count_directions_under_either_name():
    """propose(max_directions=K) (max_neurons=K is its older name): K directions, 2K relu neurons."""
    g, (X, Y) = dag("relu"), dag_data()
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new, old, positional = (propose(g, stats, max_directions=2), propose(g, stats, max_neurons=2),
                                propose(g, stats, 2))
    assert [p.where for p in new] == [p.where for p in old] == [p.where for p in positional]
    for a, b in zip(new, old):
        torch.testing.assert_close(a.fan_in, b.fan_in, rtol=0, atol=0)
    assert max(p.num_directions for p in new) == 2
    assert all(p.num_neurons == 2 * p.num_directions for p in new)
    grower = dg.Grower(g, loss="mse", neurons_per_step=3)
    assert grower.directions_per_step == 3 and grower.settings()["directions_per_step"] == 3
    assert dg.Grower(g, loss="mse", directions_per_step=2).directions_per_step == 2
