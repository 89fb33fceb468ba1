"""Normal form: the exact nodes, widths, activations and edges the tracer produces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import daggrow as dg

from .zoo import FUNCTION_ACTIVATIONS, METHOD_ACTIVATIONS, MODULE_ACTIVATIONS, MLP, AllActivations, ApiNet, ManySums, NormsAndDropout, ResidualMLP, ScaledResidual, \
    ShapesAndOutputs, TwoInputs


def edges_of(graph):
    """``{(source, target, kind, name-or-scale)}`` for every edge."""
    return {(e.source, e.target, e.block.kind, e.block.scale if e.block.kind == "identity" else e.name)
            for e in graph.edges.values()}


def nodes_of(graph):
    return [(n, s.width, s.activation) for n, s in graph.nodes.items()]


def test_api_example_has_nodes_for_the_relus_and_the_residual_sum():
    graph = dg.trace(ApiNet(), torch.randn(4, 40))
    assert nodes_of(graph) == [("x", 40, "identity"), ("relu", 8, "relu"), ("relu_1", 8, "relu"),
                               ("add", 8, "identity"), ("c", 10, "identity")]
    assert edges_of(graph) == {("x", "relu", "linear", "a"), ("relu", "relu_1", "linear", "b"),
                               ("relu_1", "add", "identity", 1.0), ("relu", "add", "identity", 1.0),
                               ("add", "c", "linear", "c")}
    assert graph.inputs == ["x"] and graph.outputs == ["c"]


def test_mlp_is_a_chain():
    graph = dg.trace(MLP(), torch.randn(2, 10))
    assert nodes_of(graph) == [("x", 10, "identity"), ("relu", 16, "relu"), ("tanh", 8, "tanh"),
                               ("l3", 3, "identity")]


def test_two_inputs_meet_in_one_node():
    graph = dg.trace(TwoInputs(), (torch.randn(2, 5), torch.randn(2, 3)))
    assert nodes_of(graph) == [("x", 5, "identity"), ("z", 3, "identity"), ("elu", 8, "elu"), ("c", 2, "identity")]
    assert graph.node("elu").activation_params == {"alpha": 1.0}
    assert {(e.source, e.name) for e in graph.in_edges("elu")} == {("x", "a"), ("z", "b")}


def test_residual_blocks_give_two_nodes_each():
    graph = dg.trace(ResidualMLP(), torch.randn(2, 10))
    assert len(graph.nodes) == 1 + 1 + 3 * 2 + 1
    for i in range(3):
        block = graph.edge(f"blocks.{i}")
        assert graph.node(block.target).activation == "relu"
        (residual,) = graph.successors(block.target)
        assert {e.block.kind for e in graph.in_edges(residual)} == {"identity"}
        assert {e.source for e in graph.in_edges(residual)} == {block.source, block.target}


def test_sums_merge_and_repeated_identities_add_their_scales():
    graph = dg.trace(ManySums(), torch.randn(2, 4))
    (s,) = [n for n in graph.nodes if len(graph.in_edges(n)) == 3]
    assert sorted(e.name for e in graph.in_edges(s)) == ["a", "b", "c"]  # sum([...]) starting from 0
    out = graph.outputs[0]
    assert edges_of(graph) >= {("relu", out, "linear", "d"), (s, out, "identity", -1.0)}  # s - 2s
    assert len(graph.nodes) == 4


def test_scalar_multiples_fold_into_linear_weights_and_identity_scales():
    model = ScaledResidual()
    graph = dg.trace(model, torch.randn(2, 6))
    ins = {(e.source, e.block.kind): e for e in graph.in_edges("relu")}
    assert ins[("tanh", "identity")].block.scale == 0.75  # -h/4 - (-h)
    assert ins[("x", "identity")].block.scale == 2.0
    folded = graph.module(ins[("tanh", "linear")].name)
    assert torch.equal(folded.weight, 0.5 * model.b.weight) and torch.equal(folded.bias, 0.5 * model.b.bias)


def test_norms_and_dropout_join_their_nodes():
    graph = dg.trace(NormsAndDropout(), torch.randn(3, 8))
    specs = list(graph.nodes.values())
    assert [(s.activation, s.norm.kind if s.norm else None, s.dropout) for s in specs] == [
        ("identity", None, 0.0), ("relu", "batchnorm", 0.3), ("gelu", "layernorm", 0.1), ("identity", None, 0.0)]


def test_dropout_without_activation_and_dropout_after_a_shared_node():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.drop = nn.Linear(3, 3), nn.Linear(3, 2), nn.Dropout(0.25)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(self.drop(h)), h

    class N(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.drop = nn.Linear(3, 3), nn.Dropout(0.25)

        def forward(self, x):
            return self.drop(self.a(x))

    graph = dg.trace(N(), torch.randn(2, 3))
    assert nodes_of(graph) == [("x", 3, "identity"), ("a", 3, "identity")] and graph.node("a").dropout == 0.25
    graph = dg.trace(M(), torch.randn(2, 3))  # relu is read twice: the dropout gets its own node
    assert graph.node("relu").dropout == 0.0
    assert graph.node("drop").dropout == 0.25 and graph.predecessors("drop") == ["relu"]


def test_functional_dropout_follows_the_training_flag_seen_while_tracing():
    assert dg.trace(ShapesAndOutputs().train(), torch.randn(2, 5)).node("tanh").dropout == 0.2
    assert dg.trace(ShapesAndOutputs().eval(), torch.randn(2, 5)).node("tanh").dropout == 0.0


def test_reshapes_dead_code_and_several_outputs():
    graph = dg.trace(ShapesAndOutputs().eval(), torch.randn(2, 5))
    assert "unused" not in graph.edges and not any("relu" in n for n in graph.nodes)
    assert len(graph.outputs) == 3
    b, neg_x, s = graph.outputs
    assert graph.predecessors(neg_x) == ["x"] and graph.in_edges(neg_x)[0].block.scale == -1.0
    assert [(e.source, e.block.scale) for e in graph.in_edges(s)] == [("tanh", 2.0)]  # h + h
    assert nodes_of(graph)[:3] == [("x", 5, "identity"), ("tanh", 5, "tanh"), (s, 5, "identity")]


def test_returning_an_input_or_one_tensor_twice_gives_output_nodes():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return x, h, h

    model = M()
    graph = dg.trace(model, torch.randn(2, 3))
    assert len(set(graph.outputs)) == 3 and graph.outputs[1] == "relu"
    assert graph.predecessors(graph.outputs[0]) == ["x"] and graph.predecessors(graph.outputs[2]) == ["relu"]
    x = torch.randn(4, 3)
    with torch.no_grad():
        for got, want in zip(graph.compile()(x), model(x), strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "selu", "gelu", "silu", "elu", "leaky_relu",
                                        "softplus", "relu6", "hardtanh", "hardswish", "hardsigmoid", "mish"])
def test_every_activation_is_recognised(activation):
    graph = dg.trace(AllActivations(), torch.randn(2, 6))
    assert activation in {s.activation for s in graph.nodes.values()}


def test_activation_parameters_are_read():
    graph = dg.trace(AllActivations(), torch.randn(2, 6))
    params = [s.activation_params for s in graph.nodes.values() if s.activation_params]
    assert {"negative_slope": 0.3} in params and {"negative_slope": 0.1} in params
    assert {"negative_slope": 0.2} in params and {"alpha": 0.7} in params and {"alpha": 0.5} in params
    assert {"min_val": -0.5, "max_val": 2.0} in params and {"min_val": 0.0, "max_val": 3.0} in params
    assert {"min_val": -1.0, "max_val": 1.5} in params
    # a node per activation except nn.Identity, whose Linear → Linear still needs the one
    # node between them, plus the input and the output
    activations = len(MODULE_ACTIVATIONS) - 1 + len(FUNCTION_ACTIVATIONS) + len(METHOD_ACTIVATIONS)
    assert len(graph.nodes) == 1 + activations + 1 + 1
    assert [s.activation for s in graph.nodes.values()].count("identity") == 3


def test_activation_of_a_node_adds_a_node_with_an_identity_edge():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            return torch.tanh(F.relu(self.a(x))) + F.relu(x)

    graph = dg.trace(M(), torch.randn(2, 3))
    assert nodes_of(graph) == [("x", 3, "identity"), ("relu", 3, "relu"), ("tanh", 3, "tanh"),
                               ("relu_1", 3, "relu"), ("add", 3, "identity")]
    assert edges_of(graph) == {("x", "relu", "linear", "a"), ("relu", "tanh", "identity", 1.0),
                               ("x", "relu_1", "identity", 1.0), ("tanh", "add", "identity", 1.0),
                               ("relu_1", "add", "identity", 1.0)}


def test_trivial_sums_make_no_node():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(sum([h]) + 0), 0.5 * x + x * 0.5

    model = M()
    graph = dg.trace(model, torch.randn(2, 3))
    assert nodes_of(graph) == [("x", 3, "identity"), ("relu", 3, "relu"), ("b", 2, "identity"),
                               ("output", 3, "identity")]
    x = torch.randn(4, 3)
    with torch.no_grad():
        for got, want in zip(graph.compile()(x), model(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_keyword_inputs_augmented_sums_and_concrete_numbers():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act = nn.Linear(3, 3), nn.ReLU()

        def forward(self, x, factor=1):
            h = self.a(input=x)
            h += x  # traced as an out-of-place add
            return self.act(input=h) * factor + torch.relu(input=x)

    model = M()
    x = torch.randn(4, 3)
    graph = dg.trace(model, x, concrete_args={"factor": 3})
    assert nodes_of(graph) == [("x", 3, "identity"), ("act", 3, "relu"), ("relu", 3, "relu"), ("add_1", 3, "identity")]
    assert [(e.source, e.block.scale) for e in graph.in_edges("add_1")] == [("act", 3.0), ("relu", 1.0)]
    with torch.no_grad():
        torch.testing.assert_close(graph.compile()(x), model(x, factor=3), rtol=0, atol=1e-6)
