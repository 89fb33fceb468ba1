"""Batched TINY (solve/batched.py) against tiny_neurons one problem at a time, float64."""

from __future__ import annotations

import importlib

import pytest
import torch

from daggrow.errors import SolverError
from daggrow.solve import tiny_neurons, whitening
from daggrow.solve.batched import WhitenedProblem, tiny_neurons_batched

batched_module = importlib.import_module("daggrow.solve.batched")


def problem(seed: int, D: int = 5, d: int = 3, n: int = 40, rank: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    B = torch.randn(D, n, generator=gen, dtype=torch.float64)
    if rank is not None:  # duplicated inputs: a singular S
        B[rank:] = B[:1]
    V = torch.randn(d, n, generator=gen, dtype=torch.float64)
    S, M = B @ B.T / n, B @ V.T / n
    N = M - 0.3 * torch.randn(D, d, generator=gen, dtype=torch.float64)
    return S, N, M


def solved(problems, k, rel_threshold=1e-3, floor=0.0):
    items = []
    for S, N, M in problems:
        W = whitening(S, warn=False)
        items.append(WhitenedProblem(W, W.whiten(N), M, k, floor))
    return items


@pytest.mark.parametrize("k", [1, 2, 4])
def test_batched_equals_one_at_a_time(k):
    problems = [problem(i) for i in range(4)] + [problem(9, d=2), problem(10, rank=3), problem(11, D=4)]
    out = tiny_neurons_batched(solved(problems, k, floor=1e-4), rel_threshold=1e-2)
    for (S, N, M), sol in zip(problems, out):
        ref = tiny_neurons(S, N, M, k, rel_threshold=1e-2, min_decrease=1e-4, decomposition=whitening(S, warn=False))
        torch.testing.assert_close(sol.fan_in, ref.fan_in, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sol.fan_out, ref.fan_out, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sol.all_eigenvalues, ref.all_eigenvalues, rtol=1e-10, atol=1e-14)
        assert sol.first_order_gain == pytest.approx(ref.first_order_gain, rel=1e-10, abs=1e-14)
        assert sol.bottleneck_decrease == pytest.approx(ref.bottleneck_decrease, rel=1e-10, abs=1e-14)


def test_empty_problems_and_zero_neurons():
    S, N, M = problem(0)
    W = whitening(S, warn=False)
    out = tiny_neurons_batched([WhitenedProblem(W, W.whiten(N)[:, :0], M[:, :0], 2),
                                WhitenedProblem(W, W.whiten(N), M, 0)])
    assert [s.num_neurons for s in out] == [0, 0]
    zero = tiny_neurons_batched([WhitenedProblem(W, torch.zeros_like(W.whiten(N)), M, 2)])[0]
    assert zero.num_neurons == 0 and zero.first_order_gain == 0.0


def test_a_failing_svd_fails_only_its_own_problem(monkeypatch):
    problems = [problem(i) for i in range(5)]
    items = solved(problems, 2)
    bad = items[3].FN
    real = batched_module._svds

    def flaky(matrices):
        return None if any(m is bad for m in matrices) else real(matrices)

    monkeypatch.setattr(batched_module, "_svds", flaky)
    out = tiny_neurons_batched(items)
    assert isinstance(out[3], SolverError)
    for i in (0, 1, 2, 4):
        S, N, M = problems[i]
        ref = tiny_neurons(S, N, M, 2, decomposition=whitening(S, warn=False))
        torch.testing.assert_close(out[i].fan_in, ref.fan_in, rtol=1e-10, atol=1e-12)


def test_svds_reports_a_failed_batch(monkeypatch):
    def broken(*_a, **_k):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "svd", broken)
    assert batched_module._svds([torch.eye(2, dtype=torch.float64)]) is None
