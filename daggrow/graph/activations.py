"""The activations a node may apply after summing its in-edges.

Each entry gives the function the compiled module calls and the facts the solver needs to
linearise a new neuron at 0: ``value_at_0`` = σ(0), ``slope_right``/``slope_left`` = σ'(0±).

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

    def slopes(self, params: dict[str, float] | None = None) -> tuple[float, float]:
        """σ'(0+) and σ'(0−), taking parameters such as ``negative_slope`` into account."""
        if self.name == "leaky_relu":
            return 1.0, float((params or {}).get("negative_slope", 0.01))
        if self.name == "elu":
            return 1.0, float((params or {}).get("alpha", 1.0))
        return self.slope_right, self.slope_left

    @property
    def is_smooth_at_0(self) -> bool:
        """True when one neuron is linear at 0 (σ(0)=0 and σ'(0+)=σ'(0−)>0)."""
        return self.value_at_0 == 0.0 and self.slope_left == self.slope_right and self.slope_right > 0


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
        Activation("elu", F.elu, 0.0, 1.0, 1.0, ("alpha",)),
        Activation("leaky_relu", F.leaky_relu, 0.0, 1.0, 0.01, ("negative_slope",)),
        Activation("softplus", F.softplus, math.log(2.0), 0.5, 0.5),
    ]
}


def get_activation(name: str) -> Activation:
    """Look an activation up by name, with an error that lists the known names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise GraphError(f"unknown activation {name!r}; known activations: {known}") from None
