"""Built-in data sets, all generated or bundled locally: nothing is ever downloaded.

>>> data = load_dataset("digits", seed=0)
>>> data.x_train.shape[1], data.num_classes
(64, 10)
>>> train, val, test = data.loaders(batch_size=128)
>>> load_dataset("synthetic", n_train=500, n_test=100).x_test.shape
torch.Size([100, 50])

Features are standardised with the training split's per-feature mean and standard deviation
(x' = (x − μ_train) / σ_train, σ floored at 1e-6), so validation and test see no statistics of
their own. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterator

import torch

from ..errors import DaggrowError


class DatasetError(DaggrowError, ValueError):
    """A data set request that cannot be met (unknown name, impossible split sizes)."""


class UnknownDatasetError(DatasetError):
    """A data set name that daggrow does not have."""


class TensorLoader:
    """Re-iterable ``(x, y)`` batches over tensors; each pass is one epoch.

    With ``shuffle``, epoch e uses a permutation from a generator seeded with ``seed + e``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        if batch_size < 1:
            raise DaggrowError(f"batch_size must be ≥ 1, got {batch_size}")
        if x.shape[0] != y.shape[0]:
            raise DaggrowError(f"TensorLoader got {x.shape[0]} inputs but {y.shape[0]} labels; pass one label per row of x")
        if x.device != y.device:
            raise DaggrowError(f"TensorLoader got inputs on {x.device} but labels on {y.device}; move both to one device")
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Start the next epoch now (its order is fixed at this call, not at the first batch)."""
        order = None
        if self.shuffle:
            order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.seed + self.epoch))
            order = order.to(self.x.device)
        self.epoch += 1
        return self._batches(order)

    def state_dict(self) -> dict[str, int]:
        """Where the loader is: the number of epochs started (a checkpoint keeps it, so that a
        resumed run shuffles as the uninterrupted one would)."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])

    def _batches(self, order: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.y), self.batch_size):
            if order is None:
                yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
            else:
                idx = order[start:start + self.batch_size]
                yield self.x[idx], self.y[idx]


@dataclass
class Dataset:
    """Standardised float32 features and int64 labels, split into train/val/test."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    spatial_shape: tuple[int, ...] = ()  # the features' layout: (40,) for MNIST-1D, (8, 8) for digits

    @property
    def num_features(self) -> int:
        return int(self.x_train[0].numel())

    def as_signals(self) -> "Dataset":
        """A copy whose inputs are 1-channel signals (n, 1, *spatial_shape), the input of a CNN."""
        if not self.spatial_shape:
            raise DatasetError(f"{self.name} has no spatial layout (its features are unordered); "
                               "use an MLP on it, or a data set such as mnist1d or digits")
        return replace(self, **{k: getattr(self, k).reshape(-1, 1, *self.spatial_shape)
                                for k in ("x_train", "x_val", "x_test")})

    def loaders(self, batch_size: int, *, shuffle: bool = True,
                seed: int = 0) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
        """(train, val, test) loaders. With ``shuffle`` the train loader draws a new permutation each
        epoch (seeded ``seed + epoch``); val and test always keep their order."""
        return (TensorLoader(self.x_train, self.y_train, batch_size, shuffle=shuffle, seed=seed),
                TensorLoader(self.x_val, self.y_val, batch_size),
                TensorLoader(self.x_test, self.y_test, batch_size))

    def to(self, device: torch.device | str) -> "Dataset":
        """A copy with every tensor on ``device`` (the tensors themselves, when already there)."""
        return replace(self, **{f.name: getattr(self, f.name).to(device)
                                for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)})

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, features={self.num_features}, classes={self.num_classes}, "
                f"train={len(self.y_train)}, val={len(self.y_val)}, test={len(self.y_test)})")


def _standardise(name: str, splits: tuple[torch.Tensor, ...], labels: tuple[torch.Tensor, ...], num_classes: int,
                 spatial_shape: tuple[int, ...] = ()) -> Dataset:
    x_train = splits[0]
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xs = [((x - mean) / std).float().contiguous() for x in splits]
    ys = [y.long().contiguous() for y in labels]
    return Dataset(name, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], num_classes, spatial_shape)


def synthetic(seed: int = 0, n_train: int = 10_000, n_val: int = 2_000, n_test: int = 2_000) -> Dataset:
    """The talk's task: x ~ N(0, I₅₀), y = argmax_{k=1..10} sin(k·Σ_j x_j)."""
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    x = torch.randn(n, 50, generator=gen, dtype=torch.float64)
    s = x.sum(1, keepdim=True)
    y = torch.sin(torch.arange(1, 11, dtype=torch.float64) * s).argmax(1)
    cut = [0, n_train, n_train + n_val, n]
    return _standardise("synthetic", tuple(x[a:b] for a, b in zip(cut, cut[1:])),
                        tuple(y[a:b] for a, b in zip(cut, cut[1:])), 10)


def digits(seed: int = 0, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """sklearn's bundled 8×8 digits (1797 samples, 64 features), stratified 60/20/20 split
    (1078/360/359). ``n_train``/``n_test`` keep only the first rows of the (shuffled) split, so
    they can shrink it but not grow it."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float64)
    y = torch.tensor(bunch.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[], [], []]
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        a, b = round(0.6 * len(idx)), round(0.8 * len(idx))
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part.append(chunk)
    order = [torch.cat(p)[torch.randperm(sum(len(q) for q in p), generator=gen)] for p in parts]
    for i, key, wanted in ((0, "n_train", n_train), (2, "n_test", n_test)):
        if wanted is not None and wanted > len(order[i]):
            raise DatasetError(f"digits has {len(order[i])} {key[2:]} samples (its 60/20/20 split of 1797), "
                               f"{key}={wanted} asked for more; pass {key} ≤ {len(order[i])} or leave it None")
        order[i] = order[i][:wanted]
    return _standardise("digits", tuple(x[o] for o in order), tuple(y[o] for o in order), 10, (8, 8))


def mnist1d(seed: int = 0, n_train: int = 3500, n_test: int = 1000, n_val: int = 500) -> Dataset:
    """MNIST-1D generated locally (see :mod:`daggrow.data.mnist1d`). Default 3500 train, 500 val,
    1000 test: the paper's 4000/1000 split with validation taken from its training part.
    Other sizes generate ``n_train + n_val + n_test`` samples (classes balanced to within one)."""
    from .mnist1d import make_mnist1d

    n = n_train + n_val + n_test
    x, y = make_mnist1d(num_samples=n, seed=seed)
    cut = [0, n_train, n_train + n_val, n]
    return _standardise("mnist1d", tuple(x[a:b] for a, b in zip(cut, cut[1:])),
                        tuple(y[a:b] for a, b in zip(cut, cut[1:])), 10, (40,))


DATASETS: dict[str, Callable[..., Dataset]] = {"synthetic": synthetic, "digits": digits, "mnist1d": mnist1d}


def list_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts, e.g. ``["synthetic", "digits", "mnist1d"]``."""
    return list(DATASETS)


def _check_size(key: str, value: int | None, smallest: int) -> int | None:
    """``value`` as an int, or None; refuses non-integers and counts below ``smallest``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < smallest:
        why = " (the train split's standard deviation needs two samples)" if key == "n_train" else ""
        raise DatasetError(f"{key} must be an int ≥ {smallest}{why}, got {value!r}; pass a larger count or None "
                           "for the data set's default")
    return int(value)


def load_dataset(name: str, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                 device: torch.device | str | None = None) -> Dataset:
    """One of :func:`list_datasets`, deterministic given ``seed``.

    ``n_train``/``n_test`` replace the default split sizes (None keeps them; digits can only
    shrink, being a fixed set); the validation split keeps its default size. ``device`` moves
    every tensor there (default: CPU).
    """
    try:
        make = DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; built-in data sets: {', '.join(DATASETS)}") from None
    sizes = {key: value for key, value in (("n_train", _check_size("n_train", n_train, 2)),
                                           ("n_test", _check_size("n_test", n_test, 1))) if value is not None}
    data = make(seed=seed, **sizes)
    return data if device is None else data.to(device)
