"""Rewrites preserve the function at amplitude 0, keep the graph valid, and are atomic."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daggrow as dg
from daggrow.grow import rewrite
from daggrow.grow.candidates import enumerate_candidates, expandable

from ..graphs import one_hidden

ACTS = ["identity", "relu", "tanh", "selu", "gelu", "sigmoid", "leaky_relu"]


@st.composite
def random_dags(draw):
    torch.manual_seed(draw(st.integers(0, 10_000)))
    g = dg.Graph()
    n_in = draw(st.integers(1, 2))
    names = []
    for i in range(n_in):
        g.add_input(f"x{i}", draw(st.integers(1, 4)))
        names.append(f"x{i}")
    for j in range(draw(st.integers(1, 4))):
        name = f"h{j}"
        g.add_node(name, draw(st.integers(1, 4)), draw(st.sampled_from(ACTS)),
                   norm=draw(st.sampled_from([None, None, "batchnorm"])))
        sources = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        for s in sources:
            g.add_edge(s, name, bias=draw(st.booleans()))
        names.append(name)
    g.add_node("y", draw(st.integers(1, 3)))
    for s in names[n_in:] + draw(st.lists(st.sampled_from(names[:n_in]), max_size=1)):
        g.add_edge(s, "y")
    for s in names[:n_in]:
        if not g.out_edges(s):
            g.add_edge(s, names[n_in])
    g.set_output("y")
    return g


def inputs_for(g: dg.Graph, n: int = 7):
    return tuple(torch.randn(n, g.node(i).width) for i in g.inputs)


def outputs(g: dg.Graph, xs, train: bool = False):
    """Outputs in eval or train mode; train mode runs on a copy (it updates BatchNorm statistics)."""
    m = (g.copy() if train else g).compile()
    m.train(train)
    with torch.no_grad():
        return m(*xs)


def random_rewrite(g: dg.Graph, data) -> dg.Graph:
    """One rewrite of a random kind at amplitude 0 (zero new weights or zero update)."""
    cands = enumerate_candidates(g)
    c = data.draw(st.sampled_from(cands))
    k = data.draw(st.integers(1, 3))
    if c.kind == "expand_node":
        fan_in = {e: torch.zeros(k, g.node(g.edge(e).source).width) for e in c.in_edges}
        # fan-out may be anything when fan-in is zero only for activations with σ(0)=0: use zeros
        fan_out = {e: torch.zeros(g.node(g.edge(e).target).width, k) for e in c.out_edges}
        return rewrite.add_neurons(g, c.node, fan_in, fan_out, step=g.step + 1)
    u, v = c.sources[0], c.targets[0]
    if c.kind == "new_node":
        return rewrite.new_node(g, u, v, f"n{g.step + 1}", torch.randn(k, g.node(u).width), torch.zeros(g.node(v).width, k),
                                torch.randn(k), activation=data.draw(st.sampled_from(ACTS)), step=g.step + 1)
    return rewrite.new_edge(g, u, v, torch.zeros(g.node(v).width, g.node(u).width), torch.zeros(g.node(v).width),
                            step=g.step + 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags(), st.data())
def test_rewrites_at_amplitude_zero_preserve_outputs(g, data):
    xs = inputs_for(g)
    # give BatchNorms non-trivial running statistics first
    m = g.compile()
    m.train()
    with torch.no_grad():
        m(*inputs_for(g, 16))
    before_eval, before_train = outputs(g, xs), outputs(g, xs, train=True)
    spec_before = g.spec()
    for _ in range(data.draw(st.integers(1, 4))):
        new = random_rewrite(g, data)
        new.validate()
        assert g.spec() == spec_before  # pure: the input graph is untouched
        g, spec_before = new, new.spec()
    torch.testing.assert_close(outputs(g, xs), before_eval, rtol=0, atol=1e-6)
    torch.testing.assert_close(outputs(g, xs, train=True), before_train, rtol=0, atol=1e-5)


def small_graph() -> dg.Graph:
    return one_hidden((3, 2, 2), "relu")


def snapshot(g: dg.Graph):
    return g.spec(), {k: p.detach().clone() for k, p in g.named_parameters()}


def assert_unchanged(g, snap):
    spec, params = snap
    assert g.spec() == spec
    now = dict(g.named_parameters())
    assert now.keys() == params.keys()
    for k in params:
        assert torch.equal(now[k], params[k])


def test_failing_rewrites_leave_the_graph_unchanged():
    g = small_graph()
    snap = snapshot(g)
    with pytest.raises(dg.GraphError, match="disagree on the number of new neurons"):
        rewrite.add_neurons(g, "h", {"x_to_h": torch.zeros(2, 3)}, {"h_to_y": torch.zeros(2, 3)})
    with pytest.raises(dg.GraphError, match="cannot gain neurons"):
        rewrite.add_neurons(g, "y", {}, {})
    with pytest.raises(dg.GraphError):
        rewrite.new_node(g, "y", "h", "bad", torch.zeros(1, 2), torch.zeros(2, 1))  # cycle
    with pytest.raises(dg.WidthMismatchError):
        rewrite.new_edge(g, "x", "y", torch.zeros(2, 4))  # wrong weight shape
    with pytest.raises(dg.IncompleteGraphError):
        rewrite.remove_edge(g, "x_to_h")  # h would become unreachable
    with pytest.raises(dg.GraphError, match="all 2 neurons"):
        rewrite.remove_neurons(g, "h", [0, 1])
    assert_unchanged(g, snap)


def test_remove_neurons_drops_their_contribution():
    g = small_graph()
    x = torch.randn(5, 3)
    grown = rewrite.add_neurons(g, "h", {"x_to_h": torch.randn(2, 3)}, {"h_to_y": torch.randn(2, 2)}, step=1)
    assert grown.node("h").width == 4
    assert grown.growth_log[-1].neurons == {"h": (2, 4)}
    pruned = rewrite.remove_neurons(grown, "h", [2, 3], step=2)
    torch.testing.assert_close(outputs(pruned, (x,)), outputs(g, (x,)))


def test_update_weights_adds_the_delta():
    g = small_graph()
    dw, db = torch.randn(2, 2), torch.randn(2)
    new = rewrite.update_weights(g, {"h_to_y": (dw, db)}, step=1)
    torch.testing.assert_close(new.module("h_to_y").weight, g.module("h_to_y").weight + dw)
    torch.testing.assert_close(new.module("h_to_y").bias, g.module("h_to_y").bias + db)


def test_new_parts_are_recorded():
    g = small_graph()
    new = rewrite.new_node(g, "x", "y", "n1", torch.randn(3, 3), torch.zeros(2, 3), torch.zeros(3), step=1)
    assert new.node("n1").born == 1
    assert {new.edge(e).born for e in new.growth_log[-1].edges} == {1}
    assert new.growth_log[-1].action == "new_node"
    assert expandable(new, "n1")
