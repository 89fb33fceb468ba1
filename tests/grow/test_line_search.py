"""The line search's batched evaluation of a change (no graph copy) against the applied graph
run in full, at every amplitude; the amplitude search's grid, bound doubling and refinement."""

from __future__ import annotations

import math

import pytest
import torch

import daggrow as dg
from daggrow.compile import eval_mode
from daggrow.grow.line_search import BatchEvaluator, Change, amplitude_search, changed_nodes, line_search
from daggrow.grow.propose import apply, propose
from daggrow.stats import per_sample_loss

from .test_conv_growth import cnn
from .test_conv_growth import data as conv_data
from .test_conv_growth import proposals as conv_proposals
from .test_first_order import dag
from .test_first_order import data as dag_data

GAMMAS = [0.3, 1.7, 4.0, 0.0, 37.5]


def full_loss(g: dg.Graph, X: torch.Tensor, Y: torch.Tensor, loss="mse") -> float:
    with torch.no_grad(), eval_mode(g):
        return float(per_sample_loss(loss, g.compile()(X), Y).mean())


def check_every_amplitude(g: dg.Graph, props, X, Y, loss="mse") -> set[str]:
    ev = BatchEvaluator(g, (X, Y), loss)
    assert ev.base_loss == pytest.approx(full_loss(g, X, Y, loss), rel=1e-12)
    for p in props:
        batched = ev.losses(Change(g, p), GAMMAS)
        for gamma, fast in zip(GAMMAS, batched):
            assert fast == pytest.approx(full_loss(apply(g, p, gamma), X, Y, loss), rel=1e-10), (p, gamma)
        # one amplitude per pass gives the same numbers
        single = [ev.losses(Change(g, p), [gamma])[0] for gamma in GAMMAS]
        assert single == pytest.approx(batched, rel=1e-12)
        assert ev.loss(apply(g, p, 1.7), changed_nodes(p)) == pytest.approx(batched[1], rel=1e-10)
    return {p.kind for p in props}


def test_dag_expansions_new_nodes_and_new_edges():
    g = dag("tanh")
    X, Y = dag_data(n=200)
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    kinds = check_every_amplitude(g, propose(g, stats, max_neurons=2), X, Y)
    assert kinds == {"expand_node", "new_node", "new_edge"}


def test_relu_pairs_and_cross_entropy():
    g = dag("relu")
    X, Y = dag_data(n=150)
    labels = Y.argmax(1)
    stats = dg.collect_statistics(g, [(X, labels)], "cross_entropy")
    props = propose(g, stats, max_neurons=2)
    assert any(p.num_neurons == 2 * p.num_directions for p in props)
    check_every_amplitude(g, props, X, labels, "cross_entropy")


def test_chunked_passes_give_the_same_losses(monkeypatch):
    g = dag("tanh")
    X, Y = dag_data(n=100)
    p = propose(g, dg.collect_statistics(g, [(X, Y)], "mse"), max_neurons=2)[0]
    ev = BatchEvaluator(g, (X, Y), "mse")
    whole = ev.losses(Change(g, p), GAMMAS)
    import importlib
    module = importlib.import_module("daggrow.grow.line_search")
    assert module.stacked_values(torch.device("cpu")) == module.CPU_STACKED_VALUES
    assert module.stacked_values(torch.device("cuda")) == module.STACKED_VALUES
    monkeypatch.setattr(module, "CPU_STACKED_VALUES", 1)  # one amplitude per pass
    assert ev.losses(Change(g, p), GAMMAS) == pytest.approx(whole, rel=1e-12)


@pytest.mark.parametrize("dim", [1, 2])
def test_conv_channels_with_batchnorm_into_conv_and_flattening_linear_targets(dim):
    g = cnn("relu", dim, norm="batchnorm")
    X, Y = conv_data(g)
    with torch.no_grad():  # non-trivial running statistics
        g.compile().train()(X)
    props = conv_proposals(g, X, Y, max_neurons=2)
    assert {p.candidate.node for p in props} == {"c1", "c2"}  # targets c2 (conv) and y (flatten)
    check_every_amplitude(g, props, X, Y)


def test_amplitude_search_finds_an_interior_minimum_beyond_the_initial_bound():
    calls = []

    def losses(gs):
        calls.append(len(gs))
        return [(math.log(g) - math.log(100.0)) ** 2 if g > 0 else 50.0 for g in gs]

    gamma, value, evaluations = amplitude_search(losses, 50.0, upper=4.0, grid=10, refine=16)
    assert 64.0 < gamma < 256.0 and abs(gamma - 100.0) < 10.0  # the bound doubled past 100
    assert value == pytest.approx(min((math.log(gamma) - math.log(100.0)) ** 2, 50.0))
    assert evaluations == sum(calls) and len(calls) <= 5  # batched: a few passes, not one per point


def test_amplitude_search_stops_doubling_at_max_upper_and_keeps_zero():
    gamma, _, _ = amplitude_search(lambda gs: [-g for g in gs], 0.0, upper=4.0, max_upper=64.0)
    assert gamma == 64.0
    gamma, value, _ = amplitude_search(lambda gs: [1.0 + g for g in gs], 1.0, upper=4.0)
    assert (gamma, value) == (0.0, 1.0)


def test_line_search_never_raises_the_loss_and_copies_no_graph(monkeypatch):
    g = dag("tanh")
    X, Y = dag_data(n=120)
    props = propose(g, dg.collect_statistics(g, [(X, Y)], "mse"), max_neurons=2)

    def no_copy(*_a, **_k):
        raise AssertionError("the line search copied the graph")

    monkeypatch.setattr(dg.Graph, "copy", no_copy)
    monkeypatch.setattr(dg.Graph, "__deepcopy__", no_copy)
    for p in props[:4]:
        r = line_search(g, p, (X, Y), "mse")
        assert r.loss_after <= r.loss_before and r.amplitude >= 0


def test_searches_in_lockstep_equal_one_at_a_time():
    from daggrow.grow.line_search import line_search_many

    g = dag("relu")
    X, Y = dag_data(n=150)
    props = propose(g, dg.collect_statistics(g, [(X, Y)], "mse"), max_neurons=2)[:6]
    many = line_search_many(g, props, (X, Y), "mse", upper=1.0)
    for p, r in zip(props, many):
        one = line_search(g, p, (X, Y), "mse", upper=1.0)
        assert (r.amplitude, r.evaluations) == (one.amplitude, one.evaluations)
        assert r.loss_after == pytest.approx(one.loss_after, rel=1e-12)
    assert len({p.kind for p in props}) > 1


def test_an_op_node_downstream_of_the_change():
    from tests.graph.test_op_nodes import gated_graph

    g = gated_graph()
    for p in g.parameters():
        p.data = p.data.double()
    X = torch.randn(60, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    Y = torch.randn(60, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    props = [p for p in propose(g, dg.collect_statistics(g, [(X, Y)], "mse"), max_neurons=2)
             if p.candidate.targets[0] in ("h", "s")]  # the op node m reads the target
    assert props
    check_every_amplitude(g, props, X, Y)


def test_search_many_without_a_batched_runner_searches_one_by_one():
    from daggrow.grow.strategies import SelectionContext

    g = dag("tanh")
    X, Y = dag_data(n=80)
    props = propose(g, dg.collect_statistics(g, [(X, Y)], "mse"), max_neurons=2)[:3]
    ctx = SelectionContext(graph=g, step=0, bottlenecks={}, loss="mse", num_samples=80,
                           run_search=lambda p: line_search(g, p, (X, Y), "mse"))
    results = ctx.search_many(props + props[:1])
    assert len(results) == 4 and results[3] is results[0]
    assert [r.amplitude for r in results[:3]] == [line_search(g, p, (X, Y), "mse").amplitude for p in props]
