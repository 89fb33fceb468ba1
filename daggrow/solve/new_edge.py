"""A new direct edge u→v (MATH §5): plain least squares of V⊥_v on B_u, no linearisation.

    W = Nᵀ S_u⁺,   bottleneck decrease = tr(Nᵀ S_u⁺ N),   first-order gain = tr(W M) = (1/n)⟨V_v, W B_u⟩
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linalg import sym_pinv_sqrt


@dataclass(frozen=True)
class EdgeSolution:
    weight: torch.Tensor       # (d_v × D_u), bias column last when B_u has the constant row
    gain: float                # bottleneck decrease tr(Nᵀ S⁺ N)
    first_order_gain: float    # loss decrease per unit amplitude, to first order


def new_edge(S: torch.Tensor, N: torch.Tensor, M: torch.Tensor, rel_tol: float = 1e-10) -> EdgeSolution:
    """Least-squares weight of a new edge, with its exact bottleneck decrease and first-order gain."""
    _, pinv, _ = sym_pinv_sqrt(S, rel_tol)
    weight = N.double().T @ pinv
    return EdgeSolution(weight, float((weight * N.double().T).sum()), float((weight * M.double().T).sum()))
