"""Statistics of tokens nodes: a per-token linear edge reads one row per (sample, token); sums run
over tokens and are divided by the number of samples, as for conv positions (the count
convention of daggrow.stats.views), checked against explicit per-sample tensors."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg
from daggrow.compile import node_values
from daggrow.stats import per_sample_loss
from daggrow.stats.views import View, node_view

F64 = torch.float64
T = 4


def token_graph() -> dg.Graph:
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 3, (T,), layout="tokens")
    g.add_node("h", 5, "tanh", shape=(T,), layout="tokens")
    g.add_node("y", 2, shape=(T,), layout="tokens")
    g.add_edge("x", "h", name="a")
    g.add_edge("h", "y", name="b")
    g.add_edge("x", "y", name="skip")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.to(F64)
    return g


def data(n: int = 30):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, T, 3, generator=gen, dtype=F64)
    return x, torch.sin(x[..., :2] * 2)


def test_a_tokens_node_is_read_per_token():
    g = token_graph()
    assert node_view(g, "h") == View("h", "tokens", 1) and node_view(g, "h").key == "h"
    h = torch.randn(6, T, 5)
    assert torch.equal(node_view(g, "h").rows(h), h.reshape(6 * T, 5))


def test_moments_sum_over_tokens_and_average_over_samples():
    g = token_graph()
    x, y = data()
    stats = dg.collect_statistics(g, [(x[:10], y[:10]), (x[10:], y[10:])], "mse")
    n = x.shape[0]
    h = node_values(g, (x,))["h"].detach()
    z = (g.module("b")(h) + g.module("skip")(x)).detach().requires_grad_()
    (grad,) = torch.autograd.grad(per_sample_loss("mse", z, y).sum(), z)
    v = -grad
    b = torch.cat([h, torch.ones(n, T, 1, dtype=F64)], -1).reshape(n * T, 6)   # [h; 1] per (sample, token)
    torch.testing.assert_close(stats.moment(["h"], ["h"]), b.T @ b / n)
    torch.testing.assert_close(stats.grad_moment(["h"], ["y"]), b.T @ v.reshape(n * T, 2) / n)
    assert stats.grad_energy("y") == pytest.approx(float((v ** 2).sum() / n))
    assert stats.moment(["h"], ["h"])[-1, -1] == pytest.approx(T)            # the bias row counts tokens


def test_new_neurons_in_a_tokens_node_match_finite_differences():
    g = token_graph()
    x, y = data()
    stats = dg.collect_statistics(g, [(x, y)], "mse", kinds=["expand_node"])
    (p,) = dg.propose(g, stats, max_neurons=2, kinds=["expand_node"])
    assert p.where == "expand h" and p.fan_in.shape == (4, 2)                  # 3 features + bias
    def loss(graph):
        with torch.no_grad():
            return float(per_sample_loss("mse", graph.compile()(x), y).mean())
    base, gamma = loss(g), 1e-6
    assert (base - loss(dg.apply(g, p, gamma))) / gamma == pytest.approx(p.first_order_gain, rel=0.02)
    assert loss(dg.apply(g, p, 0.0)) == base
    grown = dg.apply(g, p, 1.0)
    assert grown.node("h").width == 5 + p.num_neurons and grown.module("b").weight.shape == (2, 5 + p.num_neurons)
