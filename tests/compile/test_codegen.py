"""Generated code for the newer node kinds: public function names, no leading blank lines, op
programs written inline, concatenations as torch.cat; the evaluator agrees with the module."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import daggrow as dg
from daggrow.compile import eval_mode, node_values
from daggrow.graph.activations import ACTIVATIONS


def test_code_names_public_functions_and_starts_with_def():
    g = dg.Graph()
    g.add_input("x", 4)
    previous = "x"
    for name in sorted(ACTIVATIONS):
        g.add_node(name, 4, name)
        g.add_edge(previous, name)
        previous = name
    g.set_output(previous)
    code = g.compile().code
    assert code.startswith("def forward(self, x):"), code[:40]
    assert "torch._C" not in code
    for public in ("torch.nn.functional.gelu(", "torch.nn.functional.softplus(", "torch.nn.functional.hardswish(",
                   "torch.nn.functional.relu6(", "torch.nn.functional.mish(", "torch.relu("):
        assert public in code, public
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(g.compile()(x), node_values(g, (x,))[previous])


class Mixed(nn.Module):
    """A product, a channels-last norm, a concatenation and a gelu."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.ln, self.out = nn.Linear(4, 6), nn.Linear(4, 2), nn.LayerNorm(6), nn.Linear(8, 3)

    def forward(self, x):
        h = F.gelu(self.a(x))
        g = h * torch.sigmoid(h).flip(1)
        return self.out(torch.cat([self.ln(g), self.b(x)], dim=1))


def test_op_programs_and_concatenations_are_inline():
    model = Mixed().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.OpaqueOpWarning)
        graph = dg.trace(model, torch.randn(3, 4))
    code = graph.compile().code
    assert "flip = sigmoid.flip(1)" in code and "mul = gelu * flip" in code
    assert "torch.cat([" in code and "torch.nn.functional.gelu(" in code and "torch._C" not in code
    x = torch.randn(5, 4)
    with torch.no_grad(), eval_mode(graph):
        out = graph.compile().eval()(x)
        torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(node_values(graph, (x,))[graph.outputs[0]], out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("offsets", [(0, 3), (2, 0), (0, 1)])
def test_placements_that_do_not_tile_are_padded_terms(offsets):
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_input("z", 2)
    g.add_node("c", 5)
    g.add_edge("x", "c", dg.PlaceBlock(offset=offsets[0]))
    g.add_edge("z", "c", dg.PlaceBlock(offset=offsets[1], scale=2.0))
    g.set_output("c")
    x, z = torch.randn(4, 3), torch.randn(4, 2)
    want = torch.zeros(4, 5)
    want[:, offsets[0]:offsets[0] + 3] += x
    want[:, offsets[1]:offsets[1] + 2] += 2 * z
    torch.testing.assert_close(g.compile()(x, z), want)
    torch.testing.assert_close(node_values(g, (x, z))["c"], want)


def test_a_placement_must_fit_its_target():
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node("c", 4)
    with pytest.raises(dg.WidthMismatchError, match="overruns"):
        g.add_edge("x", "c", dg.PlaceBlock(offset=2))
