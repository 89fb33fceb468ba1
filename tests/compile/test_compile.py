"""Compilation: readable code, shared parameters, taps, several outputs, dtypes and devices."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg
from daggrow.compile import eval_mode, node_values


def graph() -> dg.Graph:
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("h", 3, "relu")
    g.add_node("k", 3, "tanh", norm="batchnorm", dropout=0.5)
    g.add_node("y", 2)
    g.add_edge("x", "h", name="a")
    g.add_edge("h", "k", name="b")
    g.add_edge("h", "k", "identity")
    g.add_edge("k", "y", name="c")
    g.add_edge("x", "y", name="skip")
    g.set_output("y")
    return g


def test_generated_code_is_readable():
    code = graph().compile().code
    for line in ("def forward(self, x):", "a = self.a(x)", "h = torch.relu(a)", "self.norm_k(", "torch.tanh(",
                 "self.dropout_k(", "y = c + skip"):
        assert line in code, (line, code)


def test_parameters_are_shared_with_the_graph():
    g = graph()
    m = g.compile()
    assert m.a is g.module("a")
    before = g.module("a").weight.clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.randn(8, 4)).sum().backward()
    opt.step()
    assert not torch.equal(g.module("a").weight, before)


def test_taps_and_node_values_give_the_same_outputs():
    g = graph()
    x = torch.randn(6, 4)
    plain, tapped = g.compile().eval(), g.compile(taps=True).eval()
    torch.testing.assert_close(tapped(x), plain(x), rtol=0, atol=0)
    plain.train()  # the modules are shared: now all in train mode
    with torch.no_grad(), eval_mode(g):
        torch.testing.assert_close(node_values(g, (x,))["y"], plain.eval()(x))
        plain.train()
    assert g.norm_module("k").training and g.module("a").training  # eval_mode restored the flags


def test_several_outputs_return_a_tuple():
    g = graph()
    g.set_output("y", "h")
    y, h = g.compile()(torch.randn(2, 4))
    assert y.shape == (2, 2) and h.shape == (2, 3)


def test_float64_matches_a_hand_written_forward():
    g = graph()
    m = g.compile().double().train()
    m(torch.randn(16, 4, dtype=torch.float64))  # running statistics away from (0, 1)
    m.eval()
    x = torch.randn(7, 4, dtype=torch.float64)
    lin = {e: g.module(e) for e in ("a", "b", "c", "skip")}
    assert all(p.dtype == torch.float64 for p in g.parameters())  # the graph's own modules, shared
    bn = g.norm_module("k")
    h = torch.relu(x @ lin["a"].weight.T + lin["a"].bias)
    z = h @ lin["b"].weight.T + lin["b"].bias + h
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    k = torch.tanh(z)  # dropout is the identity in eval mode
    y = k @ lin["c"].weight.T + lin["c"].bias + x @ lin["skip"].weight.T + lin["skip"].bias
    out = m(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_cuda_compile_matches_cpu():
    g = graph()
    x = torch.randn(5, 4)
    ref = g.compile().eval()(x)
    m = g.compile(device="cuda").eval()
    torch.testing.assert_close(m(x.cuda()).cpu(), ref, rtol=1e-5, atol=1e-6)
