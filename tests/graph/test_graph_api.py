"""The programmatic API of docs/api.md §1 and every refused operation (graph left unchanged)."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg


def api_graph() -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", width=40)
    g.add_node("h", width=2, activation="relu")
    g.add_node("y", width=10)
    g.add_edge("x", "h"); g.add_edge("h", "y"); g.add_edge("x", "y")
    g.set_output("y")
    return g


def snapshot(g: dg.Graph):
    return g.spec(), {k: p.detach().clone() for k, p in g.named_parameters()}


def assert_unchanged(g: dg.Graph, snap) -> None:
    spec, params = snap
    assert g.spec() == spec
    now = dict(g.named_parameters())
    assert now.keys() == params.keys()
    assert all(torch.equal(now[k], v) for k, v in params.items())


def test_api_example_builds_compiles_and_runs():
    g = api_graph()
    m = g.compile()
    assert isinstance(m, torch.fx.GraphModule)
    y = m(torch.randn(4, 40))
    assert y.shape == (4, 10)
    assert list(g.nodes) == ["x", "h", "y"]
    assert list(g.edges) == ["x_to_h", "h_to_y", "x_to_y"]
    assert g.num_parameters() == (40 * 2 + 2) + (2 * 10 + 10) + (40 * 10 + 10)
    # the function is what the graph says: y = W_hy relu(W_xh x + b) + W_xy x + b's
    x = torch.randn(3, 40)
    ref = g.module("h_to_y")(torch.relu(g.module("x_to_h")(x))) + g.module("x_to_y")(x)
    torch.testing.assert_close(m(x), ref)


def test_queries():
    g = api_graph()
    assert g.predecessors("y") == ["h", "x"]
    assert g.successors("x") == ["h", "y"]
    assert [e.name for e in g.in_edges("y")] == ["h_to_y", "x_to_y"]
    assert [e.name for e in g.out_edges("h")] == ["h_to_y"]
    assert g.inputs == ["x"] and g.outputs == ["y"]
    assert g.node("h").activation == "relu" and g.node("h").width == 2
    assert g.edge("x_to_h").block.kind == "linear"
    assert g.is_ancestor("x", "y") and not g.is_ancestor("y", "x")
    assert g.descendants("x") == {"h", "y"}
    assert g.topological_order() == ["x", "h", "y"]
    assert "h" in g and len(g) == 3
    text = g.summary()
    assert "x (input)" in text and "y (output)" in text and "522 parameters" in text
    assert "h[linear,30], x[linear,410]" in text and "x[linear,82]" in text
    assert text.splitlines()[-1] == "3 nodes, 3 edges, 522 parameters, growth step 0"
    assert repr(g) == "daggrow.Graph\n" + text


def test_num_parameters_counts_trainable_ones_on_request():
    g = api_graph()
    g.module("x_to_y").weight.requires_grad_(False)
    assert g.num_parameters() == 522
    assert g.num_parameters(trainable_only=True) == 522 - 400
    assert dict(g.named_parameters()).keys() == {
        f"edge:{e}.{p}" for e in ("x_to_h", "h_to_y", "x_to_y") for p in ("weight", "bias")}


def test_copy_is_independent():
    g = api_graph()
    c = g.copy()
    with torch.no_grad():
        c.module("x_to_h").weight.add_(1.0)
    c.add_node("z", 3)
    assert "z" not in g
    assert not torch.equal(c.module("x_to_h").weight, g.module("x_to_h").weight)
    snap = snapshot(c)
    g.remove_edge("x_to_y")
    g.step = 5
    with torch.no_grad():
        g.module("h_to_y").bias.zero_()
    assert_unchanged(c, snap)
    assert c.step == 0 and "x_to_y" in c.edges


def test_parallel_edges_and_identity_skip():
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node("h", 3, "tanh")
    g.add_edge("x", "h")
    g.add_edge("x", "h", "identity")
    g.set_output("h")
    x = torch.randn(5, 3)
    torch.testing.assert_close(g.compile()(x), torch.tanh(g.module("x_to_h")(x) + x))
    g.add_edge("x", "h", dg.IdentityBlock(scale=-0.5), name="half")
    torch.testing.assert_close(g.compile()(x), torch.tanh(g.module("x_to_h")(x) + 0.5 * x))


def test_remove_node_and_edge():
    g = api_graph()
    g.remove_edge("x_to_y")
    assert "x_to_y" not in g.edges
    g.remove_node("h")
    assert list(g.edges) == [] and list(g.nodes) == ["x", "y"]
    with pytest.raises(dg.IncompleteGraphError, match="'x' does not lead to any output"):
        g.compile()


@pytest.mark.parametrize("operation, error, pattern", [
    (lambda g: g.add_node("h", 3), dg.DuplicateNameError, "already exists"),
    (lambda g: g.add_input("x", 3), dg.DuplicateNameError, "already exists"),
    (lambda g: g.add_edge("x", "h", name="x_to_h"), dg.DuplicateNameError, "already exists"),
    (lambda g: g.add_edge("x", "nope"), dg.UnknownNameError, "no node named 'nope'"),
    (lambda g: g.add_edge("y", "h"), dg.CycleError, "would create a cycle"),
    (lambda g: g.add_edge("h", "h"), dg.CycleError, "would create a cycle"),
    (lambda g: g.add_edge("x", "h", "identity"), dg.WidthMismatchError, r"width 40.*width 2"),
    (lambda g: g.add_edge("h", "x"), dg.GraphError, "inputs have no in-edges"),
    (lambda g: g.add_node("z", 3, "swish"), dg.GraphError, "unknown activation 'swish'; known activations"),
    (lambda g: g.add_node("z", 0), dg.GraphError, "invalid node"),
    (lambda g: g.add_node("z", 3, "relu", activation_params={"alpha": 1.0}), dg.GraphError, "takes no parameter"),
    (lambda g: g.add_edge("x", "h", module=torch.nn.Linear(3, 3)), dg.WidthMismatchError, r"needs a weight of shape \(2, 40\)"),
    (lambda g: g.add_edge("x", "h", bias=False, module=torch.nn.Linear(40, 2)), dg.GraphError, "bias"),
    (lambda g: g.add_edge("x", "h", "conv"), dg.GraphError, "unknown block"),
    (lambda g: g.remove_edge("nope"), dg.UnknownNameError, "no edge named"),
    (lambda g: g.remove_node("nope"), dg.UnknownNameError, "no node named"),
    (lambda g: g.set_output("x"), dg.GraphError, "cannot be an output"),
    (lambda g: g.set_output("nope"), dg.UnknownNameError, "no node named"),
    (lambda g: g.set_output(), dg.GraphError, "at least one"),
])
def test_refused_operations_leave_the_graph_unchanged(operation, error, pattern):
    g = api_graph()
    snap = snapshot(g)
    with pytest.raises(error, match=pattern):
        operation(g)
    assert_unchanged(g, snap)


def test_incomplete_graphs_are_refused_at_compile_and_save(tmp_path):
    g = dg.Graph()
    with pytest.raises(dg.IncompleteGraphError, match="no input"):
        g.compile()
    g.add_input("x", 2)
    g.add_node("y", 2)
    g.add_edge("x", "y")
    with pytest.raises(dg.IncompleteGraphError, match="no output"):
        g.save(tmp_path / "a")
    g.set_output("y")
    g.add_node("orphan", 2)
    with pytest.raises(dg.IncompleteGraphError, match="'orphan' is not reachable"):
        g.compile()
    g.add_edge("x", "orphan")
    with pytest.raises(dg.IncompleteGraphError, match="'orphan' does not lead to any output"):
        g.save(tmp_path / "b")
    assert not (tmp_path / "b" / "graph.json").exists()

