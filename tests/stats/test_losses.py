"""Per-sample losses against torch's own definitions (float64), values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from daggrow.errors import StatisticsError
from daggrow.stats import per_sample_loss


def logits(n: int = 40, c: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(n, c, generator=gen, dtype=torch.float64)).requires_grad_()


def test_cross_entropy_of_class_indices_equals_torch_values_and_gradients():
    out = logits()
    y = torch.randint(0, 7, (40,), generator=torch.Generator().manual_seed(1))
    ours = per_sample_loss("cross_entropy", out, y)
    ref = F.cross_entropy(out, y, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=1e-14, atol=1e-14)
    w = torch.rand(40, dtype=torch.float64)  # a weighted sum: per-sample gradients, not only their sum
    (g_ours,) = torch.autograd.grad((w * ours).sum(), out)
    (g_ref,) = torch.autograd.grad((w * ref).sum(), out)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-13, atol=1e-15)
    big = logits() * 1e3  # no overflow: the logsumexp subtracts the maximum
    torch.testing.assert_close(per_sample_loss("cross_entropy", big, y), F.cross_entropy(big, y, reduction="none"))


@pytest.mark.parametrize("case", ["probabilities", "ignored_label", "image"])
def test_cross_entropy_other_targets_are_torch_cross_entropy(case):
    out = logits()
    if case == "probabilities":
        y = torch.softmax(torch.randn(40, 7, dtype=torch.float64), 1)
    elif case == "ignored_label":  # F.cross_entropy's ignore_index: loss 0 for that sample
        y = torch.randint(0, 7, (40,))
        y[3] = -100
    else:
        out = torch.randn(40, 7, 1, dtype=torch.float64)
        y = torch.randint(0, 7, (40, 1))
    if case == "image":  # one value per position, not per sample: a clear error
        with pytest.raises(StatisticsError, match="one value per sample"):
            per_sample_loss("cross_entropy", out, y)
        return
    torch.testing.assert_close(per_sample_loss("cross_entropy", out, y), F.cross_entropy(out, y, reduction="none"))


def test_cross_entropy_label_out_of_range_is_a_statistics_error():
    with pytest.raises(StatisticsError, match=r"class indices in \[0, 7\)"):
        per_sample_loss("cross_entropy", logits(), torch.tensor([0, 7] * 20))
