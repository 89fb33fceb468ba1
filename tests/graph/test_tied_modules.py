"""One module on two edges: refused for growable edges (growth would untie them), kept for frozen ones."""

from __future__ import annotations

import copy

import pytest
import torch

import daggrow as dg


def _nodes() -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node("a", 3)
    g.add_node("b", 3)
    return g


def test_the_same_linear_module_on_two_edges_is_refused():
    g = _nodes()
    shared = torch.nn.Linear(3, 3)
    g.add_edge("x", "a", module=shared)
    with pytest.raises(dg.GraphError, match="edge 'a_to_b': its module shares weights with edge 'x_to_a'.*"
                                            "copy.deepcopy"):
        g.add_edge("a", "b", module=shared)
    assert list(g.edges) == ["x_to_a"]  # refused: the graph is unchanged
    g.add_edge("a", "b", module=copy.deepcopy(shared))  # a copy is an edge of its own


def test_a_shared_parameter_is_refused_too():
    g = _nodes()
    first, second = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    second.weight = first.weight
    g.add_edge("x", "a", module=first)
    with pytest.raises(dg.GraphError, match="shares weights"):
        g.add_edge("a", "b", module=second)


def test_a_frozen_module_shared_with_a_growable_edge_is_refused():
    g = _nodes()
    shared = torch.nn.Linear(3, 3)
    g.add_edge("x", "a", module=shared)
    with pytest.raises(dg.GraphError, match="shares weights"):
        g.add_edge("a", "b", dg.FrozenBlock(module_type="Linear"), module=shared)


def test_frozen_edges_may_share_a_module_and_stay_tied_through_save_and_load(tmp_path):
    g = _nodes()
    shared = torch.nn.Linear(3, 3)
    g.add_edge("x", "a", dg.FrozenBlock(module_type="Linear"), module=shared)
    g.add_edge("a", "b", dg.FrozenBlock(module_type="Linear"), module=shared)
    g.set_output("b")
    x = torch.randn(5, 3)
    torch.testing.assert_close(g.compile()(x), shared(shared(x)))
    g.save(tmp_path / "g")
    h = dg.Graph.load(tmp_path / "g")
    assert h.module("x_to_a") is h.module("a_to_b")
    torch.testing.assert_close(h.compile()(x), shared(shared(x)))
