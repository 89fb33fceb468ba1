"""Convolutional networks in plain PyTorch: traced, compiled, and equal to the original (float64)."""

from __future__ import annotations

import copy
import doctest
import importlib
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import daggrow as dg


# ============================================================================ the zoo
def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters for every batch norm."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for tensor, (low, high) in [(m.running_mean, (-1, 1)), (m.running_var, (0.5, 2)),
                                            (m.weight, (0.5, 1.5)), (m.bias, (-1, 1))]:
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model


class ConvBnRelu2d(nn.Module):
    """conv-bn-relu (no conv bias), dropout, conv-bn-gelu, global pooling, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.1)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(6, 4)

    def forward(self, x):
        h = self.drop(F.relu(self.bn1(self.conv1(x))))
        h = F.gelu(self.bn2(self.conv2(h)))
        return self.fc(torch.flatten(self.pool(h), 1))


class ConvBnAct1d(nn.Module):
    """BatchNorm1d on (batch, channels, length), padding='same', other activations, nn.Flatten."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(2, 6, 3, padding=1), nn.BatchNorm1d(6)
        self.conv2, self.bn2 = nn.Conv1d(6, 5, 5, padding="same", bias=False), nn.BatchNorm1d(5)
        self.act, self.drop = nn.LeakyReLU(0.2), nn.Dropout(0.2)
        self.flat, self.fc = nn.Flatten(), nn.Linear(5 * 12, 3)

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))
        h = self.drop(torch.tanh(self.bn2(self.conv2(h))))
        return self.fc(self.flat(h))


class Mnist1dCNN(nn.Module):
    """The CNN of the MNIST-1D paper: (N, 1, 40) → three strided convs → flatten → linear."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(channels * 5, 10)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(h))
        return self.linear(h.view(h.shape[0], -1))


class BasicBlock(nn.Module):
    """A ResNet basic block: identity shortcut, or 1×1-conv + BatchNorm downsample when strided."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # called twice, as in torchvision
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class SmallResNet(nn.Module):
    """A narrow ResNet: stem, max pooling, two stages of basic blocks, global pooling, linear."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class PoolingZoo2d(nn.Module):
    """Pooling modules and functions on images, then the mean over both spatial dimensions."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.mp, self.ap = nn.MaxPool2d(2), nn.AvgPool2d(3, stride=1, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))                                       # (N, 4, 12, 12)
        h = self.ap(self.mp(h))                                            # (N, 4, 6, 6)
        h = F.max_pool2d(h, kernel_size=2, stride=(1, 2), ceil_mode=True)  # (N, 4, 5, 3): ceil changes nothing
        h = torch.max_pool2d(F.avg_pool2d(h, (2, 1), count_include_pad=False), 1)  # (N, 4, 2, 3)
        h = F.adaptive_avg_pool2d(torch.sigmoid(h), (None, 1))             # (N, 4, 2, 1)
        return self.fc(h.mean((2, -1)))


class PoolingZoo1d(nn.Module):
    """Pooling modules and functions on sequences, then a flatten by reshape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.mp, self.ap = nn.MaxPool1d(3, stride=2, padding=1), nn.AvgPool1d(2, ceil_mode=True)
        self.fc = nn.Linear(4 * 2, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))                              # (N, 4, 20)
        h = F.avg_pool1d(self.ap(self.mp(h)), 2, padding=1)       # (N, 4, 10) → (N, 4, 5) → (N, 4, 3)
        h = F.max_pool1d(F.adaptive_avg_pool1d(h, 2), 1)          # (N, 4, 2)
        return self.fc(h.reshape(x.size(0), -1))


class GroupedDilated(nn.Module):
    """Grouped and depthwise convs, dilation, non-square kernels and strides, squeeze as a flatten."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(6, 6, (3, 1), stride=(2, 1), padding=(1, 0), groups=6, bias=False)
        self.dilated = nn.Conv2d(6, 5, 3, dilation=2, padding=2)
        self.head = nn.Conv2d(5, 3, (5, 8))

    def forward(self, x):
        h = F.silu(self.grouped(x))
        h = F.elu(self.depthwise(h))
        return self.head(torch.relu(self.dilated(h))).squeeze()


class ScaledTerms(nn.Module):
    """Scalar multiples of convs, poolings and flattens, summed with a skip; flatten read twice."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(3, 3, 3, padding=1), nn.Conv1d(3, 3, 1)
        self.fc, self.fc2, self.fc3 = nn.Linear(3 * 8, 4), nn.Linear(3 * 8, 4), nn.Linear(3 * 8, 4)

    def forward(self, x):
        h = torch.tanh(0.5 * self.a(x) - x)
        s = self.b(h) * 2 + F.avg_pool1d(h, 3, 1, 1) / 4 - F.max_pool1d(x, 1)
        flat = torch.flatten(torch.relu(s), 1)
        return self.fc(flat) + self.fc2(flat) + self.fc3(0.5 * torch.flatten(h, 1))


class FlattenOutput(nn.Module):
    """A flatten used by something else than a Linear alone: an edge of its own."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(16, 16)

    def forward(self, x):
        flat = self.conv(x).flatten(1)
        return torch.relu(self.fc(flat) + flat)


ZOO = {
    "conv_bn_relu_2d": (ConvBnRelu2d, (3, 8, 8)),
    "conv_bn_act_1d": (ConvBnAct1d, (2, 12)),
    "mnist1d_cnn": (Mnist1dCNN, (1, 40)),
    "basic_block_identity": (lambda: BasicBlock(6, 6), (6, 7, 7)),
    "basic_block_downsample": (lambda: BasicBlock(4, 8, stride=2), (4, 9, 9)),
    "small_resnet": (SmallResNet, (3, 16, 16)),
    "pooling_2d": (PoolingZoo2d, (2, 12, 12)),
    "pooling_1d": (PoolingZoo1d, (3, 22)),
    "grouped_dilated": (GroupedDilated, (4, 10, 8)),
    "scaled_terms": (ScaledTerms, (3, 8)),
    "flatten_output": (FlattenOutput, (1, 4, 6)),
}


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(ZOO[name][0]()).double().eval()


def make_input(shape, n=5, seed=7) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_same_function(model, graph, x, atol=1e-10):
    with torch.no_grad():
        got, want = graph.compile().eval()(x), model.eval()(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


def shapes_of(graph):
    return {n: (s.width, s.shape) for n, s in graph.nodes.items()}


def kinds_of(graph):
    return sorted({e.block.kind for e in graph.edges.values()})


# ============================================================================ equal outputs
@pytest.mark.parametrize("name", list(ZOO))
def test_cnn_zoo_traces_and_compiles_with_equal_outputs(name):
    model = make_model(name)
    x = make_input(ZOO[name][1])
    graph = dg.trace(model, x)
    graph.validate()
    assert_same_function(model, graph, x)
    assert_same_function(model, graph, make_input(ZOO[name][1], n=2, seed=1))  # another batch size
    assert graph.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["conv_bn_relu_2d", "small_resnet"])
def test_training_mode_batch_norms_agree(name):
    model = make_model(name)
    model.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, nn.Dropout) else None)
    x = make_input(ZOO[name][1], n=6)
    graph = dg.trace(model, x)
    compiled = graph.compile().train()
    reference = copy.deepcopy(model).train()
    torch.testing.assert_close(compiled(x), reference(x), rtol=0, atol=1e-10)


# ============================================================================ structure
def test_mnist1d_cnn_has_sequence_nodes_and_one_linear_edge_from_the_last_conv_node():
    model = make_model("mnist1d_cnn")
    graph = dg.trace(model, make_input((1, 40)))
    assert shapes_of(graph) == {"x": (1, (40,)), "relu": (8, (19,)), "relu_1": (8, (10,)), "relu_2": (8, (5,)),
                                "linear": (10, ())}
    assert [(e.name, e.source, e.target, e.block.kind) for e in graph.edges.values()] == [
        ("conv1", "x", "relu", "conv"), ("conv2", "relu", "relu_1", "conv"), ("conv3", "relu_1", "relu_2", "conv"),
        ("linear", "relu_2", "linear", "linear")]
    assert graph.edge("conv1").block == dg.ConvBlock(dim=1, kernel_size=5, stride=2, padding=1)
    assert graph.module("linear").weight.shape == (10, 40)
    assert all(graph.is_growable(e) for e in graph.edges)
    assert all(graph.node(n).activation == "relu" for n in ("relu", "relu_1", "relu_2"))


def test_conv_bn_act_nodes_take_their_norm_activation_and_dropout():
    graph = dg.trace(make_model("conv_bn_relu_2d"), make_input((3, 8, 8)))
    relu, gelu = graph.node("relu"), graph.node("gelu")
    assert (relu.width, relu.shape, relu.activation, relu.norm.kind, relu.dropout) == (8, (8, 8), "relu",
                                                                                       "batchnorm", 0.1)
    assert (gelu.width, gelu.shape, gelu.activation) == (6, (4, 4), "gelu")
    assert type(graph.norm_module("relu")) is nn.BatchNorm2d
    # global pooling is a pool edge to a node; flatten + Linear is one linear edge from it
    assert graph.edge("pool").block == dg.PoolBlock(op="adaptive_avg", dim=2, output_size=1)
    assert shapes_of(graph)["pool"] == (6, (1, 1))
    assert (graph.edge("fc").source, graph.edge("fc").block.kind) == ("pool", "linear")
    assert "flatten" not in kinds_of(graph)

    graph = dg.trace(make_model("conv_bn_act_1d"), make_input((2, 12)))
    assert type(graph.norm_module("act")) is nn.BatchNorm1d and graph.node("act").shape == (12,)
    assert graph.edge("conv2").block.padding == (2,)  # padding="same"
    assert graph.node("tanh").dropout == 0.2 and graph.edge("fc").source == "tanh"


def test_basic_block_batch_norm_before_the_sum_gets_a_node_of_its_own():
    graph = dg.trace(make_model("basic_block_identity"), make_input((6, 7, 7)))
    bn2 = graph.node("bn2")
    assert (bn2.activation, bn2.norm.kind, bn2.shape) == ("identity", "batchnorm", (7, 7))
    assert [(e.source, e.block.kind) for e in graph.in_edges("bn2")] == [("relu", "conv")]
    out = graph.outputs[0]
    assert graph.node(out).activation == "relu" and graph.node(out).norm is None
    assert sorted((e.source, e.block.kind) for e in graph.in_edges(out)) == [("bn2", "identity"),
                                                                            ("x", "identity")]

    graph = dg.trace(make_model("basic_block_downsample"), make_input((4, 9, 9)))
    out = graph.outputs[0]
    assert sorted(e.source for e in graph.in_edges(out)) == ["bn2", "downsample_1"]
    shortcut = graph.node("downsample_1")
    assert (shortcut.width, shortcut.shape, shortcut.norm.kind) == (8, (5, 5), "batchnorm")
    (conv,) = graph.in_edges("downsample_1")
    assert (conv.name, conv.source, conv.block) == ("downsample.0", "x", dg.ConvBlock(dim=2, kernel_size=1, stride=2,
                                                                                       bias=False))


def test_small_resnet_structure():
    graph = dg.trace(make_model("small_resnet"), make_input((3, 16, 16)))
    assert kinds_of(graph) == ["conv", "identity", "linear", "pool"]
    assert graph.edge("maxpool").block == dg.PoolBlock(op="max", dim=2, kernel_size=3, stride=2, padding=1)
    assert shapes_of(graph)["maxpool"] == (8, (8, 8)) and shapes_of(graph)["avgpool"] == (16, (1, 1))
    assert graph.edge("fc").source == "avgpool"
    assert len(graph.successors("maxpool")) == 2  # the first block's conv and its shortcut
    norms = [s for s in graph.nodes.values() if s.norm is not None]
    assert len(norms) == 1 + 2 * 4 + 1  # stem, two per block, the downsample


def test_flatten_read_otherwise_is_a_flatten_edge():
    graph = dg.trace(make_model("flatten_output"), make_input((1, 4, 6)))
    flat = [e for e in graph.edges.values() if e.block.kind == "flatten"]
    assert len(flat) == 1 and shapes_of(graph)[flat[0].target] == (16, ())
    assert graph.edge("fc").source == flat[0].target

    graph = dg.trace(make_model("scaled_terms"), make_input((3, 8)))
    assert [e.block.kind for e in graph.in_edges("flatten")] == ["flatten"]  # read by fc and fc2
    assert {graph.edge(n).source for n in ("fc", "fc2")} == {"flatten"}


def test_scales_fold_into_convs_and_pass_poolings_through_a_node():
    model = make_model("scaled_terms")
    graph = dg.trace(model, make_input((3, 8)))
    torch.testing.assert_close(graph.module("a").weight, 0.5 * model.a.weight, rtol=0, atol=0)
    torch.testing.assert_close(graph.module("b").bias, 2 * model.b.bias, rtol=0, atol=0)
    (pool,) = [e for e in graph.edges.values() if e.block.kind == "pool" and e.block.op == "avg"]
    assert [(e.block.kind, e.block.scale) for e in graph.out_edges(pool.target)] == [("identity", 0.25)]


def test_grouped_convs_are_conv_blocks_frozen_for_growth():
    graph = dg.trace(make_model("grouped_dilated"), make_input((4, 10, 8)))
    assert graph.edge("grouped").block.groups == 2 and not graph.is_growable("grouped")
    assert graph.edge("depthwise").block == dg.ConvBlock(dim=2, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0),
                                                         groups=6, bias=False)
    assert graph.edge("dilated").block.dilation == (2, 2) and graph.is_growable("dilated")
    assert shapes_of(graph)["silu"] == (6, (10, 8)) and shapes_of(graph)["elu"] == (6, (5, 8))
    assert [e.block.kind for e in graph.in_edges(graph.outputs[0])] == ["flatten"]


def test_pooling_blocks():
    graph = dg.trace(make_model("pooling_2d"), make_input((2, 12, 12)))
    pools = {e.name: e.block for e in graph.edges.values() if e.block.kind == "pool"}
    assert pools["mp"] == dg.PoolBlock(op="max", dim=2, kernel_size=2)
    assert pools["ap"] == dg.PoolBlock(op="avg", dim=2, kernel_size=3, stride=1, padding=1)
    assert pools["max_pool2d"] == dg.PoolBlock(op="max", dim=2, kernel_size=2, stride=(1, 2), ceil_mode=True)
    assert pools["adaptive_avg_pool2d"].output_size == (2, 1)
    assert pools["mean"] == dg.PoolBlock(op="adaptive_avg", dim=2, output_size=1)
    assert graph.edge("fc").source == "mean" and shapes_of(graph)["mean"] == (4, (1, 1))

    graph = dg.trace(make_model("pooling_1d"), make_input((3, 22)))
    pools = {e.name: e.block for e in graph.edges.values() if e.block.kind == "pool"}
    assert pools["mp"] == dg.PoolBlock(op="max", dim=1, kernel_size=3, stride=2, padding=1)
    assert pools["avg_pool1d"] == dg.PoolBlock(op="avg", dim=1, kernel_size=2, padding=1)
    assert pools["adaptive_avg_pool1d"].output_size == (2,)
    assert graph.node(graph.edge("fc").source).shape == (2,)


class FlattenThenLinear(nn.Module):
    def __init__(self, flatten):
        super().__init__()
        self.conv, self.fc = nn.Conv1d(2, 3, 3), nn.Linear(12, 2)
        self.flatten = flatten

    def forward(self, x):
        return self.fc(self.flatten(torch.relu(self.conv(x))))


@pytest.mark.parametrize("flatten", [lambda h: torch.flatten(h, 1), lambda h: h.view(h.size(0), -1),
                                     lambda h: h.reshape(-1, 12), nn.Flatten(), lambda h: h.flatten(start_dim=1)])
def test_every_way_of_flattening_before_a_linear_is_one_linear_edge(flatten):
    torch.manual_seed(0)
    model = FlattenThenLinear(flatten).double().eval()
    x = make_input((2, 6))
    graph = dg.trace(model, x)
    assert [(e.source, e.target, e.block.kind) for e in graph.edges.values()] == [("x", "relu", "conv"),
                                                                                  ("relu", "fc", "linear")]
    assert_same_function(model, graph, x)


def test_save_and_load_round_trip(tmp_path):
    model = make_model("small_resnet")
    x = make_input((3, 16, 16))
    graph = dg.trace(model, x)
    graph.save(tmp_path / "resnet")
    loaded = dg.Graph.load(tmp_path / "resnet")
    assert shapes_of(loaded) == shapes_of(graph)
    assert [e.block for e in loaded.edges.values()] == [e.block for e in graph.edges.values()]
    assert_same_function(model, loaded, x)


def test_torchvision_resnet18():
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = randomize_norms(models.resnet18(num_classes=10)).double().eval()
    x = make_input((3, 32, 32), n=2)
    graph = dg.trace(model, x)
    assert_same_function(model, graph, x)
    assert graph.num_parameters() == sum(p.numel() for p in model.parameters())
    assert graph.edge("fc").source == "avgpool" and graph.node("avgpool").shape == (1, 1)


def test_spatial_docstring_examples():
    result = doctest.testmod(importlib.import_module("daggrow.trace.spatial"))
    assert result.attempted > 0 and result.failed == 0


# ============================================================================ refusals
HERE = r"test_cnn\.py:\d+"


class Apply(nn.Module):
    """``forward(x) = fn(self, x)`` around a few layers, to write one refusal per line."""

    def __init__(self, fn, **layers):
        super().__init__()
        self.fn = fn
        for name, layer in layers.items():
            self.add_module(name, layer)

    def forward(self, x):
        return self.fn(self, x)


IMG, SEQ = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8)

CASES = {
    "padding mode": (Apply(lambda m, x: m.c(x), c=nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")), IMG,
                     [r"module `c` \(Conv2d\) with padding_mode='reflect'", r"fix: use padding_mode='zeros'",
                      "leaf_modules"]),
    "same padding, even kernel": (Apply(lambda m, x: m.c(x), c=nn.Conv1d(3, 4, 4, padding="same")), SEQ,
                                  [r"padding='same' and kernel_size=\(4,\)", r"fix: use an odd kernel size"]),
    "return indices": (Apply(lambda m, x: m.p(x)[0], p=nn.MaxPool2d(2, return_indices=True)), IMG,
                       [r"module `p` \(MaxPool2d\) with return_indices=True", HERE,
                        r"fix: a daggrow edge carries one tensor"]),
    "max pool with indices": (Apply(lambda m, x: F.max_pool1d_with_indices(x, 2)[0]), SEQ,
                              [r"max_pool1d_with_indices with return_indices=True"]),
    "dilation": (Apply(lambda m, x: m.p(x), p=nn.MaxPool1d(2, dilation=2)), SEQ,
                 [r"module `p` \(MaxPool1d\) with dilation=2", r"fix: use dilation=1"]),
    "divisor_override": (Apply(lambda m, x: m.p(x), p=nn.AvgPool2d(2, divisor_override=3)), IMG,
                         [r"module `p` \(AvgPool2d\) with divisor_override=3", r"fix: drop divisor_override"]),
    "kernel from a shape": (Apply(lambda m, x: F.avg_pool2d(x, x.shape[2])), IMG,
                            [r"avg_pool2d with kernel_size computed while tracing", HERE,
                             r"fix: write kernel_size as Python numbers"]),
    "partial reshape": (Apply(lambda m, x: x.view(x.size(0), 3, 64)), IMG,
                        [r"\.view\(\) \(call_method view\), which changes the shape \(2, 3, 8, 8\) to \(2, 3, 64\)",
                         HERE, r"fix: .*torch\.flatten\(h, 1\)"]),
    "mean over channels": (Apply(lambda m, x: x.mean(1)), IMG,
                           [r"\.mean\(\) \(call_method mean\) over dim=1 of a tensor of shape \(2, 3, 8, 8\)",
                            r"fix: a mean over every spatial dimension"]),
    "conv on an unbatched tensor": (Apply(lambda m, x: m.c(x), c=nn.Conv2d(2, 4, 3)), SEQ,
                                    [r"module `c` \(Conv2d\) applied to a tensor of shape \(2, 3, 8\)",
                                     r"fix: a 2-d convolution reads a \(batch, channels, height, width\) tensor"]),
    "5-d input": (Apply(lambda m, x: torch.relu(x)), torch.randn(2, 3, 4, 4, 4),
                  [r"input `x` of shape \(2, 3, 4, 4, 4\)", r"\(batch, channels, height, width\)",
                   r"fix: reshape the input"]),
    "channel dropout": (Apply(lambda m, x: m.d(x), d=nn.Dropout2d(0.1)), IMG,
                        [r"module `d` \(Dropout2d\)", r"fix: .*leaf_modules=\[Dropout2d\]"]),
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", list(CASES))
def test_strict_refusals_name_the_op_the_line_and_the_fix(case):
    model, x, patterns = CASES[case]
    with pytest.raises(dg.TraceError) as info:
        dg.trace(model, x, strict=True)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in:\n{message}"


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", list(CASES))
def test_without_strict_the_refused_ops_become_op_nodes_with_the_same_outputs(case):
    model, x, patterns = CASES[case]
    with pytest.warns(dg.OpaqueOpWarning, match=HERE if "input" not in case else "") as record:
        graph = dg.trace(model, x)
    assert len(record) == 1
    assert any(spec.op is not None for spec in graph.nodes.values())
    assert_same_function(model, graph, x, atol=1e-6)


# ceil_mode, count_include_pad=False with padding, Linear over the last dimension of a sequence
# tensor (tokens) and LayerNorm over an image's last dimension are first class now
FIRST_CLASS = {
    "ceil mode": (Apply(lambda m, x: F.max_pool2d(x, 3, ceil_mode=True)), IMG, "pool"),
    "ceil avg": (Apply(lambda m, x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
                 torch.randn(2, 3, 9, 9), "pool"),
    "count_include_pad": (Apply(lambda m, x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)), IMG, "pool"),
    "linear on a sequence": (Apply(lambda m, x: m.fc(torch.relu(x)), fc=nn.Linear(8, 2)), SEQ, "linear"),
    "layer norm on an image": (Apply(lambda m, x: m.ln(x), ln=nn.LayerNorm(8)), IMG, "identity"),
}


@pytest.mark.parametrize("case", list(FIRST_CLASS))
def test_once_refused_ops_are_first_class(case, recwarn):
    model, x, kind = FIRST_CLASS[case]
    graph = dg.trace(model, x, strict=True)
    assert not [w for w in recwarn if issubclass(w.category, dg.OpaqueOpWarning)]
    assert kind in {e.block.kind for e in graph.edges.values()}
    assert_same_function(model, graph, x, atol=1e-6)
    assert_same_function(model, graph, torch.randn(5, *x.shape[1:], dtype=x.dtype), atol=1e-6)


def test_refused_conv_is_accepted_as_a_leaf():
    model = Apply(lambda m, x: m.fc(torch.flatten(torch.relu(m.c(x)), 1)),
                  c=nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), fc=nn.Linear(4 * 64, 2)).eval()
    graph = dg.trace(model, IMG, leaf_modules=["c"])
    assert graph.edge("c").block.kind == "frozen" and graph.node("relu").shape == (8, 8)
    with torch.no_grad():
        torch.testing.assert_close(graph.compile()(IMG), model(IMG), rtol=0, atol=1e-6)


def test_a_channel_view_of_a_flat_input_asks_for_shaped_inputs():
    """MNIST-1D code often reshapes (batch, 40) to (batch, 1, 40) inside forward."""

    class Viewing(Mnist1dCNN):
        def forward(self, x):
            return super().forward(x.view(-1, 1, x.shape[-1]))

    torch.manual_seed(0)
    model = Viewing().double().eval()
    flat = make_input((40,))
    with pytest.raises(dg.TraceError, match=r"changes the shape \(5, 40\) to \(5, 1, 40\)[^\n]*\n.*give the model "
                                             r"inputs already shaped \(5, 1, 40\)"):
        dg.trace(model, flat, strict=True)
    with pytest.warns(dg.OpaqueOpWarning, match="view"):
        assert_same_function(model, dg.trace(model, flat), flat)  # the view becomes an op node
    x = flat.view(-1, 1, 40)
    graph = dg.trace(model, x)
    assert graph.node("x").shape == (40,)
    assert_same_function(model, graph, x)
