"""TINY neurons against explicit data: the bottleneck drop (1/n)‖V⊥‖² − (1/n)‖V⊥ − Ω Aᵀ B‖² and
(1/n)⟨V⊥, Ω Aᵀ B⟩ both equal Σλ²; λ equals the Eckart–Young reference; no rank-K rival does
better; first_order_gain = (1/n)⟨V, Ω Aᵀ B⟩ (V, not V⊥). Then GradMax, NORTH, random, zero."""

from __future__ import annotations

import warnings

import pytest
import torch

from daggrow.solve import (
    INITS,
    RankDeficiencyWarning,
    SolverInputError,
    best_update,
    gradmax_neurons,
    north_neurons,
    projected_moment,
    random_neurons,
    solve_neurons,
    tiny_neurons,
    zero_neurons,
)

from .reference import F64, energy, features, inner, lstsq_update, moments, ones, reduced_rank_values, targets


def residual(Vp: torch.Tensor, B: torch.Tensor, A: torch.Tensor, O: torch.Tensor) -> float:
    """(1/n)‖V⊥ − Ω Aᵀ B‖²."""
    return energy(Vp - O @ (A.T @ B))


def expansion(seed: int, widths_U=(4,), widths_T=(3,), n: int = 300):
    """A candidate with sources U and targets T: returns B_U, V_T (raw moves), V⊥_T, and (S, N, M).

    Each target v has its own in-edges: the first source, a node c outside U, and the constant.
    N is assembled from moments with projected_moment, as the grower does.
    """
    gen = torch.Generator().manual_seed(seed)
    sources = [features(n, w, gen) for w in widths_U]
    outside = features(n, 3, gen)
    B_U = torch.cat(sources + [ones(n)])
    B_in = torch.cat([sources[0], outside, ones(n)])
    V_T, Vp_T, blocks = [], [], []
    for d in widths_T:
        V = targets(torch.cat(sources + [outside]), d, gen)
        upd = best_update(*moments(B_in, V))
        blocks.append(projected_moment(B_U @ V.T / n, B_U @ B_in.T / n, upd.delta))
        V_T.append(V)
        Vp_T.append(V - lstsq_update(B_in, V) @ B_in)
    V, Vp = torch.cat(V_T), torch.cat(Vp_T)
    S, M, _ = moments(B_U, V)
    N = torch.cat(blocks, 1)
    torch.testing.assert_close(N, B_U @ Vp.T / n, rtol=1e-9, atol=1e-11)
    return B_U, V, Vp, S, N, M


def check_tiny(B, V, Vp, sol, rel=1e-8):
    lam2 = float((sol.eigenvalues ** 2).sum())
    assert sol.bottleneck_decrease == pytest.approx(lam2, rel=1e-12)
    added = sol.fan_out @ (sol.fan_in.T @ B)
    assert energy(Vp) - energy(Vp - added) == pytest.approx(lam2, rel=rel)
    assert inner(Vp, added) == pytest.approx(lam2, rel=rel)
    assert sol.first_order_gain == pytest.approx(inner(V, added), rel=rel)
    k = sol.num_neurons
    torch.testing.assert_close(sol.eigenvalues, reduced_rank_values(B, Vp)[:k], rtol=1e-8, atol=1e-12)


def check_no_rival_does_better(B, Vp, sol, trials: int = 60, seed: int = 0):
    """Random rank-K rivals (random A with its best Ω) and small perturbations of the optimum."""
    gen = torch.Generator().manual_seed(seed)
    D, d, k = B.shape[0], Vp.shape[0], sol.num_neurons
    best = residual(Vp, B, sol.fan_in, sol.fan_out)
    for _ in range(trials):
        A = torch.randn(D, k, generator=gen, dtype=F64)
        O = lstsq_update(A.T @ B, Vp)                  # the best fan-out for this fan-in
        assert residual(Vp, B, A, O) >= best - 1e-12
    for eps in (1e-2, 1e-4):
        for _ in range(trials // 2):
            A = sol.fan_in + eps * torch.randn(D, k, generator=gen, dtype=F64)
            O = sol.fan_out + eps * torch.randn(d, k, generator=gen, dtype=F64)
            assert residual(Vp, B, A, O) >= best - 1e-12


@pytest.mark.parametrize("k", [1, 2, 3])
def test_tiny_one_source_one_target(k):
    torch.manual_seed(0)
    B, V, Vp, S, N, M = expansion(0)
    sol = tiny_neurons(S, N, M, k, rel_threshold=0.0)
    assert sol.fan_in.shape == (5, k) and sol.fan_out.shape == (3, k) and sol.eigenvalues.shape == (k,)
    assert tiny_neurons(S, N, M, 10, rel_threshold=0.0).num_neurons == 3     # at most min(D, d) directions
    assert sol.all_eigenvalues.shape == (3,)
    assert bool((sol.eigenvalues[:-1] >= sol.eigenvalues[1:]).all())
    check_tiny(B, V, Vp, sol)
    check_no_rival_does_better(B, Vp, sol, seed=k)


def test_tiny_several_sources_and_several_targets():
    B, V, Vp, S, N, M = expansion(1, widths_U=(3, 2, 2), widths_T=(3, 2, 4))
    sol = tiny_neurons(S, N, M, 3, rel_threshold=0.0)
    assert sol.fan_in.shape == (8, 3) and sol.fan_out.shape == (9, 3)
    check_tiny(B, V, Vp, sol)
    check_no_rival_does_better(B, Vp, sol, seed=7)
    # the cross term with δW* is real: using N instead of M would be a different (wrong) number
    assert abs(sol.first_order_gain - sol.bottleneck_decrease) > 1e-3 * sol.bottleneck_decrease


def test_tiny_without_projection_fits_the_raw_moves():
    """With N = M (no existing in-edges), TINY is reduced-rank regression of V on B."""
    gen = torch.Generator().manual_seed(2)
    H = features(200, 5, gen)
    B, V = torch.cat([H, ones(200)]), targets(H, 4, gen)
    S, M, _ = moments(B, V)
    sol = tiny_neurons(S, M, M, 4, rel_threshold=0.0)
    check_tiny(B, V, V, sol)
    full = best_update(*moments(B, V))                        # full rank K = d: the best update itself
    torch.testing.assert_close(sol.fan_out @ sol.fan_in.T, full.delta, rtol=1e-8, atol=1e-10)
    assert sol.bottleneck_decrease == pytest.approx(full.gain, rel=1e-10)


def test_number_of_neurons_follows_max_threshold_and_floor():
    S = torch.eye(4, dtype=F64)
    N = torch.zeros(4, 3, dtype=F64)
    N[0, 0], N[1, 1], N[2, 2] = 3.0, 1.0, 1e-4                 # S^{-1/2} N has singular values 3, 1, 1e-4
    assert tiny_neurons(S, N, N, 5).num_neurons == 2          # 1e-4 < 1e-3·3
    assert tiny_neurons(S, N, N, 5, rel_threshold=0.0).num_neurons == 3
    assert tiny_neurons(S, N, N, 1).num_neurons == 1
    assert tiny_neurons(S, N, N, 0).num_neurons == 0
    assert tiny_neurons(S, N, N, 5, min_decrease=2.0).num_neurons == 1    # λ² = 1 ≤ 2 is dropped
    torch.testing.assert_close(tiny_neurons(S, N, N, 5).all_eigenvalues, torch.tensor([3.0, 1.0, 1e-4], dtype=F64))
    with pytest.raises(SolverInputError, match="max_neurons"):
        tiny_neurons(S, N, N, -1)


def test_signs_are_reproducible():
    B, V, Vp, S, N, M = expansion(3, widths_T=(4,))
    a = tiny_neurons(S, N, M, 3)
    b = tiny_neurons(S.flip(0).flip(1), N.flip(0), M.flip(0), 3)  # same problem, rows permuted
    torch.testing.assert_close(a.fan_out, b.fan_out, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(a.fan_in, b.fan_in.flip(0), rtol=1e-8, atol=1e-10)
    idx = a.fan_out.abs().argmax(0)
    assert bool((a.fan_out.gather(0, idx[None]) > 0).all())


@pytest.mark.parametrize("defect", ["duplicated", "constant", "dead"])
def test_tiny_with_rank_deficient_sources(defect):
    gen = torch.Generator().manual_seed(4)
    n = 200
    H = features(n, 3, gen)
    extra = {"duplicated": H[:1], "constant": -2.0 * ones(n), "dead": torch.zeros(1, n, dtype=F64)}[defect]
    B = torch.cat([H, extra, ones(n)])
    V = targets(H, 3, gen)
    B_in = torch.cat([features(n, 2, gen), ones(n)])         # the target's own in-edges, outside U
    Vp = V - lstsq_update(B_in, V) @ B_in
    S, M, _ = moments(B, V)
    N = B @ Vp.T / n
    with pytest.warns(RankDeficiencyWarning):
        sol = tiny_neurons(S, N, M, 3, rel_threshold=0.0)
    assert sol.num_neurons == 3 and bool(torch.isfinite(sol.fan_in).all())
    check_tiny(B, V, Vp, sol)
    check_no_rival_does_better(B, Vp, sol, trials=30)
    if defect == "dead":
        assert float(sol.fan_in[3].abs().max()) < 1e-12      # the minimum-norm answer ignores dead inputs


def test_rank_caps_the_number_of_neurons():
    gen = torch.Generator().manual_seed(5)
    h = features(100, 1, gen)
    B = torch.cat([h, 2 * h, -h])                             # rank 1: one useful direction only
    V = targets(torch.cat([h, h ** 2]), 4, gen)
    S, M, _ = moments(B, V)
    with pytest.warns(RankDeficiencyWarning):
        sol = tiny_neurons(S, M, M, 4, rel_threshold=0.0)
    assert sol.num_neurons == 1
    check_tiny(B, V, V, sol)


@pytest.mark.parametrize("case", ["zero_moves", "perfect_fit", "dead_inputs"])
def test_nothing_to_gain_gives_no_neurons(case):
    gen = torch.Generator().manual_seed(6)
    H = features(80, 3, gen)
    B = torch.cat([H, ones(80)])
    V = targets(H, 2, gen)
    if case == "zero_moves":      # all-zero gradients: V = 0, so M = N = 0
        V = torch.zeros_like(V)
    if case == "dead_inputs":     # every source dead and no bias: S = 0, M = N = 0
        B = torch.zeros_like(B)
    S, M, _ = moments(B, V)
    N = M
    if case == "perfect_fit":     # after a perfect fit V⊥ is round-off (~1e-17), not exactly 0
        N = 1e-17 * torch.randn(4, 2, generator=gen, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        sol = tiny_neurons(S, N, M, 3, min_decrease=1e-12)
    results = [sol] if case == "perfect_fit" else [sol, gradmax_neurons(M, 3)]
    for s in results:
        assert s.num_neurons == 0 and s.fan_in.shape == (4, 0) and s.fan_out.shape == (2, 0)
        assert s.first_order_gain == 0.0 and s.bottleneck_decrease == 0.0 and s.eigenvalues.numel() == 0


def test_float32_inputs_give_float64_neurons():
    B, V, Vp, S, N, M = expansion(7)
    sol = tiny_neurons(S.float(), N.float(), M.float(), 2)
    assert sol.fan_in.dtype == F64 and sol.fan_out.dtype == F64
    ref = tiny_neurons(S.float().double(), N.float().double(), M.float().double(), 2)
    torch.testing.assert_close(sol.fan_in, ref.fan_in, rtol=0, atol=0)


# ---------------------------------------------------------------------------- other initialisations

def test_gradmax_fan_out_spans_the_top_singular_vectors_of_M():
    B, V, Vp, S, N, M = expansion(8, widths_U=(3, 3), widths_T=(5,))
    sol = gradmax_neurons(M, 2)
    assert torch.count_nonzero(sol.fan_in) == 0 and sol.fan_in.shape == (7, 2)
    assert sol.first_order_gain == 0.0 and sol.bottleneck_decrease == 0.0
    _, sigma, Rt = torch.linalg.svd(M, full_matrices=False)   # M = L diag(σ) Rt: rows of Rt = left s.v. of Mᵀ
    torch.testing.assert_close(sol.eigenvalues, sigma[:2])
    torch.testing.assert_close(sol.fan_out.norm(dim=0) ** 2, sigma[:2], rtol=1e-10, atol=0)
    P_sol = sol.fan_out @ torch.linalg.pinv(sol.fan_out)
    torch.testing.assert_close(P_sol, Rt[:2].T @ Rt[:2], rtol=0, atol=1e-10)   # same span
    # ω_1 maximises ‖M ω‖ / ‖ω‖ (the gradient norm of the new fan-in)
    w1 = sol.fan_out[:, 0] / sol.fan_out[:, 0].norm()
    rivals = torch.randn(5, 200, generator=torch.Generator().manual_seed(0), dtype=F64)
    rivals = rivals / rivals.norm(dim=0)
    assert float((M @ w1).norm()) >= float((M @ rivals).norm(dim=0).max())
    assert float((M @ w1).norm()) == pytest.approx(float(sigma[0]), rel=1e-12)


def test_north_pre_activations_are_orthonormal_and_orthogonal_to_the_existing_ones():
    gen = torch.Generator().manual_seed(9)
    n = 200
    B = torch.cat([features(n, 6, gen), ones(n)])
    S = B @ B.T / n
    W = torch.randn(7, 3, generator=gen, dtype=F64)           # existing fan-in (bias row last)
    sol = north_neurons(S, 4, 2, W, generator=torch.Generator().manual_seed(0))
    assert sol.fan_in.shape == (7, 2) and sol.fan_out.shape == (4, 2) and torch.count_nonzero(sol.fan_out) == 0
    new, old = sol.fan_in.T @ B, W.T @ B                      # pre-activations on the samples
    torch.testing.assert_close(new @ old.T / n, torch.zeros(2, 3, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(new @ new.T / n, torch.eye(2, dtype=F64), rtol=0, atol=1e-10)
    assert sol.first_order_gain == 0.0
    again = north_neurons(S, 4, 2, W, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.fan_in, sol.fan_in, rtol=0, atol=0)
    # K = min(max_neurons, rank S − rank S W): only 4 directions are left
    assert north_neurons(S, 4, 10, W, generator=gen).num_neurons == 4
    assert north_neurons(S, 4, 10, torch.eye(7, dtype=F64), generator=gen).num_neurons == 0
    no_existing = north_neurons(S, 4, 3, None, generator=gen)
    torch.testing.assert_close(no_existing.fan_in.T @ S @ no_existing.fan_in, torch.eye(3, dtype=F64),
                               rtol=0, atol=1e-10)


def test_north_with_dead_inputs_and_dead_existing_neurons():
    gen = torch.Generator().manual_seed(10)
    n = 120
    B = torch.cat([features(n, 3, gen), torch.zeros(1, n, dtype=F64), ones(n)])
    S = B @ B.T / n
    W = torch.cat([torch.randn(5, 1, generator=gen, dtype=F64), torch.zeros(5, 1, dtype=F64)], 1)
    with pytest.warns(RankDeficiencyWarning):
        sol = north_neurons(S, 2, 5, W, generator=gen)
    assert sol.num_neurons == 3                              # rank 4, one existing direction
    new = sol.fan_in.T @ B
    torch.testing.assert_close(new @ new.T / n, torch.eye(3, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(new @ (W.T @ B).T / n, torch.zeros(3, 2, dtype=F64), rtol=0, atol=1e-10)
    assert float(sol.fan_in[3].abs().max()) < 1e-12         # nothing on the dead input


def test_random_and_zero_neurons():
    gen = torch.Generator().manual_seed(11)
    M = torch.randn(6, 4, generator=gen, dtype=F64)
    r = random_neurons(6, 4, 3, generator=torch.Generator().manual_seed(1), scale=2.0, M=M)
    assert r.fan_in.shape == (6, 3) and r.fan_out.shape == (4, 3) and r.fan_in.dtype == F64
    assert r.first_order_gain == pytest.approx(float(torch.trace(r.fan_in.T @ M @ r.fan_out)), rel=1e-12)
    again = random_neurons(6, 4, 3, generator=torch.Generator().manual_seed(1), scale=2.0)
    torch.testing.assert_close(again.fan_in, r.fan_in, rtol=0, atol=0)
    assert again.first_order_gain == 0.0
    big = random_neurons(400, 300, 200, generator=gen, scale=2.0)    # entry variances scale²/D, scale²/K
    assert float(big.fan_in.var()) == pytest.approx(4.0 / 400, rel=0.05)
    assert float(big.fan_out.var()) == pytest.approx(4.0 / 200, rel=0.05)
    z = zero_neurons(6, 4, 2)
    assert z.fan_in.shape == (6, 2) and z.fan_out.shape == (4, 2)
    assert torch.count_nonzero(z.fan_in) + torch.count_nonzero(z.fan_out) == 0 and z.first_order_gain == 0.0


def test_dispatcher_calls_each_initialisation():
    B, V, Vp, S, N, M = expansion(12, widths_T=(3,))
    W = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    common = dict(S=S, N=N, M=M, max_neurons=2, existing_fan_in=W)
    results = {init: solve_neurons(init, **common, generator=torch.Generator().manual_seed(3)) for init in INITS}
    torch.testing.assert_close(results["tiny"].fan_in, tiny_neurons(S, N, M, 2).fan_in, rtol=0, atol=0)
    torch.testing.assert_close(results["gradmax"].fan_out, gradmax_neurons(M, 2).fan_out, rtol=0, atol=0)
    torch.testing.assert_close(results["north"].fan_in,
                               north_neurons(S, 3, 2, W, generator=torch.Generator().manual_seed(3)).fan_in,
                               rtol=0, atol=0)
    torch.testing.assert_close(results["random"].fan_in,
                               random_neurons(5, 3, 2, generator=torch.Generator().manual_seed(3)).fan_in,
                               rtol=0, atol=0)
    assert torch.count_nonzero(results["zero"].fan_in) == 0
    for sol in results.values():
        assert sol.fan_in.shape == (5, 2) and sol.fan_out.shape == (3, 2)
    with pytest.raises(SolverInputError, match="unknown init 'best'"):
        solve_neurons("best", S=S, N=N, M=M, max_neurons=1)
