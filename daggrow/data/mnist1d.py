"""MNIST-1D (Greydanus, "Scaling down deep learning", 2020), generated here, vectorised in torch.

Each sample starts from one of ten 12-point digit templates (a tiny table of numbers from the
paper's reference implementation, normalised so each starts and ends at 0) and goes through:

1. pad with p ~ U{36..60} zeros, then stretch linearly to 72 points (so the digit's length varies);
2. scale the amplitude by 1 + 0.4·(u − ½);
3. translate circularly by k ~ U{0..47} points;
4. where the signal is zero, put correlated noise (N(0, 0.25²) smoothed by a Gaussian of σ = 2
   points); add i.i.d. noise N(0, 0.02²) everywhere;
5. shear: subtract c·t with c = 0.75·(u − ½), t from −½ to ½;
6. resample linearly to 40 points; standardise the whole data set.

The procedure and its constants are the paper's defaults (5000 samples, 4000/1000 split;
:func:`daggrow.data.load_dataset` keeps the 1000 test samples and takes 500 of the 4000 for
validation). The code is ours, written from the paper's description;
the random streams differ from the reference code (torch instead of numpy), so the samples
are not bit-identical to the published file, but they are drawn from the same distribution.

The correlated-noise smoothing mirrors the edges with the edge point repeated, as
``scipy.ndimage.gaussian_filter`` does (tested against it).

Checks (re-measured 2026-11-25 against the reference package ``mnist1d==0.0.2.post1``, installed
with ``pip install --no-deps --target /tmp/...`` outside the project venv, data from its local
``make_dataset``, never its download path; removed afterwards):

* its default arguments equal the constants below, and its ten processed templates equal
  :func:`templates` to 2e-16;
* statistics, 5000 samples, seeds 0, 1, 2 (reference → ours): lag-1 autocorrelation
  0.823 0.824 0.824 → 0.824 0.823 0.824; mean |x[i+1] − x[i]| 0.431 0.429 0.430 → 0.429 0.430
  0.429; mean per-point standard deviation 0.995 → 0.995;
* test accuracy (%) on 1000 test samples, data seeds 0, 1, 2 (paper: logistic regression 32,
  MLP 68). MLP entries are the mean over three initialisation seeds (0, 1, 2):

  data                                         logistic regression   MLP
  reference make_dataset, 4000 train           33.2  33.0  33.5      67.3  66.5  66.9
  ours, make_mnist1d(5000), first 4000 train   31.9  33.0  31.6      66.8  65.5  67.3
  ours, load_dataset (3500 train, 500 val)     32.1  32.7  31.9      64.9  63.2  64.1
  ours, make_mnist1d(5000), first 3500 train                         64.6  63.8  65.7
  train on reference (seed 0), test on ours    32.9                  66.3

  Means over data seeds: reference 33.2 / 66.9, ours 32.2 / 66.5, load_dataset 32.2 / 64.0. The
  accuracy on 1000 test samples has a standard error of about 1.5 points, so ours and the
  reference agree within noise. load_dataset's MLP is lower because it trains on 3500 samples
  instead of 4000: the same 3500 without per-point standardisation give 64.7 on average.
  Single MLP runs spread over 61.6–69.5, so quote means.

  Logistic regression: scikit-learn ``LogisticRegression(max_iter=5000)`` (defaults otherwise)
  on float32 signals as given (``load_dataset``'s are standardised per point with train
  statistics). MLP: the paper's 40-100-100-10 ReLU network in torch, ``torch.manual_seed(init)``,
  Adam (lr 1e-2), 6000 steps, each on 100 samples drawn with replacement by ``torch.randint``,
  test accuracy after the last step; one CPU thread.

Reproduce the logistic-regression row of ``load_dataset`` with::

    python -c "from daggrow.data import load_dataset; from sklearn.linear_model import LogisticRegression as L; \
d = load_dataset('mnist1d'); print(L(max_iter=5000).fit(d.x_train, d.y_train).score(d.x_test, d.y_test))"
"""

from __future__ import annotations

import torch

_TEMPLATES = [
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
]
TEMPLATE_LEN, PADDING, SCALE, MAX_SHIFT = 12, (36, 60), 0.4, 48
CORR_NOISE, IID_NOISE, SHEAR, LENGTH = 0.25, 0.02, 0.75, 40


def templates() -> torch.Tensor:
    """The ten templates, each standardised and shifted to start at 0, divided by 6."""
    t = torch.tensor(_TEMPLATES, dtype=torch.float64)
    t = (t - t.mean(1, keepdim=True)) / t.std(1, unbiased=False, keepdim=True)
    return (t - t[:, :1]) / 6.0


def _resample(x: torch.Tensor, lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Linear interpolation of each row's first ``lengths[i]`` points onto ``size`` points."""
    pos = torch.linspace(0, 1, size, dtype=torch.float64)[None, :] * (lengths[:, None] - 1)
    lo = pos.floor().long().clamp(max=x.shape[1] - 2)
    frac = pos - lo
    return x.gather(1, lo) * (1 - frac) + x.gather(1, lo + 1) * frac


def _gaussian_smooth(x: torch.Tensor, sigma: float = 2.0, truncate: float = 4.0) -> torch.Tensor:
    """Each row convolved with a normalised Gaussian of width ``sigma`` cut at ``truncate``·σ,
    edges mirrored with the edge point repeated (``… b a | a b …``, scipy's ``mode="reflect"``)."""
    radius = int(truncate * sigma + 0.5)
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    padded = torch.cat([x[:, :radius].flip(1), x, x[:, -radius:].flip(1)], 1)
    return torch.nn.functional.conv1d(padded[:, None, :], k[None, None, :])[:, 0, :]


def make_mnist1d(num_samples: int = 5000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` MNIST-1D signals (float64, 40 points, standardised) and their labels in a
    shuffled order: ``num_samples // 10`` per class, plus one more for classes 0 … r−1 where
    r = ``num_samples % 10``."""
    if num_samples < 1:
        raise ValueError(f"make_mnist1d needs num_samples ≥ 1, got {num_samples}")
    gen = torch.Generator().manual_seed(seed)
    per_class, extra = divmod(num_samples, 10)
    y = torch.cat([torch.arange(10).repeat_interleave(per_class), torch.arange(extra)])
    n = len(y)
    width = TEMPLATE_LEN + PADDING[1]                     # 72 points after stretching
    base = torch.zeros(n, width + 1, dtype=torch.float64)
    base[:, :TEMPLATE_LEN] = templates()[y] + 1e-8        # + eps: the digit is never exactly 0
    pads = torch.randint(PADDING[0], PADDING[1] + 1, (n,), generator=gen)
    x = _resample(base, (TEMPLATE_LEN + pads).double(), width)
    x = x * (1 + SCALE * (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5))
    shifts = torch.randint(0, MAX_SHIFT, (n,), generator=gen)
    idx = (torch.arange(width)[None, :] - shifts[:, None]) % width
    x = x.gather(1, idx)
    noise = _gaussian_smooth(CORR_NOISE * torch.randn(n, width, generator=gen, dtype=torch.float64))
    x = torch.where(x != 0, x, noise)
    x = x + IID_NOISE * torch.randn(n, width, generator=gen, dtype=torch.float64)
    coeff = SHEAR * (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5)
    x = x - coeff * torch.linspace(-0.5, 0.5, width, dtype=torch.float64)[None, :]
    x = _resample(torch.cat([x, x[:, -1:]], 1), torch.full((n,), float(width), dtype=torch.float64), LENGTH)
    order = torch.randperm(n, generator=gen)
    x, y = x[order], y[order]
    return (x - x.mean()) / x.std(), y
