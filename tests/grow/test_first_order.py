"""Proposals on real graphs: first-order gains vs finite differences of the real loss, the
bottleneck decrease vs explicit per-sample data, and line-searched changes never hurting."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg
from daggrow.compile import node_values
from daggrow.grow.line_search import line_search
from daggrow.grow.propose import apply, node_update, propose
from daggrow.stats import per_sample_loss

from ..graphs import skip_dag


def dag(activation: str, seed: int = 0) -> dg.Graph:
    return skip_dag((6, 3, 2, 4), (activation, activation), seed)


def data(seed: int = 1, n: int = 300):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    Y = torch.sin(X[:, :4] * 2) + 0.1 * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return X, Y


def loss_of(g: dg.Graph, X, Y) -> float:
    with torch.no_grad():
        return float(per_sample_loss("mse", g.compile()(X), Y).mean())


@pytest.mark.parametrize("activation", ["identity", "tanh", "selu", "relu"])
def test_first_order_gain_matches_finite_differences(activation):
    g = dag(activation)
    X, Y = data()
    stats = dg.collect_statistics(g, [(X[:100], Y[:100]), (X[100:], Y[100:])], "mse")
    proposals = propose(g, stats, max_neurons=2)
    kinds = {p.kind for p in proposals}
    assert {"expand_node", "new_node", "new_edge"} <= kinds
    base = loss_of(g, X, Y)
    for p in proposals:
        assert p.first_order_gain > 0
        gamma = 1e-5
        measured = (base - loss_of(apply(g, p, gamma), X, Y)) / gamma
        assert measured == pytest.approx(p.first_order_gain, rel=0.03, abs=1e-9), p


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_best_update_first_order_gain(activation):
    g = dag(activation)
    X, Y = data()
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    base = loss_of(g, X, Y)
    for node in ("a", "b", "y"):
        upd = node_update(g, stats, node)
        eta = 1e-6
        from daggrow.grow.rewrite import update_weights

        new = update_weights(g, {e: (eta * dw, None if db is None else eta * db) for e, (dw, db) in upd.edges.items()})
        measured = (base - loss_of(new, X, Y)) / eta
        assert measured == pytest.approx(upd.first_order_gain, rel=0.02), node


def explicit(g: dg.Graph, X, Y):
    """Per-sample values h and desired moves v = −∂ℓ_i/∂z of every node (brute force)."""
    values = node_values(g, (X,))
    values = {k: v.detach() for k, v in values.items()}
    zs = {}
    h = {"x": X}
    for node in g.topological_order()[1:]:
        z = sum(g.module(e.name)(h[e.source]) for e in g.in_edges(node))
        zs[node] = z
        h[node] = dg.graph.get_activation(g.node(node).activation).function(z)
    loss = per_sample_loss("mse", h["y"], Y).sum()
    grads = torch.autograd.grad(loss, list(zs.values()))
    return values, {k: -gr.detach() for k, gr in zip(zs, grads)}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_bottleneck_decrease_equals_sum_of_squared_eigenvalues(activation):
    """Σλ² from the streamed statistics equals the drop of (1/n)‖V⊥_T − ΩAᵀB_U‖² on explicit data,
    for expand-node with several sources (x, a → b) and new nodes."""
    g = dag(activation)
    X, Y = data(n=250)
    n = X.shape[0]
    stats = dg.collect_statistics(g, [(X[:120], Y[:120]), (X[120:], Y[120:])], "mse")
    values, moves = explicit(g, X, Y)
    one = torch.ones(n, 1, dtype=torch.float64)

    def v_perp(v):
        upd = node_update(g, stats, v)
        srcs = [g.edge(e).source for e in upd.edges]
        B_in = torch.cat([values[s] for s in srcs] + [one], 1)
        return moves[v] - B_in @ upd.solution.delta.T

    checked = set()
    for p in propose(g, stats, max_neurons=3):
        if p.kind == "new_edge":
            continue
        B = torch.cat([values[s] for s in p.sources] + ([one] if p.bias else []), 1)
        # projected proposals fit V⊥ (docs/math.md §5); the unprojected fallback fits V itself
        Vp = torch.cat([v_perp(t) if p.projected else moves[t] for t in p.targets], 1)
        before = (Vp ** 2).sum() / n
        after = ((Vp - B @ p.fan_in @ p.fan_out.T) ** 2).sum() / n
        assert float(before - after) == pytest.approx(sum(l ** 2 for l in p.eigenvalues), rel=1e-8), p
        V = torch.cat([moves[t] for t in p.targets], 1)
        assert float((V * (B @ p.fan_in @ p.fan_out.T)).sum() / n) == pytest.approx(p.first_order_gain, rel=1e-8)
        if p.projected:
            checked.add(p.where)
    # several sources (b reads a and x), several targets (a writes into b and y), and a new node
    assert {"expand a", "expand b", "new node x->y"} <= checked


def test_line_searched_change_never_raises_held_out_loss():
    g = dag("relu")
    X, Y = data(n=400)
    stats = dg.collect_statistics(g, [(X[:300], Y[:300])], "mse")
    held_out = (X[300:], Y[300:])
    for p in propose(g, stats, max_neurons=2):
        r = line_search(g, p, held_out, "mse")
        assert r.loss_after <= r.loss_before
        # grid of 10 (+ γ = 0, known), at most 14 doublings of the bound 4 (to 2^16) when it
        # wins, then 16 refinement points in two batched rounds
        assert r.evaluations <= 10 + 14 + 16
        assert loss_of(apply(g, p, r.amplitude), *held_out) == pytest.approx(r.loss_after, rel=1e-10)
        assert loss_of(g, *held_out) == pytest.approx(r.loss_before, rel=1e-12)


def test_amplitude_zero_keeps_outputs_for_every_proposal():
    g = dag("selu")
    X, Y = data()
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    out = g.compile()(X)
    for init in ("tiny", "gradmax", "north", "random", "zero"):
        for p in propose(g, stats, max_neurons=2, init=init, generator=torch.Generator().manual_seed(0)):
            # equal up to summation order (a wider GEMM may block differently): float64 round-off only
            torch.testing.assert_close(apply(g, p, 0.0).compile()(X), out, rtol=0, atol=1e-13)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_widening_a_chain_node_is_proposed_as_a_new_node(activation):
    """x → h → y: widening h and a new node x → n → y are the same change (same eigenvalues, same
    gain, the same outputs at every amplitude); only the new node is proposed when both are asked."""
    g = skip_dag((6, 3, 2, 4), (activation, activation))
    chain = dg.Graph()
    chain.add_input("x", 6)
    chain.add_node("h", 3, activation)
    chain.add_node("y", 4)
    chain.add_edge("x", "h")
    chain.add_edge("h", "y")
    chain.set_output("y")
    for p in chain.parameters():
        p.data = p.data.to(torch.float64)
    X, Y = data()
    stats = dg.collect_statistics(chain, [(X, Y)], "mse")
    both = propose(chain, stats, max_neurons=2, kinds=("expand_node", "new_node"), new_node_activation=activation)
    by_where = {p.candidate.where: p for p in both}
    assert "expand h" not in by_where and "new node x->y" in by_where
    (expand,) = propose(chain, stats, max_neurons=2, kinds=("expand_node",), new_node_activation=activation)
    new = by_where["new node x->y"]
    assert expand.eigenvalues == pytest.approx(new.eigenvalues, rel=1e-10)
    assert expand.first_order_gain == pytest.approx(new.first_order_gain, rel=1e-10)
    for gamma in (0.5, 2.0):
        assert loss_of(apply(chain, expand, gamma), X, Y) == pytest.approx(loss_of(apply(chain, new, gamma), X, Y),
                                                                          rel=1e-10)
    # a node that is not a plain chain link (two in-edges) is still widened
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    wheres = {p.candidate.where for p in propose(g, stats, max_neurons=2, new_node_activation=activation)}
    assert "expand b" in wheres and "expand a" in wheres
