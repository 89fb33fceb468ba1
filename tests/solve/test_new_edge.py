"""new_edge: W = Nᵀ S_u⁺ is lstsq of V⊥_v on B_u; the bottleneck drops by tr(Nᵀ S⁺ N); the
first-order loss gain is (1/n)⟨V_v, W B_u⟩ = tr(W M) (V, not V⊥)."""

from __future__ import annotations

import pytest
import torch

from daggrow.solve import RankDeficiencyWarning, SolverInputError, new_edge

from .reference import F64, energy, features, inner, lstsq_update, ones, targets


def edge_problem(seed: int, dead: bool = False, n: int = 250):
    """u → v where v already reads w: V⊥_v = V_v − δW* B_w, and B_u = [h_u; 1]."""
    gen = torch.Generator().manual_seed(seed)
    h_u, h_w = features(n, 4, gen), features(n, 3, gen)
    if dead:
        h_u = torch.cat([h_u, torch.zeros(1, n, dtype=F64)])
    B_u, B_w = torch.cat([h_u, ones(n)]), torch.cat([h_w, ones(n)])
    V = targets(torch.cat([h_u, h_w]), 3, gen)
    Vp = V - lstsq_update(B_w, V) @ B_w
    return B_u, V, Vp


def test_new_edge_is_least_squares_of_the_residual():
    torch.manual_seed(0)
    B, V, Vp = edge_problem(0)
    n = B.shape[1]
    sol = new_edge(B @ B.T / n, B @ Vp.T / n, B @ V.T / n)
    torch.testing.assert_close(sol.weight, lstsq_update(B, Vp), rtol=1e-9, atol=1e-10)
    assert sol.weight.shape == (3, 5) and sol.weight.dtype == F64
    assert sol.gain == pytest.approx(energy(Vp) - energy(Vp - sol.weight @ B), rel=1e-9)
    assert sol.first_order_gain == pytest.approx(inner(V, sol.weight @ B), rel=1e-9)
    assert abs(sol.first_order_gain - sol.gain) > 1e-3 * sol.gain   # the cross term with δW* is real


def test_new_edge_with_a_dead_source_neuron():
    B, V, Vp = edge_problem(1, dead=True)
    n = B.shape[1]
    with pytest.warns(RankDeficiencyWarning):
        sol = new_edge(B @ B.T / n, B @ Vp.T / n, B @ V.T / n)
    torch.testing.assert_close(sol.weight, Vp @ torch.linalg.pinv(B), rtol=1e-8, atol=1e-9)
    assert float(sol.weight[:, 4].abs().max()) < 1e-12
    assert sol.gain == pytest.approx(energy(Vp) - energy(Vp - sol.weight @ B), rel=1e-8)


def test_new_edge_with_nothing_to_gain_and_bad_shapes():
    B, V, _ = edge_problem(2)
    n = B.shape[1]
    S, zero = B @ B.T / n, torch.zeros(5, 3, dtype=F64)
    sol = new_edge(S, zero, zero)
    assert sol.gain == 0.0 and sol.first_order_gain == 0.0 and torch.count_nonzero(sol.weight) == 0
    with pytest.raises(SolverInputError, match="expected"):
        new_edge(S, zero, torch.zeros(5, 2))
