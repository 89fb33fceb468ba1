"""sym_pinv_sqrt and whitening: S⁺, S^{-1/2} and whitening factors from the kept eigenvalues
μ > rel_tol·μ_max, against torch references (inv, pinv, lstsq)."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from daggrow.errors import DaggrowError
from daggrow.solve import RankDeficiencyWarning, SolverInputError, psd_eigh, sym_pinv_sqrt, tiny_neurons, whitening

from .reference import F64, features, moments, ones, targets


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


def _check_factor(white, S: torch.Tensor, rank: int) -> None:
    """F S Fᵀ = I_r and Fᵀ F = S⁺ (columns of the identity through unwhiten ∘ whiten)."""
    D = S.shape[0]
    eye = torch.eye(D, dtype=F64)
    F = white.whiten(eye)                                      # r × D
    assert white.rank == rank and F.shape == (rank, D)
    torch.testing.assert_close(F @ S @ F.T, torch.eye(rank, dtype=F64), rtol=0, atol=1e-9)
    torch.testing.assert_close(white.unwhiten(torch.eye(rank, dtype=F64)), F.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(white.solve(eye), torch.linalg.pinv(S, hermitian=True, rtol=1e-10),
                               rtol=1e-8, atol=1e-9)


def test_whitening_of_a_well_conditioned_matrix_is_a_cholesky_factor_that_solves_least_squares():
    gen = torch.Generator().manual_seed(3)
    B = torch.cat([features(200, 7, gen), ones(200)])
    V = targets(B[:-1], 3, gen)
    S, M, _ = moments(B, V)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankDeficiencyWarning)
        white = whitening(S)
    assert white.method == "cholesky"
    _check_factor(white, S, 8)
    reference = torch.linalg.lstsq(B.T, V.T).solution             # min ‖Bᵀ X − Vᵀ‖ over the samples
    torch.testing.assert_close(white.solve(M), reference, rtol=1e-9, atol=1e-10)


def test_whitening_drops_exactly_zero_coordinates_without_decomposing():
    """A dead neuron or a constant-zero input is a zero row and column of S: Cholesky of the rest."""
    gen = torch.Generator().manual_seed(4)
    H = features(120, 4, gen)
    B = torch.cat([H[:2], torch.zeros(1, 120, dtype=F64), H[2:], ones(120)])
    S = B @ B.T / 120
    with pytest.warns(RankDeficiencyWarning, match="rank 5"):
        white = whitening(S)
    assert white.method == "cholesky"
    _check_factor(white, S, 5)
    assert torch.count_nonzero(white.whiten(torch.eye(6, dtype=F64))[:, 2]) == 0


@pytest.mark.parametrize("case", ["duplicated", "near_singular", "zero"])
def test_whitening_falls_back_to_the_spectral_cut_when_cholesky_would_differ(case):
    gen = torch.Generator().manual_seed(5)
    H = features(150, 4, gen)
    if case == "duplicated":
        B, rank = torch.cat([H, H[:1], ones(150)]), 5
    elif case == "near_singular":                   # κ = 1e13 > 1/rel_tol: the cut drops a direction
        Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=F64))
        S = (Q * torch.tensor([1e-13, 0.1, 0.5, 1.0, 2.0], dtype=F64)) @ Q.T
        B, rank = None, 4
    else:
        B, rank = torch.zeros(3, 150, dtype=F64), 0
    S = B @ B.T / 150 if B is not None else S
    with pytest.warns(RankDeficiencyWarning):
        white = whitening(S)
    assert white.method == "eigh"
    if rank:
        _check_factor(white, S, rank)
    else:
        assert white.rank == 0 and torch.count_nonzero(white.solve(torch.eye(3, dtype=F64))) == 0


def test_tiny_neurons_are_the_same_with_either_whitening():
    """F = L⁻¹ and F = S^{-1/2} differ by a rotation: same λ, same α and ω (float64)."""
    gen = torch.Generator().manual_seed(6)
    B = torch.cat([features(300, 6, gen), ones(300)])
    V = targets(B[:-1], 4, gen)
    S, M, _ = moments(B, V)
    chol, spectral = whitening(S), whitening(S, method="eigh")
    assert (chol.method, spectral.method) == ("cholesky", "eigh")
    a = tiny_neurons(S, M, M, 3, rel_threshold=0.0, decomposition=chol)
    b = tiny_neurons(S, M, M, 3, rel_threshold=0.0, decomposition=spectral)
    torch.testing.assert_close(a.all_eigenvalues, b.all_eigenvalues, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.fan_in, b.fan_in, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(a.fan_out, b.fan_out, rtol=1e-8, atol=1e-10)


def test_whitening_rejects_bad_input():
    with pytest.raises(SolverInputError, match="square"):
        whitening(torch.zeros(2, 3))
    with pytest.raises(SolverInputError, match="method"):
        whitening(torch.eye(2), method="qr")
    with pytest.raises(SolverInputError, match="NaN"):
        whitening(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    assert whitening(torch.zeros(0, 0)).rank == 0


def test_cholesky_whitening_of_a_moderately_ill_conditioned_matrix_matches_the_spectral_answer():
    """κ = 1e6 (well inside 1/(margin·rel_tol)): Cholesky is used and agrees with eigh to ~κ·ε."""
    gen = torch.Generator().manual_seed(7)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=F64))
    S = (Q * torch.logspace(-6, 0, 40, dtype=F64)) @ Q.T
    M = torch.randn(40, 3, generator=gen, dtype=F64)
    chol, spectral = whitening(S), whitening(S, method="eigh")
    assert chol.method == "cholesky" and chol.rank == spectral.rank == 40
    torch.testing.assert_close(chol.solve(M), spectral.solve(M), rtol=1e-8, atol=1e-8)
    F = chol.whiten(torch.eye(40, dtype=F64))
    torch.testing.assert_close(F @ S @ F.T, torch.eye(40, dtype=F64), rtol=0, atol=1e-8)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(20, 60), width=st.integers(1, 8), dead=st.integers(0, 2), copies=st.integers(0, 2),
       seed=st.integers(0, 10_000))
def test_whitening_solves_least_squares_for_random_moment_matrices(n, width, dead, copies, seed):
    """Random data with dead and duplicated columns: whichever factor is chosen, F S Fᵀ = I_r and
    S⁺ M equals torch's pseudo-inverse (float64)."""
    gen = torch.Generator().manual_seed(seed)
    H = features(n, width, gen).T                                       # n × width
    B = torch.cat([H, H[:, :copies], torch.zeros(n, dead, dtype=F64)], 1)
    S = B.T @ B / n
    M = torch.randn(B.shape[1], 3, generator=gen, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        white = whitening(S)
    rank = int(torch.linalg.matrix_rank(S, hermitian=True, rtol=1e-10))
    assert white.rank == rank
    assert white.method == ("cholesky" if copies == 0 else "eigh")
    F = white.whiten(torch.eye(B.shape[1], dtype=F64))
    torch.testing.assert_close(F @ S @ F.T, torch.eye(rank, dtype=F64), rtol=0, atol=1e-8)
    torch.testing.assert_close(white.solve(M), torch.linalg.pinv(S, hermitian=True, rtol=1e-10) @ M,
                               rtol=1e-7, atol=1e-8)
