"""Hypothesis: random valid DAGs round-trip through compile/save/load; random invalid
operations raise the documented exception and leave the graph unchanged."""

from __future__ import annotations

import tempfile

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daggrow as dg

ACTS = ["identity", "relu", "tanh", "selu", "gelu", "sigmoid"]


@st.composite
def dags(draw):
    torch.manual_seed(draw(st.integers(0, 9999)))
    g = dg.Graph()
    names = []
    for i in range(draw(st.integers(1, 3))):
        g.add_input(f"in{i}", draw(st.integers(1, 4)))
        names.append(f"in{i}")
    n_inputs = len(names)
    for j in range(draw(st.integers(1, 5))):
        width = draw(st.integers(1, 5))
        g.add_node(f"n{j}", width, draw(st.sampled_from(ACTS)), norm=draw(st.sampled_from([None, "layernorm"])))
        for s in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)):  # repeats: parallel edges
            same = g.node(s).width == width
            kind = draw(st.sampled_from(["linear", "identity"])) if same else "linear"
            g.add_edge(s, f"n{j}", kind, bias=draw(st.booleans()))
        names.append(f"n{j}")
    last = names[-1]
    for n in names[:-1]:
        if not g.out_edges(n):
            g.add_edge(n, last)
    g.set_output(last)
    if draw(st.booleans()):  # float64 graphs keep their dtype through save/load
        for m in [*(g.module(e) for e in g.edges), *(g.norm_module(n) for n in g.nodes if g.norm_module(n))]:
            m.double()
    return g


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_compile_save_load_gives_identical_outputs(g):
    dtype = next(g.parameters(), torch.empty(0)).dtype  # a graph of identity edges only has none
    xs = tuple(torch.randn(5, g.node(i).width, dtype=dtype) for i in g.inputs)
    with tempfile.TemporaryDirectory() as d:
        g.save(d)
        h = dg.Graph.load(d)
    assert h.spec() == g.spec()
    assert list(h.edges) == list(g.edges) and list(h.nodes) == list(g.nodes)
    for (ka, pa), (kb, pb) in zip(g.named_parameters(), h.named_parameters(), strict=True):
        assert ka == kb and pa.dtype == pb.dtype and torch.equal(pa, pb)
    out_g, out_h = g.compile()(*xs), h.compile()(*xs)
    assert out_g.dtype == dtype and torch.equal(out_g, out_h)


def _invalid(g: dg.Graph, data):
    nodes = list(g.nodes)
    op = data.draw(st.sampled_from(["dup", "cycle", "identity", "unknown", "input_target", "bad_act"]))
    if op == "dup":
        return lambda: g.add_node(data.draw(st.sampled_from(nodes)), 2), dg.DuplicateNameError
    if op == "cycle":
        a = data.draw(st.sampled_from([n for n in nodes if n not in g.inputs]))
        ancestors = [n for n in nodes if g.is_ancestor(n, a) and n not in g.inputs]  # a itself: a self-loop
        return lambda: g.add_edge(a, data.draw(st.sampled_from(ancestors))), dg.CycleError
    if op == "identity":
        pairs = [(u, v) for u in nodes for v in nodes if v not in g.inputs and not g.is_ancestor(v, u)
                 and g.node(u).width != g.node(v).width]
        if not pairs:
            return lambda: g.remove_edge("does-not-exist"), dg.UnknownNameError
        u, v = data.draw(st.sampled_from(pairs))
        return lambda: g.add_edge(u, v, "identity"), dg.WidthMismatchError
    if op == "unknown":
        return lambda: g.add_edge(nodes[0], "missing"), dg.UnknownNameError
    if op == "input_target":
        return lambda: g.add_edge(nodes[-1], g.inputs[0]), dg.GraphError
    return lambda: g.add_node("fresh", 2, "swishy"), dg.GraphError


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_invalid_operations_leave_graph_unchanged(g, data):
    spec = g.spec()
    params = {k: p.clone() for k, p in g.named_parameters()}
    operation, error = _invalid(g, data)
    try:
        operation()
    except error:
        pass
    else:
        raise AssertionError("the invalid operation was accepted")
    assert g.spec() == spec
    assert all(torch.equal(p, params[k]) for k, p in g.named_parameters())
