"""Checks of what a user hands the Grower and the runner: settings, devices, loaders, batches.

Each check raises a :class:`ConfigError` or :class:`TrainingError` that names the setting (or
the batch) and what would be accepted, at the earliest point: the constructor for settings,
the first pass for loaders, the batch itself for non-finite data.

>>> count("neurons_per_step", 0, minimum=1)
Traceback (most recent call last):
...
daggrow.errors.ConfigError: neurons_per_step must be an integer ≥ 1, got 0
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from ..errors import ConfigError, TrainingError

if TYPE_CHECKING:
    from ..graph import Graph


def count(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    """``value`` as a count ≥ ``minimum`` (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " or None" if optional else ""
        raise ConfigError(f"{name} must be an integer ≥ {minimum}{none}, got {value!r}")
    return value


def positive_float(name: str, value: Any) -> float:
    """``value`` as a finite float > 0 (a learning rate, an amplitude bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def one_of(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def device(spec: str | torch.device) -> torch.device:
    """A device that exists and is available here: ``cpu``, ``cuda``/``cuda:N`` or ``mps``."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {str(spec)!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no usable GPU is visible"
            raise ConfigError(f"device {str(spec)!r} is not available: this is {build}; use --device cpu "
                              "(or install a CUDA build of torch on a machine with an NVIDIA GPU)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(spec)!r} does not exist: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {str(spec)!r} is not available here (Apple GPUs only); use cpu")
        return dev
    raise ConfigError(f"device {str(spec)!r} is not supported for growth: use cpu, cuda, cuda:N or mps")


def require_reiterable(loader: Any, role: str) -> None:
    """Growth reads the data many times (statistics, line search, every epoch): refuse a one-shot
    iterator (a generator, ``iter(list)``) at the first pass instead of finding it empty later.
    The check does not iterate ``loader`` (that would start an epoch of a shuffling loader)."""
    if isinstance(loader, Iterator):
        raise TrainingError(
            f"the {role} is a one-shot iterator ({type(loader).__name__}): growth reads the data many times "
            "(statistics, line search, every epoch), and an iterator is empty after the first pass; pass a "
            "re-iterable loader such as a list of (x, y) batches, a torch DataLoader or daggrow.data.TensorLoader")
    if not isinstance(loader, Iterable):
        raise TrainingError(f"the {role} must be an iterable of (x, y) batches, got {type(loader).__name__}")


def non_finite_data(index: int, xs: Sequence[torch.Tensor], y: torch.Tensor, role: str) -> TrainingError | None:
    """The error for a batch with NaN or infinite inputs or targets; ``None`` when they are finite."""
    for i, x in enumerate(xs):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            which = "the inputs" if len(xs) == 1 else f"input {i}"
            return TrainingError(f"{role} batch {index}: {which} contain NaN or infinite values; the step was not "
                                 "taken (clean or impute the data first)")
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        return TrainingError(f"{role} batch {index}: the targets contain NaN or infinite values; the step was not "
                             "taken (clean the data first)")
    return None


def non_finite(index: int, xs: Sequence[torch.Tensor], y: torch.Tensor, role: str = "training") -> TrainingError:
    """The error for a batch whose loss is NaN or infinite, saying whether the data is at fault."""
    return non_finite_data(index, xs, y, role) or TrainingError(
        f"{role} batch {index}: the loss is NaN or infinite although the data is finite: training diverged; the "
        "step was not taken (lower the learning rate)")


def first_non_finite(loader: Iterable, graph: "Graph", role: str) -> TrainingError:
    """The error for a loader whose mean loss is NaN or infinite: names its first batch with
    non-finite inputs or targets (the scan runs only on this error path)."""
    from ..stats.collect import split_batch

    for index, batch in enumerate(loader):
        error = non_finite_data(index, *split_batch(batch, graph), role)
        if error is not None:
            return error
    return TrainingError(f"the {role} loss is NaN or infinite although the data is finite: the weights are not "
                         "finite, or the inputs are too large for the model's dtype")


def batch_statistics_nodes(graph: "Graph") -> list[str]:
    """Batch-normalised nodes with one value per channel and sample: in training mode they
    need at least 2 samples per batch (the variance of one value is undefined)."""
    return [n for n, spec in graph.nodes.items()
            if spec.norm is not None and spec.norm.kind == "batchnorm" and math.prod(spec.shape) == 1]
