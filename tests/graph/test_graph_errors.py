"""Refusals of the graph API that name the problem, and removal of inputs and outputs."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg


def _g() -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node("h", 3, "relu")
    g.add_node("y", 2)
    g.add_edge("x", "h")
    g.add_edge("h", "y")
    g.set_output("y")
    return g


def test_building_refusals():
    g = _g()
    with pytest.raises(dg.GraphError, match="unknown block 'conv'"):
        g.add_edge("x", "y", "conv")
    with pytest.raises(dg.GraphError, match="invalid input 'z'"):
        g.add_input("z", 0)
    with pytest.raises(dg.GraphError, match="LayerNorm normalises the features of a vector or tokens node"):
        g.add_node("img", 2, norm="layernorm", shape=(4, 4))
    with pytest.raises(dg.GraphError, match="set_output got a repeated name"):
        g.set_output("y", "y")
    assert g.add_edge("x", "y") == "x_to_y"  # a second path into y is fine


def test_removing_inputs_and_outputs():
    g = _g()
    g.remove_node("y")
    assert g.outputs == [] and "h_to_y" not in g.edges
    g.remove_node("x")
    assert g.inputs == [] and not g.edges


def test_validate_finds_what_internal_edits_broke():
    g = _g()
    g._nx.add_edge("y", "x", key="back")
    with pytest.raises(dg.CycleError, match="the graph has a cycle"):
        g.validate()
    g = _g()
    g.add_node("n", 3, norm="batchnorm")
    g.add_edge("x", "n")
    g.add_edge("n", "y")
    g._norm_modules.pop("n")
    with pytest.raises(dg.GraphError, match="declares a batchnorm but has no norm module"):
        g.validate(complete=False)
    g._norm_modules["n"] = torch.nn.BatchNorm1d(5)
    with pytest.raises(dg.WidthMismatchError, match="width 3 but its batchnorm has 5 features"):
        g.validate(complete=False)
    g._norm_modules["n"] = torch.nn.LayerNorm(3)
    g.validate(complete=False)  # a LayerNorm of the right width passes
    g._norm_modules["n"] = torch.nn.GroupNorm(1, 3)
    with pytest.raises(dg.WidthMismatchError, match="has -1 features"):
        g.validate(complete=False)


def test_unchecked_edges_still_need_known_nodes_and_fresh_names():
    g = _g()
    spec = g.edge("x_to_h")
    with pytest.raises(dg.DuplicateNameError, match="an edge named 'x_to_h' already exists"):
        g._add_edge_unchecked(spec, torch.nn.Linear(3, 3))
    g._replace_node(g.node("h").model_copy(update={"norm": dg.NormSpec(kind="batchnorm")}))
    assert g.norm_module("h") is None  # no module given: validate would say so
