"""The structures the tracer builds for op nodes, gates, concatenations, tokens nodes and
transformer layers, checked node by node."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import daggrow as dg
from daggrow.grow import enumerate_candidates, expandable

from .zoo_families import stochastic_depth

torch.fx.wrap("stochastic_depth")  # recorded as one call in this module too, as torchvision does
HERE = r"test_new_kinds\.py:\d+"


def same(model, graph, *xs, atol=1e-6):
    with torch.no_grad():
        torch.testing.assert_close(graph.compile().eval()(*xs), model.eval()(*xs), rtol=0, atol=atol)


def quiet_trace(model, x, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.OpaqueOpWarning)
        return dg.trace(model, x, **options)


# ---------------------------------------------------------------------------- gates
class Gated(nn.Module):
    """``h * gate(h)``: squeeze-excitation with linear layers on a vector node."""

    def __init__(self):
        super().__init__()
        self.a, self.fc1, self.fc2, self.out = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.out(h * torch.sigmoid(self.fc2(F.silu(self.fc1(h)))))


def test_a_gate_is_a_two_input_op_node_and_the_layers_around_it_stay_edges():
    model = Gated()
    with pytest.warns(dg.OpaqueOpWarning, match=r"operator\.mul of two tensors at .*" + HERE):
        graph = dg.trace(model, torch.randn(3, 6))
    (mul,) = [n for n, s in graph.nodes.items() if s.op is not None]
    assert graph.operands(mul) == ["relu", "sigmoid"] and graph.node(mul).op.label == "mul"
    assert {e.block.kind for e in graph.in_edges(mul)} == {"operand"}
    assert [e.name for e in graph.in_edges("silu")] == ["fc1"] and graph.edge("fc2").target == "sigmoid"
    assert graph.edge("out").source == mul
    assert expandable(graph, "silu")                   # inside the gate: fc1 → silu → fc2
    assert not expandable(graph, "relu")               # read by the product: its width is fixed
    assert not expandable(graph, mul)
    same(model, graph, torch.randn(5, 6))


def test_statistics_flow_through_op_nodes_by_autograd():
    """Ψ upstream of a product equals Ψ computed from explicit autograd gradients."""
    model = Gated().double()
    graph = quiet_trace(model, torch.randn(3, 6, dtype=torch.float64))
    x = torch.randn(50, 6, dtype=torch.float64)
    y = torch.randn(50, 2, dtype=torch.float64)
    stats = dg.collect_statistics(graph, [(x, y)], "mse", kinds=["expand_node"])
    assert "silu" in stats.v and "relu" in stats.v
    # brute force: the desired move at relu's pre-activation, through the product and the gate
    z = graph.module("a")(x).detach().requires_grad_()
    h = torch.relu(z)
    out = model.out(h * torch.sigmoid(model.fc2(F.silu(model.fc1(h)))))
    (grad,) = torch.autograd.grad(((out - y) ** 2).sum(), z)
    torch.testing.assert_close(stats.v["relu"], -grad.sum(0))
    assert stats.grad_energy("relu") == pytest.approx(float((grad ** 2).sum() / 50))


# ---------------------------------------------------------------------------- concatenations
class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv1d(2, 3, 3, padding=1), nn.Conv1d(2, 4, 1), nn.Conv1d(7, 2, 3)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
        return self.c(torch.cat((h, 0.5 * h), 1)[:, :7])


def test_concatenation_along_channels_is_a_sum_of_placements():
    model = Branches()
    x = torch.randn(3, 2, 9)
    graph = quiet_trace(model, x)
    place = {(e.source, e.target): e.block for e in graph.edges.values() if e.block.kind == "place"}
    assert place[("relu", "cat")] == dg.PlaceBlock(offset=0) and place[("b", "cat")] == dg.PlaceBlock(offset=3)
    assert graph.node("cat").width == 7 and graph.node("cat").shape == (9,)
    (second,) = [n for n in graph.successors("cat") if n != "cat_1"]          # 0.5 · h: a node of its own
    assert [(e.source, e.block.scale) for e in graph.in_edges(second)] == [("cat", 0.5)]
    assert {(e.source, e.block) for e in graph.in_edges("cat_1")} == {("cat", dg.PlaceBlock(offset=0)),
                                                                      (second, dg.PlaceBlock(offset=7))}
    code = graph.compile().code
    assert "torch.cat([relu, b], 1)" in code
    same(model, graph, torch.randn(5, 2, 9))


def test_a_branch_of_a_concatenation_is_growable_inside_it():
    """DenseNet-style: the node between the 1×1 and the 3×3 conv of a layer can widen, and so can
    each layer's output and the stem, which the block's concatenations read (their readers take
    the new channels through the concatenation's BatchNorm and ReLU)."""
    from .zoo_families import DenseNetLike

    graph = quiet_trace(DenseNetLike().eval(), torch.randn(3, 3, 8, 8))
    cands = {c.node: c for c in enumerate_candidates(graph, ["expand_node"])}
    middles = {f"block{b}_layer{i}_relu2" for b in (1, 2) for i in (0, 1)}
    outputs = {"block1_layer0_conv2", "block1_layer1_conv2", "block2_layer0_conv2"}
    assert set(cands) == middles | outputs | {"stem_2"}
    assert all(c.activation == "relu" for c in cands.values())
    # the last layer of block 2 reaches a linear layer only through the pooling: not a candidate
    assert "block2_layer1_conv2" not in cands
    assert [graph.edge(e).source for e in cands["stem_2"].out_edges] == [
        "block1_layer0_relu1", "block1_layer1_relu1", "transition_1"]
    concats = [n for n in graph.nodes if {e.block.kind for e in graph.in_edges(n)} == {"place"}]
    assert len(concats) == 6


# ---------------------------------------------------------------------------- tokens
def test_linear_and_layer_norm_over_the_last_dimension_make_tokens_nodes():
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 6), nn.LayerNorm(6))
    x = torch.randn(3, 7, 6)
    graph = dg.trace(model, x, strict=True)
    assert {n: (s.layout, s.shape, s.width) for n, s in graph.nodes.items()} == {
        "input_1": ("tokens", (7,), 6), "_1": ("tokens", (7,), 8), "_3": ("tokens", (7,), 6)}
    assert graph.node("_3").norm.kind == "layernorm" and expandable(graph, "_1")
    same(model, graph, torch.randn(5, 7, 6))


def test_a_token_grid_of_a_channels_last_image():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))
    x = torch.randn(3, 5, 2, 4)                             # (batch, H, W, features)
    graph = dg.trace(model, x, strict=True)
    assert graph.node("_1").layout == "tokens" and graph.node("_1").shape == (5, 2)
    same(model, graph, torch.randn(6, 5, 2, 4))


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", nn.GELU()])
def test_transformer_encoder_layers_trace_through_their_plain_path(norm_first, activation):
    layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8), enable_nested_tensor=False),
                          nn.Linear(8, 3)).eval()
    with pytest.warns(dg.OpaqueOpWarning, match=r"MultiheadAttention") as record:
        graph = dg.trace(model, torch.randn(3, 5, 8))
    assert "feed" not in str(record[0].message) and "linear1" not in str(record[0].message)
    attention = [s for s in graph.nodes.values() if s.op is not None]
    assert len(attention) == 2 and all(s.op.modules == {"m0": "MultiheadAttention"} for s in attention)
    hidden = [c.node for c in enumerate_candidates(graph, ["expand_node"])]
    assert len(hidden) == 2 and all(graph.node(n).width == 12 and graph.node(n).layout == "tokens" for n in hidden)
    same(model, graph, torch.randn(4, 5, 8))


# ---------------------------------------------------------------------------- op nodes
class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.ln, self.out = nn.Conv2d(3, 4, 3, padding=1), nn.LayerNorm(4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.conv(x)
        h = F.layer_norm(h.permute(0, 2, 3, 1), (4,), self.ln.weight, self.ln.bias).permute(0, 3, 1, 2)
        return self.out(h)


def test_a_run_of_opaque_ops_is_one_op_node_with_its_parameters():
    model = ChannelsLast()
    with pytest.warns(dg.OpaqueOpWarning) as record:
        graph = dg.trace(model, torch.randn(3, 3, 6, 6))
    (op,) = [n for n, s in graph.nodes.items() if s.op is not None]
    spec = graph.node(op)
    assert spec.op.label == "permute → layer_norm → permute" and graph.operands(op) == ["conv"]
    assert graph.node(op).shape == (6, 6) and graph.node(op).layout == "channels"
    assert sorted(n for n, _ in graph.op_module(op).named_parameters()) == ["p0", "p1"]
    message = str(record[0].message)
    assert message.count("\n  - ") == 2 and re.search(r"\.permute\(\).*" + HERE, message)  # same op, same line: one
    code = graph.compile().code
    assert "permute = conv.permute(0, 2, 3, 1)" in code and "torch.nn.functional.layer_norm(" in code
    same(model, graph, torch.randn(5, 3, 6, 6))
    # its parameters train with the rest
    names = dict(graph.named_parameters())
    assert f"op:{op}.p0" in names and names[f"op:{op}.p0"].requires_grad


def test_shared_layers_become_op_nodes_sharing_one_copy():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.a(torch.relu(self.a(x))))

    model = Shared()
    with pytest.warns(dg.OpaqueOpWarning, match="whose weights another call also uses"):
        graph = dg.trace(model, torch.randn(3, 4))
    ops = [graph.op_module(n) for n in graph.nodes if graph.op_module(n) is not None]
    assert len(ops) == 2 and ops[0].m0 is ops[1].m0 and ops[0].m0 is not model.a
    assert graph.num_parameters() == sum(p.numel() for p in model.parameters())
    same(model, graph, torch.randn(5, 4))


def test_stochastic_depth_is_a_row_dropout_in_training_and_nothing_in_eval():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(x + stochastic_depth(torch.tanh(self.a(x)), 0.3, "row", self.training))

    model = Residual()
    trained = dg.trace(model.train(), torch.randn(3, 4), strict=True)
    assert (trained.node("tanh").dropout, trained.node("tanh").dropout_mode) == (0.3, "row")
    assert dg.trace(model.eval(), torch.randn(3, 4), strict=True).node("tanh").dropout == 0.0
    module = trained.compile().train()
    torch.manual_seed(0)
    rows = module.get_submodule("dropout_tanh")(torch.ones(200, 4))
    sums = rows.sum(1)
    assert set(sums.tolist()) == {0.0, float(torch.tensor(4 / 0.7))}          # whole samples dropped
    same(model, trained, torch.randn(5, 4))                                     # eval: the identity


def test_each_node_that_cannot_widen_says_why():
    from daggrow.grow.candidates import expansion_blocker

    from .zoo_families import DenseNetLike, MobileNetV2Like

    graph = quiet_trace(Gated(), torch.randn(3, 6))
    assert expansion_blocker(graph, "silu") is None
    assert expansion_blocker(graph, "relu").startswith("an op node reads it")
    assert expansion_blocker(graph, "mul").startswith("it is an op node")
    reasons = {expansion_blocker(g, n) for model in (DenseNetLike(), MobileNetV2Like())
               for g in [quiet_trace(model.eval(), torch.randn(3, 3, 8, 8))] for n in g.nodes}
    assert "it is a concatenation (its features are its branches': widen a branch instead)" in reasons
    assert "a grouped or depthwise convolution writes it (its channels follow the node that conv reads)" in reasons
    assert any(r and r.startswith("a grouped or strided depthwise convolution reads it") for r in reasons)
    assert "it is a pooling of another node (widen the node it pools instead)" in reasons
    assert "an identity edge (a residual stream) fixes its width" in reasons
