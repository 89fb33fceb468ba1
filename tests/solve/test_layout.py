"""activation_layout: the real neurons of a solved direction add γ·ω αᵀb to first order.

With f = √(γ/c): Σ_s s·f·ω·σ(s·f·αᵀb) = γ·ω αᵀb + o(γ), relative error → 0 as γ → 0, exactly 0
for relu pairs (relu(t) − relu(−t) = t)."""

from __future__ import annotations

import pytest
import torch

from daggrow.errors import GraphError
from daggrow.graph.activations import ACTIVATIONS
from daggrow.solve import NeuronLayout, SolverInputError, activation_layout, tiny_neurons

from .reference import F64, features, moments, ones, targets

# activations (with parameters) and whether one neuron (True) or a pair (False) is expected
CASES = [(name, {}, ACTIVATIONS[name].is_smooth_at_0) for name in sorted(ACTIVATIONS)] + [
    ("leaky_relu", {"negative_slope": 0.2}, False),
    ("elu", {"alpha": 0.5}, False),
    ("elu", {"alpha": 1.0}, True),
]
# σ(t) − σ(−t) is exactly linear for these (up to round-off), and σ itself is linear near 0 for
# the piecewise-linear ones (relu6, hardsigmoid for |t| < 3, hardtanh for |t| < 1)
EXACT_PAIRS = {"relu", "leaky_relu", "softplus", "relu6", "hardsigmoid", "hardtanh"}


def solved_direction():
    gen = torch.Generator().manual_seed(0)
    H = features(100, 4, gen)
    B = torch.cat([H, ones(100)])
    S, M, _ = moments(B, targets(H, 3, gen))
    sol = tiny_neurons(S, M, M, 2)
    return B, sol.fan_in, sol.fan_out


def relative_error(name, params, layout, B, A, O, gamma):
    act = ACTIVATIONS[name]
    fan_in, fan_out = layout.neurons(A, O, gamma)
    real = fan_out @ act.function(fan_in.T @ B, **params)         # what the compiled neurons add
    linear = gamma * O @ (A.T @ B)
    return float((real - linear).norm() / linear.norm())


@pytest.mark.parametrize("name, params, single", CASES)
def test_real_neurons_match_the_linear_prediction(name, params, single):
    torch.manual_seed(0)
    layout = activation_layout(name, params)
    assert layout.signs == ((1.0,) if single else (1.0, -1.0))
    right, left = ACTIVATIONS[name].slopes(params)
    assert layout.scale == pytest.approx(right if single else right + left)
    B, A, O = solved_direction()
    fan_in, fan_out = layout.neurons(A, O, 0.01)
    assert fan_in.shape == (5, 2 * len(layout.signs)) and fan_out.shape == (3, 2 * len(layout.signs))
    errors = [relative_error(name, params, layout, B, A, O, g) for g in (1e-2, 1e-4, 1e-6)]
    if name == "identity" or name in EXACT_PAIRS:
        assert max(errors) < 1e-10
    else:
        # the remainder is O(√γ) (O(γ) for odd σ or pairs): it shrinks at least ~10× per 100× in γ
        assert errors[0] < 0.5 and errors[2] < 1e-2
        assert errors[1] < errors[0] / 8 and errors[2] < errors[1] / 8


def test_amplitude_zero_gives_zero_neurons_and_bad_inputs_raise():
    B, A, O = solved_direction()
    fan_in, fan_out = activation_layout("relu").neurons(A, O, 0.0)
    assert torch.count_nonzero(fan_in) + torch.count_nonzero(fan_out) == 0
    with pytest.raises(SolverInputError, match="amplitude"):
        NeuronLayout((1.0,), 1.0).neurons(A, O, -1.0)
    with pytest.raises(SolverInputError, match="≤ 0"):
        activation_layout("leaky_relu", {"negative_slope": -1.0})
    with pytest.raises(GraphError, match="unknown activation"):
        activation_layout("swish_typo")


def test_pairs_cancel_the_value_at_zero():
    """sigmoid(0) = 0.5 and softplus(0) = log 2: a pair adds nothing where αᵀb = 0."""
    for name in ("sigmoid", "softplus", "selu"):
        layout = activation_layout(name)
        fan_in, fan_out = layout.neurons(torch.ones(3, 1, dtype=F64), torch.ones(2, 1, dtype=F64), 0.5)
        b = torch.tensor([[1.0], [-1.0], [0.0]], dtype=F64)       # αᵀb = 0
        out = fan_out @ ACTIVATIONS[name].function(fan_in.T @ b)
        assert float(out.abs().max()) < 1e-15
