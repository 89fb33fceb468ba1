"""Node-by-node evaluation: cached and appended values equal a full recomputation."""

from __future__ import annotations

import torch

import daggrow as dg
from daggrow.compile import eval_mode, node_values
from daggrow.grow import rewrite


def test_appending_new_neurons_equals_full_recomputation():
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 5)
    g.add_input("z", 2)
    g.add_node("h", 3, "selu", norm="batchnorm")
    g.add_node("y", 2)
    g.add_edge("x", "h"); g.add_edge("z", "h", bias=False); g.add_edge("h", "y"); g.add_edge("x", "y")
    g.set_output("y")
    m = g.compile(); m.train(); m(torch.randn(16, 5), torch.randn(16, 2))  # non-trivial running statistics
    xs = (torch.randn(9, 5), torch.randn(9, 2))
    grown = rewrite.add_neurons(g, "h", {"x_to_h": torch.randn(2, 5), "z_to_h": torch.randn(2, 2)},
                                {"h_to_y": torch.randn(2, 2)}, bias={"x_to_h": torch.randn(2)}, step=1)
    with torch.no_grad(), eval_mode(g), eval_mode(grown):
        base = node_values(g, xs)
        full = node_values(grown, xs)
        appended = node_values(grown, xs, cache=base, reuse=["x", "z"], grown={"h": 3})
    for name in full:
        torch.testing.assert_close(appended[name], full[name], rtol=1e-6, atol=1e-6)
    # the old neurons really come from the cache (the append path was taken)
    marked = dict(base, h=torch.full_like(base["h"], 7.0))
    with torch.no_grad(), eval_mode(grown):
        again = node_values(grown, xs, cache=marked, reuse=["x", "z"], grown={"h": 3})
    assert torch.equal(again["h"][:, :3], marked["h"])
