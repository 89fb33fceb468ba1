"""Best update of existing weights, jointly over a node's in-edges (docs/math.md §4).

    δW* = argmin_δW (1/n)‖V − δW B‖² = Mᵀ S⁺,     gain = tr(Mᵀ S⁺ M),     Ψ = g − gain

with S = (1/n) B Bᵀ (D × D), M = (1/n) B Vᵀ (D × d), g = (1/n)‖V‖²_F. B stacks the augmented
inputs of all the in-edges (the constant row, if any, is part of B). Applying η·δW* changes the
loss by −η·gain to first order; Ψ = (1/n)‖V − δW* B‖² is the expressivity bottleneck.

>>> S = torch.eye(2); M = torch.tensor([[1.0], [2.0]])
>>> sol = best_update(S, M, g=6.0)
>>> sol.delta.tolist(), sol.gain, sol.bottleneck
([[1.0, 2.0]], 5.0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linalg import Decomposition, as_float64_matrix, whitening


@dataclass(frozen=True)
class BestUpdate:
    """δW* with its first-order gain and the bottleneck that remains."""

    delta: torch.Tensor      # (d × D): δW* = Mᵀ S⁺, columns aligned with the rows of B
    gain: float              # tr(Mᵀ S⁺ M): first-order loss decrease per unit step η
    bottleneck: float        # Ψ = g − gain ≥ 0: what no update of these weights can express

    def residual_moment(self, M_UT: torch.Tensor, P_U_in: torch.Tensor) -> torch.Tensor:
        """N = M_{U,T} − P_{U,in} δW*ᵀ = (1/n) B_U V⊥ᵀ for one target (see :func:`projected_moment`)."""
        return projected_moment(M_UT, P_U_in, self.delta)


def bottleneck_value(g: float, gain: float) -> float:
    """Ψ = g − gain, clipped at 0 (float round-off can make it slightly negative at a perfect fit)."""
    return max(float(g) - float(gain), 0.0)


def best_update(S: torch.Tensor, M: torch.Tensor, g: float, rel_tol: float = 1e-10,
                decomposition: Decomposition | None = None) -> BestUpdate:
    """δW* = Mᵀ S⁺ with its gain tr(Mᵀ S⁺ M) and the bottleneck Ψ = g − gain (float64).

    A singular S (rank < D) warns with :class:`RankDeficiencyWarning` and gives the minimum-norm
    least-squares δW*; eigenvalues of S below ``rel_tol·λ_max`` count as zero. ``decomposition``:
    ``whitening(S, rel_tol)`` when the caller already has it (it is not recomputed).
    """
    S = as_float64_matrix("S", S)
    M = as_float64_matrix("M", M, rows=S.shape[0])
    if S.numel() == 0:
        return BestUpdate(M.new_zeros(M.shape[1], 0), 0.0, bottleneck_value(g, 0.0))
    white = decomposition if decomposition is not None else whitening(S, rel_tol)
    delta = white.solve(M).T
    gain = float((delta * M.T).sum())
    return BestUpdate(delta, gain, bottleneck_value(g, gain))


def projected_moment(M_UT: torch.Tensor, P_U_in: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """N = M_{U,T} − P_{U,in} δWᵀ = (1/n) B_U (V − δW B_in)ᵀ (docs/math.md §5), float64.

    ``M_UT`` = (1/n) B_U Vᵀ (D_U × d), ``P_U_in`` = (1/n) B_U B_inᵀ (D_U × D_in) and ``delta`` the
    best update δW (d × D_in) of the target whose in-edges stack into B_in. Call it once per
    target block and concatenate the columns for several targets.
    """
    M_UT = as_float64_matrix("M_UT", M_UT)
    delta = as_float64_matrix("delta", delta, rows=M_UT.shape[1])
    P_U_in = as_float64_matrix("P_U_in", P_U_in, rows=M_UT.shape[0], cols=delta.shape[1])
    return M_UT - P_U_in @ delta.T
