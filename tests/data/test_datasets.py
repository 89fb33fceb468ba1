"""Built-in data sets: shapes, determinism, standardisation, loaders, learnability."""

from __future__ import annotations

import pytest
import torch

from daggrow.data import list_datasets, load_dataset
from daggrow.data.mnist1d import make_mnist1d, templates

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
    assert not torch.equal(d.x_train, other.x_train) or name == "digits" and not torch.equal(d.y_train, other.y_train)
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
    assert len(train) == 11
    first = torch.cat([y for _, y in train])
    second = torch.cat([y for _, y in train])
    assert sorted(first.tolist()) == sorted(d.y_train.tolist()) and not torch.equal(first, second)
    assert torch.equal(torch.cat([y for _, y in val]), d.y_val)  # val/test keep their order
    x0, _ = next(iter(test))
    assert torch.equal(x0, d.x_test[:100])


def test_digits_is_learnable():
    from sklearn.linear_model import LogisticRegression

    d = load_dataset("digits")
    acc = LogisticRegression(max_iter=2000).fit(d.x_train.numpy(), d.y_train.numpy()).score(d.x_test.numpy(), d.y_test.numpy())
    assert acc > 0.9


def test_unknown_name():
    with pytest.raises(ValueError, match="built-in data sets: synthetic, digits, mnist1d"):
        load_dataset("cifar10")
