"""best_update (δW* = Mᵀ S⁺, gain = tr(Mᵀ S⁺ M), Ψ = g − gain) and projected_moment
(N = M_{U,T} − P_{U,in} δWᵀ) against lstsq and explicit residuals on per-sample data."""

from __future__ import annotations

import warnings

import pytest
import torch

from daggrow.solve import (
    RankDeficiencyWarning,
    SolverInputError,
    best_update,
    bottleneck_value,
    projected_moment,
)

from .reference import F64, energy, features, lstsq_update, moments, ones, targets


def check_against_samples(B: torch.Tensor, V: torch.Tensor, rtol: float = 1e-9) -> None:
    """δW* = lstsq solution; gain = (1/n)‖V‖² − (1/n)‖V − δW* B‖²; Ψ = (1/n)‖V − δW* B‖²."""
    S, M, g = moments(B, V)
    sol = best_update(S, M, g)
    torch.testing.assert_close(sol.delta, lstsq_update(B, V), rtol=rtol, atol=rtol)
    residual = energy(V - sol.delta @ B)
    assert sol.bottleneck == pytest.approx(residual, rel=rtol)
    assert sol.gain == pytest.approx(energy(V) - residual, rel=rtol)
    assert sol.gain > 0 and sol.bottleneck > 0


def test_single_in_edge_equals_lstsq():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    H = features(200, 5, gen)
    B = torch.cat([H, ones(200)])
    V = targets(H, 4, gen)
    S, M, g = moments(B, V)
    sol = best_update(S, M, g)
    torch.testing.assert_close(sol.delta, torch.linalg.lstsq(B.T, V.T).solution.T, rtol=1e-9, atol=1e-9)
    check_against_samples(B, V)


def test_three_in_edges_stacked_with_a_constant_row():
    gen = torch.Generator().manual_seed(1)
    n = 300
    blocks = [features(n, w, gen) for w in (3, 2, 4)]
    B = torch.cat(blocks + [ones(n)])
    V = targets(torch.cat(blocks), 5, gen)
    check_against_samples(B, V)
    # the joint update is not the sum of per-edge updates (the in-edges are correlated)
    S, M, g = moments(B, V)
    joint = best_update(S, M, g).delta[:, :3]
    alone = best_update(*moments(torch.cat([blocks[0], ones(n)]), V)).delta[:, :3]
    assert float((joint - alone).abs().max()) > 1e-3


def test_float32_moments_give_float64_answers():
    gen = torch.Generator().manual_seed(2)
    H = features(100, 3, gen)
    B, V = torch.cat([H, ones(100)]), targets(H, 2, gen)
    S, M, g = moments(B, V)
    sol = best_update(S.float(), M.float(), g)
    assert sol.delta.dtype == F64 and isinstance(sol.gain, float)
    torch.testing.assert_close(sol.delta, best_update(S.float().double(), M.float().double(), g).delta,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("defect", ["duplicated", "constant", "dead"])
def test_rank_deficient_inputs_warn_and_match_the_minimum_norm_reference(defect):
    gen = torch.Generator().manual_seed(3)
    n = 150
    H = features(n, 4, gen)
    V = targets(H, 3, gen)
    extra = {"duplicated": H[1:2], "constant": 3.0 * ones(n), "dead": torch.zeros(1, n, dtype=F64)}[defect]
    B = torch.cat([H[:2], extra, H[2:], ones(n)])
    S, M, g = moments(B, V)
    with pytest.warns(RankDeficiencyWarning, match="rank 5"):
        sol = best_update(S, M, g)
    torch.testing.assert_close(sol.delta, V @ torch.linalg.pinv(B), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(sol.delta, lstsq_update(B, V), rtol=1e-8, atol=1e-8)
    residual = energy(V - sol.delta @ B)
    assert sol.bottleneck == pytest.approx(residual, rel=1e-8)
    assert sol.gain == pytest.approx(energy(V) - residual, rel=1e-8)
    if defect == "dead":
        assert float(sol.delta[:, 2].abs().max()) < 1e-12  # nothing is put on a dead input


def test_perfect_fit_and_zero_moves():
    gen = torch.Generator().manual_seed(4)
    H = features(60, 3, gen)
    B = torch.cat([H, ones(60)])
    W = torch.randn(2, 4, generator=gen, dtype=F64)
    sol = best_update(*moments(B, W @ B))                           # V is exactly linear in B
    torch.testing.assert_close(sol.delta, W, rtol=1e-10, atol=1e-10)
    assert 0.0 <= sol.bottleneck < 1e-10 * energy(W @ B)
    zero = best_update(*moments(B, torch.zeros(2, 60, dtype=F64)))
    assert zero.gain == 0.0 and zero.bottleneck == 0.0 and torch.count_nonzero(zero.delta) == 0
    empty = best_update(torch.zeros(0, 0), torch.zeros(0, 2), 1.5)  # a node with no linear in-edge
    assert empty.delta.shape == (2, 0) and empty.gain == 0.0 and empty.bottleneck == 1.5
    assert bottleneck_value(2.0, 0.5) == 1.5 and bottleneck_value(1.0, 1.0 + 1e-15) == 0.0


def test_projected_moment_is_the_moment_of_the_residual_per_target_block():
    """N = (1/n) B_U V⊥ᵀ with V⊥_v = V_v − δW_v* B_in(v), block by block for two targets."""
    gen = torch.Generator().manual_seed(5)
    n = 250
    h_a, h_b, h_c = features(n, 3, gen), features(n, 2, gen), features(n, 4, gen)
    B_U = torch.cat([h_a, h_b, ones(n)])                         # fan-in sources of the new neurons
    ins = {"v1": torch.cat([h_a, ones(n)]), "v2": torch.cat([h_b, h_c, ones(n)])}
    Vs = {"v1": targets(torch.cat([h_a, h_c]), 3, gen), "v2": targets(torch.cat([h_a, h_b]), 2, gen)}
    blocks, residuals = [], []
    for v in ("v1", "v2"):
        S_in, M_in, g = moments(ins[v], Vs[v])
        upd = best_update(S_in, M_in, g)
        M_UT = B_U @ Vs[v].T / n
        P_U_in = B_U @ ins[v].T / n
        blocks.append(projected_moment(M_UT, P_U_in, upd.delta))
        torch.testing.assert_close(upd.residual_moment(M_UT, P_U_in), blocks[-1], rtol=0, atol=0)
        residuals.append(Vs[v] - lstsq_update(ins[v], Vs[v]) @ ins[v])
    N = torch.cat(blocks, 1)
    torch.testing.assert_close(N, B_U @ torch.cat(residuals).T / n, rtol=1e-9, atol=1e-11)
    # V⊥ is orthogonal to each target's own inputs: the rows of B_U that are in-sources see N = 0
    torch.testing.assert_close(N[:3, :3], torch.zeros(3, 3, dtype=F64), rtol=0, atol=1e-11)
    torch.testing.assert_close(N[3:5, 3:], torch.zeros(2, 2, dtype=F64), rtol=0, atol=1e-11)


def test_shape_mismatches_raise_clear_errors():
    with pytest.raises(SolverInputError, match="expected"):
        best_update(torch.eye(3), torch.zeros(4, 2), 1.0)
    with pytest.raises(SolverInputError, match="P_U_in"):
        projected_moment(torch.zeros(3, 2), torch.zeros(3, 5), torch.zeros(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        best_update(torch.eye(3), torch.zeros(3, 2), 0.0)
