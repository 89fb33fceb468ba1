"""sym_pinv_sqrt: S⁺ and S^{-1/2} from the kept eigenvalues μ > rel_tol·μ_max, against torch references."""

from __future__ import annotations

import warnings

import pytest
import torch

from daggrow.errors import DaggrowError
from daggrow.solve import RankDeficiencyWarning, SolverInputError, psd_eigh, sym_pinv_sqrt

from .reference import F64, features, ones


def test_full_rank_matches_inverse_and_inverse_square_root():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    B = torch.cat([features(100, 5, gen), ones(100)])
    S = B @ B.T / 100
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankDeficiencyWarning)  # full rank: no warning
        inv_sqrt, pinv, rank = sym_pinv_sqrt(S)
    assert rank == 6 and inv_sqrt.dtype == F64 and pinv.dtype == F64
    torch.testing.assert_close(pinv, torch.linalg.inv(S), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(inv_sqrt @ S @ inv_sqrt, torch.eye(6, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(inv_sqrt, inv_sqrt.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(inv_sqrt @ inv_sqrt, pinv, rtol=1e-9, atol=1e-12)


def test_rank_deficient_warns_and_gives_pseudo_inverse():
    gen = torch.Generator().manual_seed(1)
    H = features(80, 3, gen)
    B = torch.cat([H, H[:1], torch.zeros(1, 80, dtype=F64), ones(80)])   # duplicate row and a dead row
    S = B @ B.T / 80
    with pytest.warns(RankDeficiencyWarning, match="rank 4"):
        inv_sqrt, pinv, rank = sym_pinv_sqrt(S)
    assert rank == 4
    torch.testing.assert_close(pinv, torch.linalg.pinv(S, hermitian=True, rtol=1e-10), rtol=1e-8, atol=1e-10)
    # S^{-1/2} S S^{-1/2} is the orthogonal projector on the range of S
    P = inv_sqrt @ S @ inv_sqrt
    torch.testing.assert_close(P @ P, P, rtol=0, atol=1e-10)
    assert float(torch.trace(P)) == pytest.approx(4.0, abs=1e-10)
    torch.testing.assert_close(P @ S, S, rtol=0, atol=1e-10)


def test_negative_round_off_and_tiny_eigenvalues_are_cut_relative_to_the_largest():
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=F64))
    for scale in (1e-8, 1.0, 1e8):  # the cut is relative: the same answer at every scale
        mu = torch.tensor([-1e-14, 1e-13, 0.5, 2.0], dtype=F64) * scale
        S = (Q * mu) @ Q.T
        with pytest.warns(RankDeficiencyWarning):
            inv_sqrt, pinv, rank = sym_pinv_sqrt(S)
        assert rank == 2
        kept = Q[:, 2:]
        torch.testing.assert_close(pinv * scale, (kept / mu[2:] * scale) @ kept.T, rtol=1e-9, atol=1e-9)
        assert bool(torch.isfinite(inv_sqrt).all())
    values, vectors = psd_eigh((Q * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)) @ Q.T)
    torch.testing.assert_close(values, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64))
    assert vectors.shape == (4, 4)


def test_zero_and_empty_matrices():
    with pytest.warns(RankDeficiencyWarning):
        inv_sqrt, pinv, rank = sym_pinv_sqrt(torch.zeros(3, 3))
    assert rank == 0 and torch.count_nonzero(inv_sqrt) == 0 and torch.count_nonzero(pinv) == 0
    inv_sqrt, pinv, rank = sym_pinv_sqrt(torch.zeros(0, 0))
    assert rank == 0 and inv_sqrt.shape == (0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankDeficiencyWarning)
        sym_pinv_sqrt(torch.zeros(2, 2), warn=False)


def test_float32_input_is_solved_in_float64():
    S = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float32)
    inv_sqrt, pinv, _ = sym_pinv_sqrt(S)
    assert pinv.dtype == F64
    torch.testing.assert_close(pinv, torch.linalg.inv(S.double()), rtol=1e-14, atol=1e-14)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(SolverInputError, match="square"):
        sym_pinv_sqrt(torch.zeros(2, 3))
    with pytest.raises(SolverInputError, match="matrix"):
        sym_pinv_sqrt(torch.zeros(3))
    with pytest.raises(SolverInputError, match="NaN"):
        sym_pinv_sqrt(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    assert issubclass(SolverInputError, DaggrowError) and issubclass(SolverInputError, ValueError)
