"""How a solved direction (α, ω) becomes real neurons (docs/math.md §8, "ReLU made exact").

The solver's neurons are linear: at amplitude γ they should add γ·ω αᵀb to the targets. Let
t = αᵀb and f = √(γ/c).

* σ(0) = 0 and σ'(0+) = σ'(0−) = s > 0 (identity, tanh, gelu, silu, mish, hardswish, elu with
  α = 1, hardtanh with min_val < 0 < max_val): one neuron
  with fan-in f·α and fan-out f·ω, scale c = s, since

      f ω σ(f t) = f ω (s f t + o(f t)) = γ ω t + o(γ).

* Otherwise (relu, relu6, leaky_relu, selu, sigmoid, hardsigmoid, softplus, elu with α ≠ 1,
  hardtanh with a bound at 0): a pair of neurons with
  signs (+1, −1), fan-in ±f·α and fan-out ±f·ω, scale c = σ'(0+) + σ'(0−), since

      f ω σ(f t) − f ω σ(−f t) = f ω ((σ'(0+) + σ'(0−)) f t + o(f t)) = γ ω t + o(γ),

  and the pair also cancels σ(0). For relu it is exact: relu(t) − relu(−t) = t (and for
  leaky_relu and softplus too: softplus(t) − softplus(−t) = t; relu6 for |t| ≤ 6).
  A hardtanh whose bounds exclude 0 is flat there (σ'(0±) = 0): refused, no neuron has a
  first-order effect.

>>> activation_layout("relu")
NeuronLayout(signs=(1.0, -1.0), scale=1.0)
>>> activation_layout("tanh")
NeuronLayout(signs=(1.0,), scale=1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..graph.activations import get_activation
from .linalg import SolverInputError, as_float64_matrix


@dataclass(frozen=True)
class NeuronLayout:
    signs: tuple[float, ...]   # (1.0,) for one neuron per direction, (1.0, -1.0) for a pair
    scale: float               # c: the first-order slope of the neuron (or of the pair)

    def neurons(self, fan_in: torch.Tensor, fan_out: torch.Tensor, amplitude: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The real neurons of K solved directions at amplitude γ: ``(fan_in', fan_out')``.

        ``fan_in`` (D × K) and ``fan_out`` (d × K) are the solver's columns α_k, ω_k. The result
        has K·len(signs) columns, one block of K per sign: fan_in' = [s·√(γ/c)·A]_s and
        fan_out' = [s·√(γ/c)·Ω]_s, so that Σ_j fan_out'_j σ(fan_in'_jᵀ b) = γ Ω Aᵀ b + o(γ).
        """
        if amplitude < 0:
            raise SolverInputError(f"amplitude must be ≥ 0, got {amplitude}")
        fan_in = as_float64_matrix("fan_in", fan_in)
        fan_out = as_float64_matrix("fan_out", fan_out, cols=fan_in.shape[1])
        factor = (amplitude / self.scale) ** 0.5
        return (torch.cat([s * factor * fan_in for s in self.signs], 1),
                torch.cat([s * factor * fan_out for s in self.signs], 1))


def activation_layout(activation: str, params: dict[str, float] | None = None) -> NeuronLayout:
    """One neuron per direction when σ is linear at 0 through the origin, else a (+, −) pair."""
    act = get_activation(activation)
    value, right, left = act.at_zero(params)
    if value == 0.0 and right == left and right > 0:
        return NeuronLayout((1.0,), float(right))
    scale = float(right + left)
    if not scale > 0:
        raise SolverInputError(f"activation {activation!r} with parameters {params or {}} has "
                               f"σ'(0+) + σ'(0−) = {scale:g} ≤ 0: new neurons would have no first-order "
                               "effect; choose another activation or parameter")
    return NeuronLayout((1.0, -1.0), scale)
