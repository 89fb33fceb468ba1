"""Symmetric pseudo-inverses with thresholds relative to the spectrum (float64)."""

from __future__ import annotations

import warnings

import torch


class RankDeficiencyWarning(UserWarning):
    """A moment matrix is singular (dead neurons, duplicated or constant inputs): the
    pseudo-inverse answer is used, which is the minimum-norm least-squares solution."""


def sym_pinv_sqrt(S: torch.Tensor, rel_tol: float = 1e-10, warn: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(S^{-1/2}, S⁺, rank)`` of a symmetric positive semi-definite S.

    Eigenvalues below ``rel_tol · λ_max`` (and negative round-off) count as zero.
    """
    S = S.double()
    if S.numel() == 0:
        return S.clone(), S.clone(), 0
    S = (S + S.T) / 2
    evals, evecs = torch.linalg.eigh(S)
    top = float(evals.max()) if evals.numel() else 0.0
    keep = evals > rel_tol * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    rank = int(keep.sum())
    if warn and rank < S.shape[0]:
        warnings.warn(f"moment matrix of size {S.shape[0]} has rank {rank}: using the pseudo-inverse "
                      "(dead neurons, duplicated or constant inputs)", RankDeficiencyWarning, stacklevel=3)
    V = evecs[:, keep]
    lam = evals[keep]
    inv_sqrt = (V / lam.sqrt()) @ V.T
    pinv = (V / lam) @ V.T
    return inv_sqrt, pinv, rank
