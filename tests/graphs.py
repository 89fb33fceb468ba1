"""Small graphs several test modules build."""

from __future__ import annotations

import torch

import daggrow as dg


def skip_dag(widths: tuple[int, int, int, int], activations: tuple[str, str], seed: int = 0,
             dtype: torch.dtype = torch.float64) -> dg.Graph:
    """x → a → b → y with the skip edges x → b (no bias) and a → y; ``widths`` of x, a, b, y."""
    torch.manual_seed(seed)
    g = dg.Graph()
    g.add_input("x", widths[0])
    g.add_node("a", widths[1], activations[0])
    g.add_node("b", widths[2], activations[1])
    g.add_node("y", widths[3])
    g.add_edge("x", "a")
    g.add_edge("a", "b")
    g.add_edge("x", "b", bias=False)
    g.add_edge("b", "y")
    g.add_edge("a", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.to(dtype)
    return g


def one_hidden(widths: tuple[int, int, int], activation: str, seed: int = 0, **hidden) -> dg.Graph:
    """x → h → y (float32) with ``widths`` of x, h, y; ``hidden``: more options of h (e.g. ``norm``)."""
    torch.manual_seed(seed)
    g = dg.Graph()
    g.add_input("x", widths[0])
    g.add_node("h", widths[1], activation, **hidden)
    g.add_node("y", widths[2])
    g.add_edge("x", "h")
    g.add_edge("h", "y")
    g.set_output("y")
    return g


def conv_dag(seed: int = 0, act: str = "tanh", dim: int = 1) -> dg.Graph:
    """x (2 ch) → a (conv k3 s1 p1) ; x, a → c (two conv in-edges) → y (linear, flattens c)."""
    torch.manual_seed(seed)
    shape = (9,) if dim == 1 else (5, 4)
    g = dg.Graph()
    g.add_input("x", 2, shape=shape)
    g.add_node("a", 3, act, shape=shape)
    out = dg.ConvBlock(dim=dim, kernel_size=3, stride=2, padding=1).output_shape(shape)
    g.add_node("c", 2, act, shape=out)
    g.add_node("y", 3)
    g.add_edge("x", "a", dg.ConvBlock(dim=dim, kernel_size=3, padding=1))
    g.add_edge("x", "c", dg.ConvBlock(dim=dim, kernel_size=3, stride=2, padding=1))
    g.add_edge("a", "c", dg.ConvBlock(dim=dim, kernel_size=1, stride=2, bias=False))
    g.add_edge("c", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.to(torch.float64)
    return g
