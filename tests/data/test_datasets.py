"""Built-in data sets: shapes, determinism, standardisation, class balance, sizes, devices,
loaders, learnability."""

from __future__ import annotations

import math

import pytest
import torch

from daggrow.data import Dataset, DatasetError, TensorLoader, UnknownDatasetError, list_datasets, load_dataset
from daggrow.errors import DaggrowError

SHAPES = {"synthetic": (50, 10, 10_000), "digits": (64, 10, 1078), "mnist1d": (40, 10, 3500)}
SPLITS = ("train", "val", "test")


def splits(d: Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(getattr(d, f"x_{s}"), getattr(d, f"y_{s}")) for s in SPLITS]


def synthetic_stream(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The talk's task written out again: x ~ N(0, I₅₀), y = argmax_k sin(k·Σx), k = 1..10."""
    x = torch.randn(n, 50, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, torch.sin(torch.arange(1, 11, dtype=torch.float64) * x.sum(1, keepdim=True)).argmax(1)


@pytest.mark.parametrize("name", list_datasets())
def test_shapes_dtypes_and_determinism(name):
    d = load_dataset(name, seed=3)
    features, classes, n_train = SHAPES[name]
    assert d.name == name and d.num_features == features and d.num_classes == classes and len(d.y_train) == n_train
    for x, y in splits(d):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[0] == y.shape[0] > 0
        assert x.shape[1] == features and x.is_contiguous() and torch.isfinite(x).all()
        assert 0 <= int(y.min()) and int(y.max()) < classes
    again = load_dataset(name, seed=3)
    assert all(torch.equal(a, b) for pair in zip(splits(d), splits(again)) for a, b in zip(*pair))
    other = load_dataset(name, seed=4)
    assert not torch.equal(d.x_train, other.x_train)
    # standardised with train statistics
    torch.testing.assert_close(d.x_train.mean(0), torch.zeros(features), atol=1e-5, rtol=0)
    std = d.x_train.std(0)
    assert ((std - 1).abs() < 1e-3).logical_or(std < 1e-6).all()


def test_synthetic_labels_follow_the_talks_formula_and_val_test_use_train_statistics():
    d = load_dataset("synthetic")
    x, y = synthetic_stream(0, 14_000)
    assert torch.equal(d.y_train, y[:10_000]) and torch.equal(d.y_val, y[10_000:12_000])
    assert torch.equal(d.y_test, y[12_000:])
    mean, std = x[:10_000].mean(0), x[:10_000].std(0)
    for got, raw in ((d.x_train, x[:10_000]), (d.x_val, x[10_000:12_000]), (d.x_test, x[12_000:])):
        torch.testing.assert_close(got, ((raw - mean) / std).float(), atol=1e-6, rtol=0)


def test_synthetic_class_frequencies_match_the_formula():
    """Σx ~ N(0, 50), so P(y = k) = ∫ N(s; 0, 50) 1[argmax_j sin(j s) = k] ds, summed on a fine grid."""
    sigma = math.sqrt(50)
    s = torch.linspace(-8 * sigma, 8 * sigma, 1_000_001, dtype=torch.float64)
    density = torch.exp(-0.5 * (s / sigma) ** 2)
    labels = torch.sin(torch.arange(1, 11, dtype=torch.float64) * s[:, None]).argmax(1)
    p = torch.bincount(labels, weights=density, minlength=10) / density.sum()
    assert float(p.min()) > 0.05  # every class is common enough to learn
    for seed in (0, 1):
        y = load_dataset("synthetic", seed=seed).y_train
        n = len(y)
        counts = torch.bincount(y, minlength=10).double()
        # each count within 4.5 binomial standard deviations of its expectation
        assert ((counts - n * p).abs() <= 4.5 * (n * p * (1 - p)).sqrt()).all(), (counts, n * p)


def test_digits_split_is_stratified():
    d = load_dataset("digits")
    everything = torch.bincount(torch.cat([y for _, y in splits(d)]), minlength=10)
    for _, y in splits(d):
        share = torch.bincount(y, minlength=10) / everything  # each class split ≈ 60/20/20
        assert float(share.max() - share.min()) < 0.02
    assert int(everything.sum()) == 1797


def test_mnist1d_classes_are_balanced():
    d = load_dataset("mnist1d")
    assert torch.bincount(torch.cat([y for _, y in splits(d)])).tolist() == [500] * 10
    counts = torch.bincount(d.y_test, minlength=10)
    assert int(counts.min()) >= 70 and int(counts.max()) <= 130  # 100 expected, shuffled split


def test_sizes():
    d = load_dataset("synthetic", seed=2, n_train=300, n_test=40)
    assert [len(y) for _, y in splits(d)] == [300, 2000, 40]
    _, y = synthetic_stream(2, 2340)
    assert torch.equal(d.y_train, y[:300]) and torch.equal(d.y_test, y[2300:])

    d = load_dataset("mnist1d", n_train=1003, n_test=7)
    assert [len(y) for _, y in splits(d)] == [1003, 500, 7] and d.num_features == 40
    assert torch.bincount(torch.cat([y for _, y in splits(d)])).tolist() == [151] * 10

    full, small = load_dataset("digits", seed=1), load_dataset("digits", seed=1, n_train=100, n_test=50)
    assert [len(y) for _, y in splits(small)] == [100, 360, 50]
    assert torch.equal(small.y_train, full.y_train[:100]) and torch.equal(small.y_test, full.y_test[:50])
    torch.testing.assert_close(small.x_train.mean(0), torch.zeros(64), atol=1e-5, rtol=0)  # its own statistics

    same = load_dataset("synthetic", n_train=10_000, n_test=2_000)
    assert torch.equal(same.x_test, load_dataset("synthetic").x_test)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_train": 1}, "n_train must be an int ≥ 2"),
    ({"n_train": 0}, "n_train must be an int ≥ 2"),
    ({"n_train": 2.0}, "got 2.0"),
    ({"n_train": True}, "got True"),
    ({"n_test": 0}, "n_test must be an int ≥ 1"),
])
def test_sizes_refused(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset("synthetic", **kwargs)


def test_digits_cannot_grow():
    with pytest.raises(DatasetError, match="digits has 1078 train samples.*pass n_train ≤ 1078"):
        load_dataset("digits", n_train=1500)
    with pytest.raises(DatasetError, match="pass n_test ≤ 359"):
        load_dataset("digits", n_test=360)


def test_device_moves_every_tensor():
    d = load_dataset("digits", device="meta")  # a device every machine has
    assert all(t.device.type == "meta" for pair in splits(d) for t in pair) and d.num_features == 64
    train, val, _ = d.loaders(500)
    assert [x.shape[0] for x, _ in train] == [500, 500, 78]
    assert all(x.device.type == y.device.type == "meta" for x, y in val)
    cpu = load_dataset("digits", device="cpu")
    assert cpu.to("cpu").x_train is cpu.x_train  # already there: no copy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_cuda_matches_cpu():
    cpu, gpu = load_dataset("synthetic", n_train=1000), load_dataset("synthetic", n_train=1000, device="cuda")
    assert gpu.x_train.is_cuda and torch.equal(gpu.x_train.cpu(), cpu.x_train)
    batches = [(x.cpu(), y.cpu()) for x, y in gpu.loaders(128, seed=5)[0]]
    assert all(torch.equal(a, b) for pair in zip(batches, cpu.loaders(128, seed=5)[0]) for a, b in zip(*pair))


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


def test_loaders_without_shuffle_keep_the_order():
    d = load_dataset("digits")
    train, _, _ = d.loaders(256, shuffle=False)
    for _ in range(2):
        assert torch.equal(torch.cat([x for x, _ in train]), d.x_train)
        assert torch.equal(torch.cat([y for _, y in train]), d.y_train)


def test_loader_refuses_bad_arguments():
    with pytest.raises(DaggrowError, match="batch_size"):
        TensorLoader(torch.zeros(3, 2), torch.zeros(3), 0)
    with pytest.raises(DaggrowError, match="3 inputs but 2 labels"):
        TensorLoader(torch.zeros(3, 2), torch.zeros(2), 1)
    with pytest.raises(DaggrowError, match="inputs on cpu but labels on meta"):
        TensorLoader(torch.zeros(3, 2), torch.zeros(3, device="meta"), 1)


def test_digits_is_learnable():
    from sklearn.linear_model import LogisticRegression

    d = load_dataset("digits")
    acc = LogisticRegression(max_iter=2000).fit(d.x_train.numpy(), d.y_train.numpy()).score(d.x_test.numpy(), d.y_test.numpy())
    assert acc > 0.9


def test_unknown_name():
    with pytest.raises(UnknownDatasetError, match="'cifar10'; built-in data sets: synthetic, digits, mnist1d"):
        load_dataset("cifar10")
    with pytest.raises(ValueError):  # also a ValueError and a DaggrowError
        load_dataset("cifar10")
    assert issubclass(UnknownDatasetError, DaggrowError)
