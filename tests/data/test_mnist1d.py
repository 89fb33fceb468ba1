"""MNIST-1D generator: templates, sizes and class balance, smoothing, reference statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daggrow.data.mnist1d import _gaussian_smooth, make_mnist1d, templates


def test_templates_start_at_zero():
    t = templates()
    assert t.shape == (10, 12) and torch.allclose(t[:, 0], torch.zeros(10, dtype=t.dtype))


def test_generator_shapes_balance_and_standardisation():
    x, y = make_mnist1d(1000, seed=1)
    assert x.shape == (1000, 40) and x.dtype == torch.float64 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [100] * 10
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std()) - 1) < 1e-6
    x2, y2 = make_mnist1d(1000, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_generator_any_size_keeps_classes_balanced_within_one():
    x, y = make_mnist1d(1003, seed=0)
    assert x.shape == (1003, 40) and torch.bincount(y).tolist() == [101] * 3 + [100] * 7
    x, y = make_mnist1d(7, seed=0)
    assert sorted(y.tolist()) == list(range(7))
    with pytest.raises(ValueError, match="num_samples ≥ 1"):
        make_mnist1d(0)


def test_smoothing_matches_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    x = torch.randn(6, 72, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.from_numpy(np.stack([gaussian_filter(row, 2.0) for row in x.numpy()]))
    torch.testing.assert_close(_gaussian_smooth(x), expected, atol=1e-12, rtol=0)


def test_statistics_match_the_reference_generator():
    """Numbers measured on mnist1d's own make_dataset (5000 samples; its seeds differ by ≤ 0.001)."""
    x, y = make_mnist1d(5000, seed=0)
    lag1 = torch.stack([torch.corrcoef(x[:, i:i + 2].T)[0, 1] for i in range(39)]).mean()
    assert abs(float(lag1) - 0.823) < 0.01
    assert abs(float(x.diff(dim=1).abs().mean()) - 0.430) < 0.01
