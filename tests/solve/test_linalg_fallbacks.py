"""The solver never crashes: active coordinates only, jitter and SVD fallbacks, SolverError.

References are brute force in float64: torch.linalg.pinv / lstsq of the *full* S, and the
Eckart–Young values of the samples (tests/solve/reference.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from daggrow.errors import DaggrowError, SolverError
from daggrow.solve import (
    RankDeficiencyWarning,
    active_coordinates,
    best_update,
    psd_eigh,
    stable_eigh,
    stable_svd,
    tiny_neurons,
    whitening,
)
from daggrow.solve import linalg

from .reference import F64, features, lstsq_update, moments, ones, reduced_rank_values, targets


def _mostly_zero(n: int = 200, live: int = 12, dead: int = 188, seed: int = 0):
    """B with ``dead`` all-zero rows interleaved among ``live`` ones (like padding taps), V."""
    gen = torch.Generator().manual_seed(seed)
    H = features(n, live, gen)
    D = live + dead
    rows = torch.randperm(D, generator=gen)[:live].sort().values
    B = torch.zeros(D, n, dtype=F64)
    B[rows] = H
    B = torch.cat([B, ones(n)])
    V = targets(H, 3, gen)
    return B, V, rows


def test_active_coordinates_are_the_nonzero_rows():
    S = torch.zeros(4, 4, dtype=F64)
    assert active_coordinates(torch.eye(3, dtype=F64)) is None
    S[1, 1], S[1, 3], S[3, 1], S[3, 3] = 2.0, 1.0, 1.0, 2.0
    assert active_coordinates(S).tolist() == [1, 3]


@pytest.mark.parametrize("method", ["auto", "eigh"])
def test_mostly_zero_S_equals_the_full_pinv_solution(method):
    B, V, rows = _mostly_zero()
    S, M, g = moments(B, V)
    assert int((S != 0).any(1).sum()) == 13  # 12 live rows and the constant
    with pytest.warns(RankDeficiencyWarning, match="rank 13"):
        white = whitening(S, method=method)
    assert white.active is not None and white.active.numel() == 13
    pinv = torch.linalg.pinv(S, hermitian=True, rtol=1e-10)
    torch.testing.assert_close(white.solve(M), pinv @ M, rtol=0, atol=1e-10)
    with pytest.warns(RankDeficiencyWarning):
        upd = best_update(S, M, g, decomposition=None)
    torch.testing.assert_close(upd.delta, lstsq_update(B, V), rtol=0, atol=1e-10)
    # whitening: F S Fᵀ = I_r on the active block, zero fan-in on the dead rows
    A = white.unwhiten(torch.eye(white.rank, dtype=F64))
    torch.testing.assert_close(A.T @ S @ A, torch.eye(white.rank, dtype=F64), rtol=0, atol=1e-10)
    dead = torch.ones(S.shape[0], dtype=torch.bool)
    dead[white.active] = False
    assert bool((A[dead] == 0).all())


def test_mostly_zero_S_gives_the_same_neurons_as_the_samples():
    B, V, _ = _mostly_zero(seed=1)
    S, M, _ = moments(B, V)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        sol = tiny_neurons(S, M, M, 3, rel_threshold=0.0)
        _, E = psd_eigh(S)
    torch.testing.assert_close(sol.eigenvalues, reduced_rank_values(B, V)[:3], rtol=1e-9, atol=1e-10)
    assert E.shape == (S.shape[0], 13)
    torch.testing.assert_close(E.T @ E, torch.eye(13, dtype=F64), rtol=0, atol=1e-10)


def test_singular_S_gives_the_minimum_norm_solution():
    gen = torch.Generator().manual_seed(2)
    H = features(60, 4, gen)
    B = torch.cat([H, H[:2] + H[2:3], ones(60)])  # two rows are sums of others: rank 5 of 7
    V = targets(H, 2, gen)
    S, M, g = moments(B, V)
    for method in ("auto", "eigh"):
        with pytest.warns(RankDeficiencyWarning, match="rank 5"):
            white = whitening(S, method=method)
        torch.testing.assert_close(white.solve(M).T, lstsq_update(B, V), rtol=0, atol=1e-10)


def _failing(real, failures: int):
    """``real`` that raises LinAlgError on its first ``failures`` calls."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise torch.linalg.LinAlgError("forced failure (test)")
        return real(*args, **kwargs)
    return wrapped, calls


@pytest.mark.parametrize("eigh_failures", [1, 2])
def test_eigh_failures_fall_back_to_jitter_then_svd(monkeypatch, eigh_failures):
    B, V, _ = _mostly_zero(seed=3, live=6, dead=10)
    S, M, _ = moments(B, V)
    expected = torch.linalg.pinv(S, hermitian=True, rtol=1e-10) @ M
    eigh, calls = _failing(torch.linalg.eigh, eigh_failures)
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    with pytest.warns(RankDeficiencyWarning):
        white = whitening(S, method="eigh")
    assert calls["n"] == min(eigh_failures + 1, 2)  # the jitter retry; after two failures the SVD
    torch.testing.assert_close(white.solve(M), expected, rtol=0, atol=1e-9)
    mu, E = stable_eigh(S[:7, :7] + torch.eye(7, dtype=F64))
    torch.testing.assert_close((E * mu) @ E.T, S[:7, :7] + torch.eye(7, dtype=F64), rtol=0, atol=1e-10)


def test_every_factorisation_failing_raises_solver_error(monkeypatch):
    S = torch.eye(3, dtype=F64)
    S[0, 1] = S[1, 0] = 0.5
    monkeypatch.setattr(torch.linalg, "eigh", _failing(torch.linalg.eigh, 10)[0])
    monkeypatch.setattr(torch.linalg, "svd", _failing(torch.linalg.svd, 10)[0])
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda A: (A, torch.tensor(1)))
    with pytest.raises(SolverError, match="could not factorise a 3×3 moment matrix") as info:
        whitening(S)
    assert isinstance(info.value, DaggrowError) and "forced failure" in str(info.value)


def test_non_finite_eigh_output_counts_as_a_failure(monkeypatch):
    real = torch.linalg.eigh
    calls = {"n": 0}

    def nan_once(A):
        calls["n"] += 1
        evals, evecs = real(A)
        return (evals * float("nan"), evecs) if calls["n"] == 1 else (evals, evecs)
    monkeypatch.setattr(torch.linalg, "eigh", nan_once)
    S = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=F64)
    mu, E = stable_eigh(S)
    torch.testing.assert_close(mu, torch.tensor([1.0, 3.0], dtype=F64), rtol=0, atol=1e-9)


def test_cholesky_estimate_failure_falls_back_to_eigh(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    B = torch.cat([features(50, 3, gen), ones(50)])
    S, M, _ = moments(B, targets(B[:3], 2, gen))
    monkeypatch.setattr(linalg, "_extreme_eigenvalue_estimates", _failing(None, 10)[0])
    white = whitening(S)
    assert white.method == "eigh"
    torch.testing.assert_close(white.solve(M), torch.linalg.solve(S, M), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(9, 4), (4, 9)])
def test_svd_fallback_matches_the_svd(monkeypatch, shape):
    X = torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    U0, s0, Vt0 = torch.linalg.svd(X, full_matrices=False)
    monkeypatch.setattr(torch.linalg, "svd", _failing(torch.linalg.svd, 1)[0])
    U, s, Vt = stable_svd(X)
    torch.testing.assert_close(s, s0, rtol=0, atol=1e-10)
    torch.testing.assert_close((U * s) @ Vt, X, rtol=0, atol=1e-10)
    torch.testing.assert_close(U.T @ U, torch.eye(4, dtype=F64), rtol=0, atol=1e-10)


def test_tiny_neurons_with_a_failing_svd_equal_the_reference(monkeypatch):
    gen = torch.Generator().manual_seed(6)
    H = features(80, 5, gen)
    B = torch.cat([H, ones(80)])
    V = targets(H, 3, gen)
    S, M, _ = moments(B, V)
    reference = tiny_neurons(S, M, M, 2, rel_threshold=0.0)
    monkeypatch.setattr(torch.linalg, "svd", _failing(torch.linalg.svd, 1)[0])
    sol = tiny_neurons(S, M, M, 2, rel_threshold=0.0)
    torch.testing.assert_close(sol.eigenvalues, reference.eigenvalues, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(sol.fan_in @ sol.fan_out.T, reference.fan_in @ reference.fan_out.T,
                               rtol=1e-8, atol=1e-9)


def test_out_of_memory_in_eigh_becomes_a_solver_error(monkeypatch):
    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory (test)")
    monkeypatch.setattr(torch.linalg, "eigh", oom)
    with pytest.raises(SolverError, match="not enough memory to factorise a 2×2"):
        stable_eigh(torch.eye(2, dtype=F64))
    monkeypatch.setattr(torch.linalg, "svd", oom)
    with pytest.raises(SolverError, match="memory_budget"):
        stable_svd(torch.eye(2, dtype=F64))


def test_all_zero_S_has_rank_zero():
    with pytest.warns(RankDeficiencyWarning, match="rank 0"):
        white = whitening(torch.zeros(3, 3, dtype=F64), method="eigh")
    assert white.rank == 0
    assert white.solve(torch.ones(3, 2, dtype=F64)).abs().max() == 0


@pytest.mark.gpu
def test_mostly_zero_S_on_cuda_equals_the_cpu_answer():
    B, V, _ = _mostly_zero(seed=7)
    S, M, _ = moments(B, V)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        for method in ("auto", "eigh"):
            cpu, gpu = whitening(S, method=method), whitening(S.cuda(), method=method)
            assert gpu.factor.is_cuda and gpu.rank == cpu.rank == 13
            torch.testing.assert_close(gpu.solve(M.cuda()).cpu(), cpu.solve(M), rtol=1e-9, atol=1e-10)
        mu, E = stable_eigh(S.cuda())
        torch.testing.assert_close(((E * mu) @ E.T).cpu(), S, rtol=0, atol=1e-10)
