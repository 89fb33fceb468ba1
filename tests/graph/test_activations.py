"""The activation table: σ(0) and σ'(0±) against finite differences of the functions themselves,
and the first-order gain of new neurons in a node with each activation against finite
differences of the real loss."""

from __future__ import annotations

import warnings

import pytest
import torch

import daggrow as dg
from daggrow.graph.activations import ACTIVATIONS
from daggrow.solve import SolverInputError, activation_layout
from daggrow.stats import per_sample_loss

CASES = [(name, {}) for name in sorted(ACTIVATIONS)] + [
    ("hardtanh", {"min_val": 0.0, "max_val": 6.0}),     # relu6 written as a hardtanh: a kink at 0
    ("hardtanh", {"min_val": -2.0, "max_val": 0.5}),
    ("hardtanh", {"min_val": -3.0, "max_val": 0.0}),     # flat on the right: σ'(0+) = 0, σ'(0−) = 1
    ("leaky_relu", {"negative_slope": 0.2}),
    ("elu", {"alpha": 0.5}),
]


@pytest.mark.parametrize("name, params", CASES)
def test_value_and_one_sided_slopes_at_zero(name, params):
    act = ACTIVATIONS[name]
    f = lambda t: float(act.function(torch.tensor([t], dtype=torch.float64), **params))  # noqa: E731
    h = 1e-7
    value, right, left = act.at_zero(params)
    assert f(0.0) == pytest.approx(value, abs=1e-12)
    assert (f(h) - f(0.0)) / h == pytest.approx(right, abs=1e-6)
    assert (f(0.0) - f(-h)) / h == pytest.approx(left, abs=1e-6)


def test_a_flat_hardtanh_has_no_first_order_neurons():
    assert ACTIVATIONS["hardtanh"].at_zero({"min_val": 0.5, "max_val": 2.0}) == (0.5, 0.0, 0.0)
    with pytest.raises(SolverInputError, match="no first-order effect"):
        activation_layout("hardtanh", {"min_val": 0.5, "max_val": 2.0})


def chain(name: str, params: dict) -> dg.Graph:
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 5)
    g.add_node("h", 3, name, activation_params=params)
    g.add_node("y", 2)
    g.add_edge("x", "h")
    g.add_edge("h", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.double()
    return g


def loss(g: dg.Graph, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(per_sample_loss("mse", g.compile()(x), y).mean())


@pytest.mark.parametrize("name, params", [c for c in CASES if c[0] != "identity"])
def test_first_order_gain_of_new_neurons_matches_finite_differences(name, params):
    g = chain(name, params)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    y = torch.sin(2 * x[:, :2]) + 0.3 * x[:, 2:4] ** 2
    stats = dg.collect_statistics(g, [(x, y)], "mse", kinds=["expand_node"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (proposal,) = [p for p in dg.propose(g, stats, max_neurons=2, kinds=["expand_node"]) if p.where == "expand h"]
    assert proposal.first_order_gain > 0
    layout = activation_layout(name, params)
    assert proposal.num_neurons == proposal.num_directions * len(layout.signs)
    base, gamma = loss(g, x, y), 1e-6
    measured = (base - loss(dg.apply(g, proposal, gamma), x, y)) / gamma
    assert measured == pytest.approx(proposal.first_order_gain, rel=0.02)
    assert loss(dg.apply(g, proposal, 0.0), x, y) == base
