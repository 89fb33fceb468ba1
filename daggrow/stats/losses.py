"""Per-sample losses (docs/math.md §1): the statistics, the line search and training all use these.

``mse``: ℓ_i = ‖f(x_i) − y_i‖² summed over output features (integer labels become one-hot);
``cross_entropy``: the usual per-sample cross-entropy; or any callable ``(output, y) -> (n,)``.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from ..errors import StatisticsError

LossLike = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
LOSSES = ("mse", "cross_entropy")


def per_sample_loss(loss: LossLike, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The vector (ℓ_1, …, ℓ_n) of per-sample losses."""
    if callable(loss):
        values = loss(output, target)
    elif loss == "mse":
        if not target.is_floating_point():
            target = F.one_hot(target.long(), output.shape[-1]).to(output.dtype)
        if target.numel() != output.numel():
            raise StatisticsError(f"mse: targets of shape {tuple(target.shape)} do not match the output's shape "
                                  f"{tuple(output.shape)} (integer labels are one-hot encoded)")
        values = (output - target.reshape(output.shape)).pow(2).reshape(output.shape[0], -1).sum(1)
    elif loss == "cross_entropy":
        try:
            values = _cross_entropy(output, target)
        except (IndexError, RuntimeError, ValueError) as e:
            raise StatisticsError(f"cross_entropy: output {tuple(output.shape)}, targets {tuple(target.shape)} "
                                  f"{target.dtype}: {e} (targets are class indices in [0, {output.shape[1]}) "
                                  "or class probabilities shaped like the output)") from e
    else:
        raise StatisticsError(f"unknown loss {loss!r}: use one of {LOSSES} or a callable returning per-sample losses")
    if values.ndim != 1 or values.shape[0] != output.shape[0]:
        raise StatisticsError(f"the loss must return one value per sample, shape ({output.shape[0]},); "
                              f"got shape {tuple(values.shape)}")
    return values


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ℓ_i = log Σ_c exp(o_ic) − o_{i,y_i}. For class indices of a (n, C) output on the CPU this is
    computed as a logsumexp and a gather: the same numbers to round-off, several times faster
    than ``F.cross_entropy``, whose log-softmax over a narrow class dimension is slow on CPUs (it
    is evaluated for every amplitude of the line search). Anything else (class probabilities,
    extra dimensions, labels < 0 that ``F.cross_entropy`` ignores, a GPU) goes to
    ``F.cross_entropy``."""
    if (output.ndim == 2 and target.ndim == 1 and target.dtype == torch.long and output.device.type == "cpu"
            and target.shape[0] == output.shape[0] and bool((target >= 0).all())):
        return torch.logsumexp(output, 1) - output.gather(1, target[:, None])[:, 0]
    return F.cross_entropy(output, target, reduction="none")


def loss_name(loss: LossLike) -> str:
    return loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)
