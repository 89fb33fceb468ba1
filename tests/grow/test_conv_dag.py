"""New conv nodes (a 3×3 branch) and conv edges (a 1×1 or strided skip) between image nodes
(daggrow.grow.conv_dag): geometry, rewrite, amplitude 0, and first-order gains against finite
differences of the real loss in float64; the new edge's weight against a brute-force lstsq."""

from __future__ import annotations

import warnings

import pytest
import torch

import daggrow as dg
from daggrow.grow import rewrite
from daggrow.grow.line_search import line_search
from daggrow.grow.conv_dag import conv_geometry
from daggrow.stats import per_sample_loss


def cnn(seed: int = 0, dim: int = 2) -> dg.Graph:
    """x (2 × 8²) → 3×3 → a (4 × 8², relu) → 3×3/2 → b (4 × 4², relu) → 3×3 → c (3 × 4², tanh) → y."""
    torch.manual_seed(seed)
    size = (8,) * dim
    half = (4,) * dim
    g = dg.Graph()
    g.add_input("x", 2, shape=size)
    g.add_node("a", 4, "relu", shape=size)
    g.add_node("b", 4, "relu", shape=half)
    g.add_node("c", 3, "tanh", shape=half)
    g.add_node("y", 3)
    g.add_edge("x", "a", dg.ConvBlock(dim=dim, kernel_size=3, padding=1))
    g.add_edge("a", "b", dg.ConvBlock(dim=dim, kernel_size=3, stride=2, padding=1))
    g.add_edge("b", "c", dg.ConvBlock(dim=dim, kernel_size=3, padding=1))
    g.add_edge("c", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.double()
    return g


def data(dim: int = 2, n: int = 48):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, *(8,) * dim, generator=gen, dtype=torch.float64)
    y = torch.tanh(x.flatten(1)[:, :3] * 2 + x.flatten(1)[:, 5:8]) + 0.1 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2:], y[n // 2:])]


def loss_of(g: dg.Graph, batches) -> float:
    with torch.no_grad():
        module = g.compile()
        return float(torch.cat([per_sample_loss("mse", module(x), y) for x, y in batches]).mean())


def test_geometry_keeps_a_stage_or_halves_it():
    g = cnn()
    assert conv_geometry(g, "a", "b", "new_node") == dg.ConvBlock(dim=2, kernel_size=3, stride=2, padding=1)
    assert conv_geometry(g, "x", "a", "new_edge") == dg.ConvBlock(dim=2, kernel_size=1)
    assert conv_geometry(g, "a", "c", "new_edge") == dg.ConvBlock(dim=2, kernel_size=1, stride=2)
    assert conv_geometry(g, "b", "b", "new_node") == dg.ConvBlock(dim=2, kernel_size=3, padding=1)
    g.add_node("tiny", 2, shape=(1, 1))
    assert conv_geometry(g, "a", "tiny", "new_node") is None  # 8² → 1²: no stride 1 or 2 conv


def test_conv_pairs_are_candidates_between_image_nodes():
    g = cnn()
    pairs = {(c.kind, c.sources[0], c.targets[0]): c.block for c in dg.enumerate_candidates(g, ["new_node", "new_edge"])}
    assert pairs[("new_node", "x", "b")].stride == (2, 2) and pairs[("new_node", "a", "c")].kernel_size == (3, 3)
    assert pairs[("new_edge", "a", "c")] == dg.ConvBlock(dim=2, kernel_size=1, stride=2)
    assert ("new_edge", "a", "b") not in pairs  # a conv a → b exists: its best update covers it
    assert pairs[("new_node", "c", "y")] is None  # into a vector node: a linear block, as before


@pytest.mark.parametrize("dim", [1, 2])
def test_first_order_gains_of_new_conv_nodes_and_edges_match_finite_differences(dim):
    g, batches = cnn(dim=dim), data(dim)
    stats = dg.collect_statistics(g, batches, "mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proposals = [p for p in dg.propose(g, stats, max_neurons=2, kinds=["new_node", "new_edge"])
                     if p.candidate.block is not None]
    assert {p.kind for p in proposals} == {"new_node", "new_edge"}
    base, x = loss_of(g, batches), batches[0][0]
    with torch.no_grad():
        before = g.compile()(x)
    for p in proposals:
        with torch.no_grad():
            torch.testing.assert_close(dg.apply(g, p, 0.0).compile()(x), before, rtol=0, atol=1e-12)
        gamma = 1e-6
        measured = (base - loss_of(dg.apply(g, p, gamma), batches)) / gamma
        assert measured == pytest.approx(p.first_order_gain, rel=0.02, abs=1e-10), p
        found = line_search(g, p, batches[1], "mse")
        assert found.loss_after == pytest.approx(loss_of(dg.apply(g, p, found.amplitude), batches[1:]), rel=1e-9)
    grown = dg.apply(g, next(p for p in proposals if p.kind == "new_node"), 1.0)
    (name,) = set(grown.nodes) - set(g.nodes)
    assert grown.node(name).shape == g.node(next(p for p in proposals if p.kind == "new_node").targets[0]).shape
    assert [e.block.kind for e in grown.in_edges(name) + grown.out_edges(name)] == ["conv", "conv"]


def test_a_new_strided_skip_is_the_least_squares_fit_of_the_desired_move():
    """δW of the new edge a → c (1×1, stride 2) solves min ‖V⊥ − δW B‖² over every (sample,
    position) row: checked against torch.linalg.lstsq on explicit data."""
    g, batches = cnn(), data()
    stats = dg.collect_statistics(g, batches, "mse")
    cand = next(c for c in dg.enumerate_candidates(g, ["new_edge"]) if (c.sources[0], c.targets[0]) == ("a", "c"))
    (p,) = dg.propose(g, stats, candidates=[cand], unprojected_fallback=False)
    # explicit rows: a at c's positions (1×1, stride 2) with a constant; c's in-view (3×3 patches of b) with one
    from daggrow.compile import node_values
    rows_b, rows_in, z_moves = [], [], []
    for x, y in batches:
        values = node_values(g, (x,))
        a_val, b_val = values["a"], values["b"]
        rows_b.append(torch.cat([a_val[:, :, ::2, ::2].flatten(2).transpose(1, 2).reshape(-1, 4),
                                 torch.ones(a_val.shape[0] * 16, 1, dtype=torch.float64)], 1))
        unfold = torch.nn.functional.unfold(b_val, 3, padding=1).transpose(1, 2).reshape(-1, 36)
        rows_in.append(torch.cat([unfold, torch.ones(unfold.shape[0], 1, dtype=torch.float64)], 1))
        # the desired move at c: −∂ℓ_i/∂z_c of the real per-sample loss, by autograd
        zc = g.module("b_to_c")(b_val).detach().requires_grad_(True)
        out = g.module("c_to_y")(torch.tanh(zc).flatten(1))
        per_sample_loss("mse", out, y).sum().backward()
        z_moves.append((-zc.grad).flatten(2).transpose(1, 2).reshape(-1, 3))
    B, B_in = torch.cat(rows_b), torch.cat(rows_in)
    V = torch.cat(z_moves)
    # V⊥: the part of V the existing in-edge of c cannot fit; then the new edge fits V⊥
    fit_in = torch.linalg.lstsq(B_in, V).solution
    V_perp = V - B_in @ fit_in
    expected = torch.linalg.lstsq(B, V_perp).solution.T
    torch.testing.assert_close(p.weight, expected, rtol=1e-6, atol=1e-8)


def test_the_rewrites_build_conv_modules_and_refuse_cycles():
    g = cnn()
    new = rewrite.new_edge(g, "x", "b", torch.randn(4, 2), torch.zeros(4), block=dg.ConvBlock(dim=2, kernel_size=1, stride=2))
    assert isinstance(new.module("x_to_b"), torch.nn.Conv2d) and new.module("x_to_b").stride == (2, 2)
    new = rewrite.new_node(g, "a", "c", "n1", torch.randn(5, 36), torch.randn(3, 5), None,
                           block=dg.ConvBlock(dim=2, kernel_size=3, stride=2, padding=1))
    assert new.node("n1").shape == (4, 4) and new.module("a_to_n1").bias is None
    with pytest.raises(dg.GraphError, match="cycle"):
        rewrite.new_node(g, "c", "a", "n1", torch.randn(5, 27), torch.randn(4, 5),
                         block=dg.ConvBlock(dim=2, kernel_size=3, stride=2, padding=1))


def test_conv_pairs_join_nodes_one_or_two_layers_apart():
    """A deep CNN's statistics must fit: conv pairs reach at most two layers ahead."""
    g = cnn()
    g.add_node("d", 3, "relu", shape=(4, 4))
    g.remove_edge("c_to_y")
    g.add_edge("c", "d", dg.ConvBlock(dim=2, kernel_size=3, padding=1))
    g.add_edge("d", "y")
    pairs = {(c.sources[0], c.targets[0]) for c in dg.enumerate_candidates(g, ["new_node"]) if c.block is not None}
    assert ("a", "c") in pairs and ("b", "d") in pairs and ("a", "d") not in pairs  # three layers apart
