"""Op nodes in the graph API: a node whose value is a program of its operand edges' sources."""

from __future__ import annotations

import operator

import pytest
import torch

import daggrow as dg
from daggrow.graph.opaque import Call, OpaqueOp, Ref, UnsafeOpError, decode, encode
from daggrow.graph.spec import OpSpec, OpStep
from daggrow.grow import enumerate_candidates, expandable


def product() -> OpaqueOp:
    """``a * sigmoid(b)`` with a trainable scale: a program of three steps."""
    spec = OpSpec(inputs=2, steps=[OpStep(call="function", target="torch.sigmoid", args=[{"ref": 1}]),
                                   OpStep(call="constant", target="p0"),
                                   OpStep(call="function", target="operator.mul", args=[{"ref": 0}, {"ref": 2}]),
                                   OpStep(call="function", target="operator.mul", args=[{"ref": 4}, {"ref": 3}])],
                  output=5, label="mul")
    return OpaqueOp(spec, constants={"p0": torch.nn.Parameter(torch.tensor(2.0))})


def gated_graph() -> dg.Graph:
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("h", 3, "relu")
    g.add_node("s", 3)
    g.add_edge("x", "h")
    g.add_edge("x", "s")
    assert g.add_op_node("m", ["h", "s"], product(), width=3) == ["h_to_m", "s_to_m"]
    g.add_node("y", 2)
    g.add_edge("m", "y")
    g.set_output("y")
    return g


def test_an_op_node_computes_its_program():
    g = gated_graph()
    x = torch.randn(5, 4)
    h, s = torch.relu(g.module("x_to_h")(x)), g.module("x_to_s")(x)
    torch.testing.assert_close(g.compile()(x), g.module("m_to_y")(h * torch.sigmoid(s) * 2.0))
    assert g.operands("m") == ["h", "s"] and [e.block.position for e in g.in_edges("m")] == [0, 1]
    assert "op:m.p0" in dict(g.named_parameters()) and g.num_parameters() == 15 + 15 + 1 + 8
    assert "op mul (1 params)" in g.summary()
    copy = g.copy()
    assert copy.op_module("m") is not g.op_module("m") and copy.spec() == g.spec()


def test_op_nodes_are_opaque_to_growth():
    g = gated_graph()
    assert not expandable(g, "m") and not expandable(g, "h") and not expandable(g, "s")
    pairs = {(c.sources[0], c.targets[0]) for c in enumerate_candidates(g, ["new_node", "new_edge"])}
    assert ("x", "m") not in pairs and ("m", "y") in pairs  # nothing enters an op node but its operands


def test_invalid_op_nodes_are_refused():
    g = gated_graph()
    with pytest.raises(dg.GraphError, match="takes 2 input"):
        g.add_op_node("bad", ["x"], product())
    with pytest.raises(dg.GraphError, match="appears twice"):
        g.add_op_node("bad", ["h", "h"], product())
    with pytest.raises(dg.GraphError, match="needs an OpaqueOp"):
        g.add_op_node("bad", ["h", "s"], torch.nn.Identity())
    with pytest.raises(dg.GraphError, match="operand blocks enter op nodes only"):
        g.add_edge("x", "m")
    with pytest.raises(dg.GraphError, match="operand blocks enter op nodes only"):
        g.add_edge("x", "y", dg.OperandBlock(position=0))
    g.remove_edge("s_to_m")
    with pytest.raises(dg.GraphError, match="positions \\[0\\]"):
        g.validate()


def test_removing_an_op_node_drops_its_module():
    g = gated_graph()
    before = g.num_parameters()
    g.remove_node("m")
    assert "m" not in g.nodes and all("m" not in (e.source, e.target) for e in g.edges.values())
    assert g.num_parameters() == before - 1 - 8 and "op:m.p0" not in dict(g.named_parameters())


def test_programs_are_json_and_decode_through_the_allow_list():
    values = [1, 2.5, "a", None, True, (1, 2), [Ref(0), slice(None, 3, None)], Ellipsis, torch.float16,
              torch.device("cpu"), {"k": (Ref(1),)}, float("inf")]
    for v in values:
        assert decode(encode(v)) == v or (v is Ellipsis and decode(encode(v)) is Ellipsis)
    with pytest.raises(UnsafeOpError, match="allow-list"):
        OpaqueOp(OpSpec(inputs=1, steps=[OpStep(call="function", target="os.system", args=["ls"])], output=1))
    with pytest.raises(UnsafeOpError, match="computed after"):
        OpaqueOp(OpSpec(inputs=1, steps=[OpStep(call="method", target="relu", args=[{"ref": 1}])], output=1))


def test_an_op_calling_a_function_outside_the_allow_list_runs_but_is_not_describable():
    spec = OpSpec(inputs=1, steps=[OpStep(call="function", target="tests.square", args=[{"ref": 0}])], output=1)
    op = OpaqueOp(spec, calls=[Call("function", lambda t: t * t, (Ref(0),), {})])
    assert torch.equal(op(torch.tensor([3.0])), torch.tensor([9.0]))
    assert not op.describable
    assert product().describable and operator.mul is not None


def test_drawings_show_op_nodes_operands_placements_and_tokens():
    g = gated_graph()
    g.add_input("t", 3, (5,), layout="tokens")
    g.add_node("u", 4, shape=(5,), layout="tokens")
    g.add_edge("t", "u")
    g.add_op_node("pool", ["u"], OpaqueOp(OpSpec(inputs=1, steps=[
        OpStep(call="method", target="mean", args=[{"ref": 0}, 1])], output=1, label="mean")), width=4)
    g.add_node("c", 7)
    g.add_edge("pool", "c", dg.PlaceBlock(offset=0))
    g.add_edge("m", "c", dg.PlaceBlock(offset=4))
    g.add_edge("c", "y")
    dot = g.to_dot()
    for text in ('shape=component', 'op: mul', 'label="arg 1"', 'style=dotted', r'place → [4:7)',
                 '5 tokens × 4', "1 params"):
        assert text in dot, text
    assert g.compile()(torch.randn(2, 4), torch.randn(2, 5, 3)).shape == (2, 2)


@pytest.mark.parametrize("module", ["opaque", "modules", "spec", "activations", "blocks"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"daggrow.graph.{module}"))
    assert result.attempted > 0 and result.failed == 0
