"""A new direct edge u→v (docs/math.md §6): plain least squares of V⊥_v on B_u, no linearisation.

With S_u = (1/n) B_u B_uᵀ, N = (1/n) B_u V⊥_vᵀ and M = (1/n) B_u V_vᵀ:

    W = Nᵀ S_u⁺,    bottleneck decrease = tr(Nᵀ S_u⁺ N) = Ψ_v before − after,
    first-order gain = (1/n)⟨V_v, W B_u⟩ = tr(W M)     (M, not N: the loss sees V, not V⊥)

>>> sol = new_edge(torch.eye(2), torch.tensor([[1.0], [0.0]]), torch.tensor([[2.0], [1.0]]))
>>> sol.weight.tolist(), sol.gain, sol.first_order_gain
([[1.0, 0.0]], 1.0, 2.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linalg import Decomposition, as_float64_matrix, whitening


@dataclass(frozen=True)
class EdgeSolution:
    weight: torch.Tensor       # (d_v × D_u), bias column last when B_u has the constant row
    gain: float                # bottleneck decrease tr(Nᵀ S⁺ N)
    first_order_gain: float    # loss decrease per unit amplitude, to first order: tr(W M)


def new_edge(S: torch.Tensor, N: torch.Tensor, M: torch.Tensor, rel_tol: float = 1e-10,
             decomposition: Decomposition | None = None) -> EdgeSolution:
    """Least-squares weight W = Nᵀ S⁺ of a new edge, with its exact bottleneck decrease and
    first-order gain (float64; a singular S warns and gives the minimum-norm answer)."""
    S = as_float64_matrix("S", S)
    N = as_float64_matrix("N", N, rows=S.shape[0])
    M = as_float64_matrix("M", M, rows=S.shape[0], cols=N.shape[1])
    if S.numel() == 0:
        return EdgeSolution(N.new_zeros(N.shape[1], 0), 0.0, 0.0)
    white = decomposition if decomposition is not None else whitening(S, rel_tol)
    weight = white.solve(N).T
    return EdgeSolution(weight, float((weight * N.T).sum()), float((weight * M.T).sum()))
