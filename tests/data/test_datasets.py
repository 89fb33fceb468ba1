"""Built-in data sets: shapes, determinism, standardisation, loaders, learnability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daggrow.data import list_datasets, load_dataset
from daggrow.data.datasets import TensorLoader
from daggrow.data.mnist1d import _gaussian_smooth, make_mnist1d, templates
from daggrow.errors import DaggrowError

SHAPES = {"synthetic": (50, 10, 10_000), "digits": (64, 10, 1078), "mnist1d": (40, 10, 3500)}


@pytest.mark.parametrize("name", list_datasets())
def test_shapes_dtypes_and_determinism(name):
    d = load_dataset(name, seed=3)
    features, classes, n_train = SHAPES[name]
    assert d.num_features == features and d.num_classes == classes and len(d.y_train) == n_train
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[0] == y.shape[0] > 0
        assert 0 <= int(y.min()) and int(y.max()) < classes
    again = load_dataset(name, seed=3)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)
    other = load_dataset(name, seed=4)
    assert not torch.equal(d.x_train, other.x_train)
    # standardised with train statistics
    torch.testing.assert_close(d.x_train.mean(0), torch.zeros(features), atol=1e-5, rtol=0)
    std = d.x_train.std(0)
    assert ((std - 1).abs() < 1e-3).logical_or(std < 1e-6).all()


def test_synthetic_labels_follow_the_talks_formula():
    d = load_dataset("synthetic")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(14_000, 50, generator=gen, dtype=torch.float64)
    y = torch.sin(torch.arange(1, 11, dtype=torch.float64) * x.sum(1, keepdim=True)).argmax(1)
    assert torch.equal(d.y_train, y[:10_000])


def test_digits_split_is_stratified():
    d = load_dataset("digits")
    counts = torch.bincount(d.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38


def test_mnist1d_generator():
    t = templates()
    assert t.shape == (10, 12) and torch.allclose(t[:, 0], torch.zeros(10, dtype=t.dtype))
    x, y = make_mnist1d(1000, seed=1)
    assert x.shape == (1000, 40) and torch.bincount(y).tolist() == [100] * 10
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std()) - 1) < 1e-6


def test_loaders_cover_each_sample_once_and_reshuffle():
    d = load_dataset("digits")
    train, val, test = d.loaders(100, seed=0)
    assert len(train) == 11 and len(val) == len(test) == 4
    # tag each training row by its index: one epoch must visit every index exactly once
    tagged = TensorLoader(d.x_train, torch.arange(len(d.y_train)), 100, shuffle=True, seed=0)
    epochs = [[(x, i) for x, i in tagged] for _ in range(2)]
    for batches in epochs:
        assert len(batches) == len(tagged) and [len(i) for _, i in batches] == [100] * 10 + [78]
        order = torch.cat([i for _, i in batches])
        assert torch.equal(order.sort().values, torch.arange(len(d.y_train)))
        assert all(torch.equal(x, d.x_train[i]) for x, i in batches)  # inputs travel with their labels
    first, second = (torch.cat([i for _, i in b]) for b in epochs)
    assert not torch.equal(first, second)  # a new permutation each epoch
    # same seed → same sequence of epochs; another seed → another one
    again = TensorLoader(d.x_train, torch.arange(len(d.y_train)), 100, shuffle=True, seed=0)
    assert torch.equal(torch.cat([i for _, i in again]), first)
    other = TensorLoader(d.x_train, torch.arange(len(d.y_train)), 100, shuffle=True, seed=1)
    assert not torch.equal(torch.cat([i for _, i in other]), first)
    # the train loader of Dataset.loaders shuffles labels the same way
    assert torch.equal(torch.cat([y for _, y in train]), d.y_train[first])
    # val/test keep their order, every epoch
    for loader, x_ref, y_ref in ((val, d.x_val, d.y_val), (test, d.x_test, d.y_test)):
        for _ in range(2):
            assert torch.equal(torch.cat([x for x, _ in loader]), x_ref)
            assert torch.equal(torch.cat([y for _, y in loader]), y_ref)


def test_loader_refuses_bad_arguments():
    with pytest.raises(DaggrowError, match="batch_size"):
        TensorLoader(torch.zeros(3, 2), torch.zeros(3), 0)
    with pytest.raises(DaggrowError, match="3 inputs but 2 labels"):
        TensorLoader(torch.zeros(3, 2), torch.zeros(2), 1)


def test_mnist1d_smoothing_matches_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    x = torch.randn(6, 72, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.from_numpy(np.stack([gaussian_filter(row, 2.0) for row in x.numpy()]))
    torch.testing.assert_close(_gaussian_smooth(x), expected, atol=1e-12, rtol=0)


def test_mnist1d_statistics_match_the_reference_generator():
    """Numbers measured on mnist1d's own make_dataset (5000 samples; its seeds differ by ≤ 0.001)."""
    x, y = make_mnist1d(5000, seed=0)
    lag1 = torch.stack([torch.corrcoef(x[:, i:i + 2].T)[0, 1] for i in range(39)]).mean()
    assert abs(float(lag1) - 0.823) < 0.01
    assert abs(float(x.diff(dim=1).abs().mean()) - 0.430) < 0.01


def test_digits_is_learnable():
    from sklearn.linear_model import LogisticRegression

    d = load_dataset("digits")
    acc = LogisticRegression(max_iter=2000).fit(d.x_train.numpy(), d.y_train.numpy()).score(d.x_test.numpy(), d.y_test.numpy())
    assert acc > 0.9


def test_unknown_name():
    with pytest.raises(ValueError, match="built-in data sets: synthetic, digits, mnist1d"):
        load_dataset("cifar10")
