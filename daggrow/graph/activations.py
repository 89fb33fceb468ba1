"""The activations a node may apply after summing its in-edges.

Each entry gives the function the compiled module calls and the facts the solver needs to
linearise a new neuron at 0: ``value_at_0`` = σ(0), ``slope_right``/``slope_left`` = σ'(0±)
(:meth:`Activation.at_zero` with parameters: ``hardtanh(min_val, max_val)`` is linear at 0 when
min_val < 0 < max_val, a ReLU-like kink when one bound is 0, constant otherwise).

>>> ACTIVATIONS["relu"].slope_right, ACTIVATIONS["relu"].slope_left
(1.0, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import GraphError


@dataclass(frozen=True)
class Activation:
    name: str
    function: Callable[..., torch.Tensor]
    value_at_0: float
    slope_right: float
    slope_left: float
    params: tuple[str, ...] = field(default=())  # names of float keyword parameters
    defaults: tuple[float, ...] = field(default=())  # their defaults, in the same order

    def at_zero(self, params: dict[str, float] | None = None) -> tuple[float, float, float]:
        """``(σ(0), σ'(0+), σ'(0−))`` with the given parameters (defaults for the missing ones).

        >>> ACTIVATIONS["hardtanh"].at_zero({"min_val": 0.0, "max_val": 6.0})
        (0.0, 1.0, 0.0)
        """
        p = {**dict(zip(self.params, self.defaults)), **{k: float(v) for k, v in (params or {}).items()}}
        if self.name == "leaky_relu":
            return 0.0, 1.0, p["negative_slope"]
        if self.name == "elu":
            return 0.0, 1.0, p["alpha"]
        if self.name == "hardtanh":
            low, high = p["min_val"], p["max_val"]
            return (min(max(0.0, low), high), 1.0 if low <= 0.0 < high else 0.0, 1.0 if low < 0.0 <= high else 0.0)
        return self.value_at_0, self.slope_right, self.slope_left

    def slopes(self, params: dict[str, float] | None = None) -> tuple[float, float]:
        """σ'(0+) and σ'(0−), taking parameters such as ``negative_slope`` into account."""
        return self.at_zero(params)[1:]

    def value(self, params: dict[str, float] | None = None) -> float:
        """σ(0) with these parameters."""
        return self.at_zero(params)[0]

    @property
    def is_smooth_at_0(self) -> bool:
        """True when one neuron is linear at 0 (σ(0)=0 and σ'(0+)=σ'(0−)>0), default parameters."""
        value, right, left = self.at_zero()
        return value == 0.0 and left == right and right > 0


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772

ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("identity", _identity, 0.0, 1.0, 1.0),
        Activation("relu", torch.relu, 0.0, 1.0, 0.0),
        Activation("tanh", torch.tanh, 0.0, 1.0, 1.0),
        Activation("sigmoid", torch.sigmoid, 0.5, 0.25, 0.25),
        Activation("selu", torch.selu, 0.0, _SELU_SCALE, _SELU_SCALE * _SELU_ALPHA),
        Activation("gelu", F.gelu, 0.0, 0.5, 0.5),
        Activation("silu", F.silu, 0.0, 0.5, 0.5),
        Activation("elu", F.elu, 0.0, 1.0, 1.0, ("alpha",), (1.0,)),
        Activation("leaky_relu", F.leaky_relu, 0.0, 1.0, 0.01, ("negative_slope",), (0.01,)),
        Activation("softplus", F.softplus, math.log(2.0), 0.5, 0.5),
        Activation("relu6", F.relu6, 0.0, 1.0, 0.0),                     # min(max(x, 0), 6)
        Activation("hardtanh", F.hardtanh, 0.0, 1.0, 1.0, ("min_val", "max_val"), (-1.0, 1.0)),
        Activation("hardswish", F.hardswish, 0.0, 0.5, 0.5),              # x·relu6(x + 3)/6
        Activation("hardsigmoid", F.hardsigmoid, 0.5, 1 / 6, 1 / 6),      # relu6(x + 3)/6
        Activation("mish", F.mish, 0.0, 0.6, 0.6),                        # x·tanh(softplus(x)); tanh(log 2) = 0.6
    ]
}


def get_activation(name: str) -> Activation:
    """Look an activation up by name, with an error that lists the known names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise GraphError(f"unknown activation {name!r}; known activations: {known}") from None
