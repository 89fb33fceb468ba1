"""Compilation: readable code, shared parameters, taps, several outputs, dtypes and devices."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg
from daggrow.compile import eval_mode, node_values

from ..graphs import one_hidden


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


# ---------------------------------------------------------------- the compile cache
def _small_graph() -> dg.Graph:
    return one_hidden((3, 4, 2), "relu")


def test_compile_cache_returns_the_same_module_until_a_mutation():
    from daggrow.grow.rewrite import add_neurons

    g = _small_graph()
    first = g.compile()
    assert g.compile() is first and g.compile(taps=True) is not first
    assert g.compile(taps=True) is g.compile(taps=True)
    with torch.no_grad():  # training changes parameters in place: still the same module, new values
        next(g.parameters()).add_(1.0)
    x = torch.randn(5, 3)
    assert g.compile() is first
    torch.testing.assert_close(first(x), g.compile(device="cpu")(x))
    g.add_node("z", 2, "tanh")  # a mutation: rebuilt
    g.add_edge("x", "z")
    g.add_edge("z", "y")
    second = g.compile()
    assert second is not first and second(x).shape == (5, 2)
    g.remove_edge(next(e.name for e in g.in_edges("y") if e.source == "z"))
    g.remove_node("z")
    assert g.compile() is not second
    third = g.compile()
    g._replace_edge_module(g.in_edges("y")[0].name, torch.nn.Linear(4, 2))  # a module swapped
    assert g.compile() is not third
    fourth = g.compile()
    e_in, e_out = g.in_edges("h")[0].name, g.out_edges("h")[0].name
    grown = add_neurons(g, "h", {e_in: torch.ones(1, 3)}, {e_out: torch.ones(2, 1)})  # a new graph
    assert grown.compile() is not fourth and g.copy().compile() is not fourth and g.compile() is fourth
    g.set_output("y", "h")
    assert g.compile() is not fourth and len(g.compile()(x)) == 2
