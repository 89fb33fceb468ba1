"""Best update of existing weights, jointly over a node's in-edges (MATH §4).

    δW* = argmin_δW (1/n)‖V − δW B‖² = Mᵀ S⁺,     gain = tr(Mᵀ S⁺ M),     Ψ = g − gain

with S = (1/n) B Bᵀ, M = (1/n) B Vᵀ, g = (1/n)‖V‖². Applying η·δW* changes the loss by
−η·gain to first order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linalg import sym_pinv_sqrt


@dataclass(frozen=True)
class BestUpdate:
    delta: torch.Tensor      # (d × D): δW* = Mᵀ S⁺
    gain: float              # tr(Mᵀ S⁺ M): first-order loss decrease per unit step
    bottleneck: float        # Ψ = g − gain: what no update of these weights can express


def best_update(S: torch.Tensor, M: torch.Tensor, g: float, rel_tol: float = 1e-10) -> BestUpdate:
    """δW* = Mᵀ S⁺ with its gain and the bottleneck Ψ (float64)."""
    M = M.double()
    if S.numel() == 0:
        return BestUpdate(M.new_zeros(M.shape[1], 0), 0.0, float(g))
    _, pinv, _ = sym_pinv_sqrt(S, rel_tol)
    delta = M.T @ pinv
    gain = float((delta * M.T).sum())
    return BestUpdate(delta, gain, max(float(g) - gain, 0.0))


def projected_moment(M: torch.Tensor, P: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """N = M − P δWᵀ = (1/n) B_U V⊥ᵀ, with P = (1/n) B_U B_inᵀ and V⊥ = V − δW B_in (MATH §5)."""
    return M.double() - P.double() @ delta.double().T
