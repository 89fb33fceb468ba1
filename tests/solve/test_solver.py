"""The solver against brute force in float64: lstsq, explicit residuals, random rank-K rivals."""

from __future__ import annotations

import warnings

import pytest
import torch

from daggrow.graph.activations import ACTIVATIONS
from daggrow.solve import (
    RankDeficiencyWarning,
    activation_layout,
    best_update,
    gradmax_neurons,
    new_edge,
    north_neurons,
    projected_moment,
    random_neurons,
    solve_neurons,
    tiny_neurons,
    zero_neurons,
)


def data(D=6, d=4, n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    H = torch.randn(n, D - 1, generator=gen, dtype=torch.float64)
    B = torch.cat([H, torch.ones(n, 1, dtype=torch.float64)], 1).T            # (D × n), constant row last
    V = torch.randn(d, n, generator=gen, dtype=torch.float64) + torch.tanh(H[:, :d].T * 2)
    return B, V


def moments(B, V):
    n = B.shape[1]
    return B @ B.T / n, B @ V.T / n, float((V ** 2).sum()) / n


def test_best_update_equals_lstsq():
    B, V = data()
    S, M, g = moments(B, V)
    sol = best_update(S, M, g)
    ref = torch.linalg.lstsq(B.T, V.T).solution.T
    torch.testing.assert_close(sol.delta, ref, rtol=1e-10, atol=1e-10)
    n = B.shape[1]
    residual = float(((V - sol.delta @ B) ** 2).sum()) / n
    assert sol.bottleneck == pytest.approx(residual, rel=1e-10)
    assert sol.gain == pytest.approx(g - residual, rel=1e-10)


def test_best_update_over_three_in_edges_equals_lstsq():
    gen = torch.Generator().manual_seed(1)
    n = 300
    blocks = [torch.randn(n, w, generator=gen, dtype=torch.float64) for w in (3, 2, 4)]
    B = torch.cat(blocks + [torch.ones(n, 1, dtype=torch.float64)], 1).T
    V = torch.randn(5, n, generator=gen, dtype=torch.float64) + blocks[0][:, :1].T ** 2
    S, M, g = moments(B, V)
    sol = best_update(S, M, g)
    torch.testing.assert_close(sol.delta, torch.linalg.lstsq(B.T, V.T).solution.T, rtol=1e-10, atol=1e-10)


def _residual(Vp, B, A, O):
    return float(((Vp - O @ A.T @ B) ** 2).sum()) / B.shape[1]


@pytest.mark.parametrize("D, d, k", [(6, 4, 1), (6, 4, 3), (9, 7, 2)])
def test_tiny_decrease_is_sum_of_squared_eigenvalues_and_optimal(D, d, k):
    B, V = data(D, d)
    n = B.shape[1]
    # project V on a first "existing" block to get V⊥, as the graph does
    B_in = B[:2]
    delta = torch.linalg.lstsq(B_in.T, V.T).solution.T
    Vp = V - delta @ B_in
    S, M, _ = moments(B, V)
    N = B @ Vp.T / n
    torch.testing.assert_close(N, projected_moment(M, B @ B_in.T / n, delta), rtol=1e-10, atol=1e-12)
    sol = tiny_neurons(S, N, M, k, rel_threshold=0.0)
    assert sol.fan_in.shape == (D, k) and sol.fan_out.shape == (d, k)
    before = float((Vp ** 2).sum()) / n
    after = _residual(Vp, B, sol.fan_in, sol.fan_out)
    lam2 = float((sol.eigenvalues ** 2).sum())
    assert before - after == pytest.approx(lam2, rel=1e-8)
    inner = float((Vp * (sol.fan_out @ sol.fan_in.T @ B)).sum()) / n
    assert inner == pytest.approx(lam2, rel=1e-8)
    # first-order gain uses M (the real desired move), not N
    assert sol.first_order_gain == pytest.approx(float((V * (sol.fan_out @ sol.fan_in.T @ B)).sum()) / n, rel=1e-8)
    # no random rank-k matrix does better, nor small perturbations of the optimum
    gen = torch.Generator().manual_seed(5)
    for trial in range(200):
        if trial < 100:
            A = torch.randn(D, k, generator=gen, dtype=torch.float64)
            O = torch.randn(d, k, generator=gen, dtype=torch.float64)
            # best scale for this pair, so the rival is as strong as it can be
            P = O @ A.T @ B
            A = A * float((Vp * P).sum() / (P * P).sum())
        else:
            A = sol.fan_in + 1e-3 * torch.randn(D, k, generator=gen, dtype=torch.float64)
            O = sol.fan_out + 1e-3 * torch.randn(d, k, generator=gen, dtype=torch.float64)
        assert _residual(Vp, B, A, O) >= after - 1e-12


def test_rank_deficient_inputs_warn_and_match_pinv():
    B, V = data(5, 3)
    B = torch.cat([B[:1], B[:1], B[1:]], 0)          # a duplicated input column
    B = torch.cat([B[:-1], torch.zeros(1, B.shape[1], dtype=torch.float64), B[-1:]], 0)  # a dead neuron
    S, M, g = moments(B, V)
    with pytest.warns(RankDeficiencyWarning):
        sol = best_update(S, M, g)
    ref = V @ torch.linalg.pinv(B)
    torch.testing.assert_close(sol.delta, ref, rtol=1e-8, atol=1e-8)
    with pytest.warns(RankDeficiencyWarning):
        tiny = tiny_neurons(S, M, M, 2)
    n = B.shape[1]
    before, after = float((V ** 2).sum()) / n, _residual(V, B, tiny.fan_in, tiny.fan_out)
    assert before - after == pytest.approx(float((tiny.eigenvalues ** 2).sum()), rel=1e-8)


def test_perfect_fit_gives_no_neurons():
    B, _ = data()
    S = B @ B.T / B.shape[1]
    zero = torch.zeros(S.shape[0], 3, dtype=torch.float64)
    sol = tiny_neurons(S, zero, zero, 4)
    assert sol.fan_in.shape == (S.shape[0], 0) and sol.first_order_gain == 0.0
    edge = new_edge(S, zero, zero)
    assert edge.gain == 0.0 and torch.count_nonzero(edge.weight) == 0


def test_new_edge_is_least_squares():
    B, V = data()
    S, M, _ = moments(B, V)
    sol = new_edge(S, M, M)
    torch.testing.assert_close(sol.weight, torch.linalg.lstsq(B.T, V.T).solution.T, rtol=1e-10, atol=1e-10)
    n = B.shape[1]
    drop = float((V ** 2).sum()) / n - float(((V - sol.weight @ B) ** 2).sum()) / n
    assert sol.gain == pytest.approx(drop, rel=1e-10)


def test_gradmax_north_random_zero():
    B, V = data(6, 4)
    S, M, _ = moments(B, V)
    gm = gradmax_neurons(M, 2)
    assert torch.count_nonzero(gm.fan_in) == 0
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    # the fan-out directions are the top right singular vectors of M (rows of Vh), up to sign
    for k in range(2):
        cos = torch.dot(gm.fan_out[:, k], Vh[k]) / gm.fan_out[:, k].norm()
        assert abs(float(cos)) == pytest.approx(1.0, rel=1e-10)
    W = torch.randn(6, 3, dtype=torch.float64)
    north = north_neurons(S, 4, 2, W, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(north.fan_out) == 0
    torch.testing.assert_close(north.fan_in.T @ S @ W, torch.zeros(2, 3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close((north.fan_in * (S @ north.fan_in)).sum(0), torch.ones(2, dtype=torch.float64))
    r = random_neurons(6, 4, 3, generator=torch.Generator().manual_seed(0))
    assert r.fan_in.shape == (6, 3) and r.fan_out.shape == (4, 3)
    z = zero_neurons(6, 4, 2)
    assert torch.count_nonzero(z.fan_in) + torch.count_nonzero(z.fan_out) == 0
    with pytest.raises(ValueError, match="unknown init"):
        solve_neurons("best", S=S, N=M, M=M, max_neurons=1)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_layout_is_linear_to_first_order(name):
    """Σ_signs s·√(γ/c)·ω·σ(s·√(γ/c)·αᵀb) → γ·ω αᵀb as γ → 0 (exactly for relu pairs)."""
    layout = activation_layout(name, {})
    act = ACTIVATIONS[name].function
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(50, generator=gen, dtype=torch.float64)            # αᵀb over samples
    errors = []
    for gamma in (1e-2, 1e-4):
        f = (gamma / layout.scale) ** 0.5
        out = sum(s * f * act(s * f * t) for s in layout.signs)
        errors.append(float((out - gamma * t).abs().max()) / gamma)
    if name in ("relu", "leaky_relu", "identity"):  # piecewise linear: the pair is exactly linear
        assert errors[-1] < 1e-12
    else:
        # the remainder is O(√γ) (a quadratic term in the neuron's pre-activation): it shrinks ~10×
        # (some pairs are exactly linear: softplus(t) − softplus(−t) = t, up to round-off)
        assert errors[-1] < 1e-10 or (errors[-1] < 0.2 and errors[-1] < errors[0] / 5)
    if ACTIVATIONS[name].is_smooth_at_0:
        assert layout.signs == (1.0,)
    else:
        assert layout.signs == (1.0, -1.0)
