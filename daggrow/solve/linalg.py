"""Symmetric pseudo-inverses with thresholds relative to the spectrum (float64).

For a symmetric positive semi-definite S = E diag(μ) Eᵀ, keep the eigenvalues μ_i > rel_tol·μ_max
(negative round-off is never kept) and return

    S⁺ = E_r diag(1/μ_r) E_rᵀ,     S^{-1/2} = E_r diag(μ_r^{-1/2}) E_rᵀ,     rank = r.

These are the minimum-norm least-squares answers when S = (1/n) B Bᵀ is singular (dead neurons,
duplicated or constant inputs); a :class:`RankDeficiencyWarning` says so.

>>> S = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
>>> inv_sqrt, pinv, rank = sym_pinv_sqrt(S, warn=False)
>>> inv_sqrt.tolist(), pinv.tolist(), rank
([[0.5, 0.0], [0.0, 0.0]], [[0.25, 0.0], [0.0, 0.0]], 1)
"""

from __future__ import annotations

import warnings

import torch

from ..errors import DaggrowError


class RankDeficiencyWarning(UserWarning):
    """A moment matrix is singular (dead neurons, duplicated or constant inputs): the
    pseudo-inverse answer is used, which is the minimum-norm least-squares solution."""


class SolverInputError(DaggrowError, ValueError):
    """The solver was given moments of the wrong shape, non-finite values or a bad option."""


def as_float64_matrix(name: str, x: torch.Tensor, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    """``x`` as a finite float64 matrix, checking its shape; a clear :class:`SolverInputError` otherwise."""
    if not isinstance(x, torch.Tensor):
        raise SolverInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise SolverInputError(f"{name} must be a matrix, got shape {tuple(x.shape)}")
    if (rows is not None and x.shape[0] != rows) or (cols is not None and x.shape[1] != cols):
        want = f"({'?' if rows is None else rows} × {'?' if cols is None else cols})"
        raise SolverInputError(f"{name} has shape {tuple(x.shape)}, expected {want}: the moment blocks "
                               "must stack the same sources (rows) and targets (columns)")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise SolverInputError(f"{name} has NaN or infinite entries: check the data and the loss "
                               "(statistics must be finite before solving)")
    return x


def psd_eigh(S: torch.Tensor, rel_tol: float = 1e-10, warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept part ``(μ_r, E_r)`` of the eigendecomposition of a symmetric PSD ``S``.

    μ_r (r,) are the eigenvalues above ``rel_tol · μ_max`` (ascending), E_r (D × r) their
    orthonormal eigenvectors. Warns with :class:`RankDeficiencyWarning` when r < D.
    """
    S = as_float64_matrix("S", S)
    D = S.shape[0]
    if S.shape[1] != D:
        raise SolverInputError(f"S must be square, got shape {tuple(S.shape)}")
    if D == 0:
        return S.new_zeros(0), S.new_zeros(0, 0)
    evals, evecs = torch.linalg.eigh((S + S.T) / 2)
    top = float(evals[-1])
    keep = evals > rel_tol * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    rank = int(keep.sum())
    if warn and rank < D:
        warnings.warn(f"moment matrix of size {D} has rank {rank} (relative tolerance {rel_tol:g}): using "
                      "the pseudo-inverse (dead neurons, duplicated or constant inputs)",
                      RankDeficiencyWarning, stacklevel=4)
    return evals[keep], evecs[:, keep]


Decomposition = tuple[torch.Tensor, torch.Tensor, int]  # (S^{-1/2}, S⁺, rank), as sym_pinv_sqrt returns


def sym_pinv_sqrt(S: torch.Tensor, rel_tol: float = 1e-10, warn: bool = True) -> Decomposition:
    """``(S^{-1/2}, S⁺, rank)`` of a symmetric positive semi-definite S, all float64.

    Eigenvalues below ``rel_tol · λ_max`` (and negative round-off) count as zero; a
    :class:`RankDeficiencyWarning` is issued when rank < D (unless ``warn=False``).
    """
    mu, E = psd_eigh(S, rel_tol, warn)
    inv_sqrt = (E * mu.rsqrt()) @ E.T
    pinv = (E / mu) @ E.T
    return inv_sqrt, pinv, int(mu.numel())
