"""Blocks: every shape and module mismatch is refused by add_edge, and parameter-free blocks compute
what torch computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import daggrow as dg
from daggrow.graph.blocks import default_module, edge_forward, parameter_free_function


def _graph() -> dg.Graph:
    g = dg.Graph()
    g.add_input("img", 4, shape=(6, 6))
    g.add_input("seq", 4, shape=(10,))
    g.add_input("vec", 4)
    g.add_node("img2", 6, shape=(6, 6))
    g.add_node("small", 4, shape=(3, 3))
    g.add_node("v3", 3)
    g.add_node("v4", 4)
    return g


@pytest.mark.parametrize("source, target, block, module, message", [
    ("vec", "img2", "linear", None, "a linear block writes a vector node"),
    ("vec", "v3", "identity", None, "an identity needs equal widths and shapes"),
    ("seq", "img2", dg.ConvBlock(dim=2, kernel_size=3, padding=1), None, "a 2-d conv joins nodes with 2-d shapes"),
    ("img", "img2", dg.ConvBlock(dim=2, kernel_size=3, padding=1, groups=4), None, "groups=4 must divide both"),
    ("img", "img2", dg.ConvBlock(dim=2, kernel_size=3), None, "the conv maps shape \\(6, 6\\) to \\(4, 4\\)"),
    ("img", "img2", dg.PoolBlock(op="max", dim=2, kernel_size=2), None, "a 2-d pool keeps the channels"),
    ("img", "small", dg.PoolBlock(op="max", dim=2, kernel_size=3, stride=3, padding=1), None,
     "the pool maps shape \\(6, 6\\) to"),
    ("img", "v3", dg.FlattenBlock(), None, "flatten gives a vector of 144 features"),
    ("vec", "v3", "linear", torch.nn.Conv1d(4, 3, 1), "needs an nn.Linear, got Conv1d"),
    ("vec", "v3", "linear", torch.nn.Linear(4, 2), "needs a weight of shape \\(3, 4\\)"),
    ("vec", "v3", "linear", torch.nn.Linear(4, 3, bias=False), "the block says bias=True but the module has no bias"),
    ("img", "img2", dg.ConvBlock(dim=2, kernel_size=3, padding=1), torch.nn.Linear(4, 6), "needs an nn.Conv2d"),
    ("img", "img2", dg.ConvBlock(dim=2, kernel_size=3, padding=1), torch.nn.Conv2d(4, 6, 3, padding=2),
     "the module .* differs from the block"),
    ("img", "img2", dg.ConvBlock(dim=2, kernel_size=3, padding=1),
     torch.nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), "only padding_mode='zeros'"),
    ("vec", "v4", "identity", torch.nn.Linear(4, 4), "identity edge .* its module must be nn.Identity"),
    ("vec", "v4", dg.FrozenBlock(module_type="x"), "not a module", "frozen edge .* needs an nn.Module"),
])
def test_mismatches_are_refused(source, target, block, module, message):
    g = _graph()
    with pytest.raises(dg.GraphError, match=message):
        g.add_edge(source, target, block, module=module)
    assert not g.edges


def test_frozen_blocks_have_no_default_module_and_parameters_no_function():
    g = _graph()
    with pytest.raises(dg.GraphError, match="a frozen block has no default module: pass module="):
        g.add_edge("vec", "v4", dg.FrozenBlock(module_type="Tanh"))
    with pytest.raises(dg.GraphError, match="a linear block has parameters"):
        parameter_free_function(dg.LinearBlock())


@pytest.mark.parametrize("block, reference", [
    (dg.IdentityBlock(scale=0.5), lambda h: 0.5 * h),
    (dg.FlattenBlock(), lambda h: h.flatten(1)),
    (dg.PoolBlock(op="max", dim=2, kernel_size=2), lambda h: F.max_pool2d(h, 2)),
    (dg.PoolBlock(op="avg", dim=2, kernel_size=3, stride=1, padding=1), lambda h: F.avg_pool2d(h, 3, 1, 1)),
    (dg.PoolBlock(op="adaptive_avg", dim=2, output_size=1), lambda h: F.adaptive_avg_pool2d(h, 1)),
])
def test_parameter_free_blocks_compute_what_torch_computes(block, reference):
    source = _graph().node("img")
    h = torch.randn(2, 4, 6, 6)
    out = edge_forward(block, default_module(block, source, source), source, h)
    torch.testing.assert_close(out, reference(h), rtol=0, atol=0)


def test_a_linear_edge_flattens_an_image_source():
    g = _graph()
    name = g.add_edge("img", "v3")
    h = torch.randn(2, 4, 6, 6)
    out = edge_forward(g.edge(name).block, g.module(name), g.node("img"), h)
    torch.testing.assert_close(out, g.module(name)(h.flatten(1)))
