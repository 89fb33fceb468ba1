"""How a solved direction (α, ω) becomes real neurons (MATH §5, "ReLU made exact").

The solver's neurons are linear: at amplitude γ they should add γ·ω αᵀb to the targets. A
real neuron adds √γ ω σ(√γ αᵀb) ≈ γ σ'(0) ω αᵀb when σ(0) = 0 and σ is differentiable at 0
(identity, tanh, gelu, silu, elu with α=1): one neuron, scale c = σ'(0). Otherwise (relu,
leaky_relu, selu, sigmoid, softplus) each direction becomes a pair (α, ω), (−α, −ω):

    ω σ(t) − ω σ(−t) = (σ'(0+) + σ'(0−)) ω t + o(t)       (exact for relu: relu(t) − relu(−t) = t)

which also cancels σ(0); scale c = σ'(0+) + σ'(0−). Each neuron's fan-in and fan-out are
multiplied by √(γ/c), so the first-order change is γ·ω αᵀb in every case.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..graph.activations import get_activation


@dataclass(frozen=True)
class NeuronLayout:
    signs: tuple[float, ...]   # (1.0,) for one neuron, (1.0, -1.0) for a pair
    scale: float               # c: the first-order slope of the neuron (or pair)


def activation_layout(activation: str, params: dict[str, float] | None = None) -> NeuronLayout:
    act = get_activation(activation)
    right, left = act.slopes(params)
    if act.value_at_0 == 0.0 and right == left and right > 0:
        return NeuronLayout((1.0,), right)
    return NeuronLayout((1.0, -1.0), right + left)
