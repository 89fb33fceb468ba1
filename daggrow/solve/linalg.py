"""Symmetric pseudo-inverses with thresholds relative to the spectrum (float64).

For a symmetric positive semi-definite S = E diag(μ) Eᵀ, keep the eigenvalues μ_i > rel_tol·μ_max
(negative round-off is never kept) and return

    S⁺ = E_r diag(1/μ_r) E_rᵀ,     S^{-1/2} = E_r diag(μ_r^{-1/2}) E_rᵀ,     rank = r.

These are the minimum-norm least-squares answers when S = (1/n) B Bᵀ is singular (dead neurons,
duplicated or constant inputs); a :class:`RankDeficiencyWarning` says so.

The solver does not need S^{-1/2} itself, only *a* whitening factor F (r × D) with

    F S Fᵀ = I_r,     Fᵀ F = S⁺,

since every answer is invariant under F → Q F (Q orthogonal). :func:`whitening` takes F = L⁻¹
from a float64 Cholesky factor S = L Lᵀ (D³/3 flops, about 15× cheaper than ``eigh`` at D = 785)
whenever that gives the same answer as the spectral cut — every kept eigenvalue, i.e. S well
conditioned on the coordinates with S_ii > 0 — and F = diag(μ_r^{-1/2}) E_rᵀ otherwise.

>>> S = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
>>> inv_sqrt, pinv, rank = sym_pinv_sqrt(S, warn=False)
>>> inv_sqrt.tolist(), pinv.tolist(), rank
([[0.5, 0.0], [0.0, 0.0]], [[0.25, 0.0], [0.0, 0.0]], 1)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

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
        _warn_rank(D, rank, rel_tol)
    return evals[keep], evecs[:, keep]


def sym_pinv_sqrt(S: torch.Tensor, rel_tol: float = 1e-10, warn: bool = True) -> Decomposition:
    """``(S^{-1/2}, S⁺, rank)`` of a symmetric positive semi-definite S, all float64.

    Eigenvalues below ``rel_tol · λ_max`` (and negative round-off) count as zero; a
    :class:`RankDeficiencyWarning` is issued when rank < D (unless ``warn=False``).
    """
    mu, E = psd_eigh(S, rel_tol, warn)
    inv_sqrt = (E * mu.rsqrt()) @ E.T
    pinv = (E / mu) @ E.T
    return inv_sqrt, pinv, int(mu.numel())


# Cholesky is used only when the estimate of λ_min(S) exceeds this many times the spectral cut
# rel_tol·‖S‖_F ≥ rel_tol·λ_max. The estimate is never below λ_min and, from a random start
# block, within a small factor of it after a few inverse iterations, so every eigenvalue is
# then kept by the cut (barring a start block orthogonal to the bottom eigenvectors, a
# probability-zero event) and both factors give the same answers.
CHOLESKY_MARGIN = 1e2


@dataclass(frozen=True)
class Whitening:
    """A whitening factor F (r × D) of a symmetric PSD S: F S Fᵀ = I_r and Fᵀ F = S⁺ (float64).

    ``method`` is ``"cholesky"`` (F = L⁻¹ on the coordinates with S_ii > 0, zero on the others)
    or ``"eigh"`` (F = diag(μ_r^{-1/2}) E_rᵀ, the kept eigenpairs). Apply it, never form it:

    >>> W = whitening(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
    >>> W.method, W.rank, W.solve(torch.tensor([[4.0], [1.0]])).flatten().tolist()
    ('cholesky', 2, [1.0, 1.0])
    """

    method: Literal["cholesky", "eigh"]
    rank: int
    size: int
    factor: torch.Tensor                 # cholesky: L (r × r, lower); eigh: E_r diag(μ_r^{-1/2}) (D × r)
    active: torch.Tensor | None = None   # cholesky: the r coordinates with S_ii > 0 (None: all of them)

    def whiten(self, N: torch.Tensor) -> torch.Tensor:
        """F N (r × d) for N (D × d)."""
        if self.method == "eigh":
            return self.factor.T @ N
        rows = N if self.active is None else N[self.active]
        return torch.linalg.solve_triangular(self.factor, rows, upper=False)

    def unwhiten(self, A: torch.Tensor) -> torch.Tensor:
        """Fᵀ A (D × k) for A (r × k): maps whitened directions back to fan-in weights."""
        if self.method == "eigh":
            return self.factor @ A
        out = torch.linalg.solve_triangular(self.factor.T, A, upper=True)
        if self.active is None:
            return out
        full = out.new_zeros(self.size, A.shape[1])
        full[self.active] = out
        return full

    def solve(self, M: torch.Tensor) -> torch.Tensor:
        """S⁺ M = Fᵀ F M (D × d): the minimum-norm least-squares solution."""
        return self.unwhiten(self.whiten(M))


def whitening(S: torch.Tensor, rel_tol: float = 1e-10, warn: bool = True,
              method: Literal["auto", "eigh"] = "auto") -> Whitening:
    """The :class:`Whitening` of a symmetric PSD S, float64, with the spectral cut of :func:`psd_eigh`.

    ``"auto"``: Cholesky of S restricted to the coordinates with S_ii > 0 (a dead neuron or a
    constant-zero input is exactly such a coordinate) when it succeeds and that block's estimated
    condition number is below 1/(CHOLESKY_MARGIN·rel_tol); the eigendecomposition otherwise
    (duplicated inputs, near-singular S). ``"eigh"`` always decomposes.
    """
    S = as_float64_matrix("S", S)
    D = S.shape[0]
    if S.shape[1] != D:
        raise SolverInputError(f"S must be square, got shape {tuple(S.shape)}")
    if method not in ("auto", "eigh"):
        raise SolverInputError(f"method must be 'auto' or 'eigh', got {method!r}")
    if method == "auto" and D > 0:
        found = _cholesky_whitening(S, rel_tol)
        if found is not None:
            if warn and found.rank < D:
                _warn_rank(D, found.rank, rel_tol)
            return found
    mu, E = psd_eigh(S, rel_tol, warn)
    return Whitening("eigh", int(mu.numel()), D, E * mu.rsqrt())


def _cholesky_whitening(S: torch.Tensor, rel_tol: float) -> Whitening | None:
    diag = torch.diagonal(S)
    active = diag > 0
    r = int(active.sum())
    if r == 0:
        return None
    block = S if r == S.shape[0] else S[active][:, active]
    L, info = torch.linalg.cholesky_ex((block + block.T) / 2)
    if int(info) != 0:
        return None
    low, high = _extreme_eigenvalue_estimates(block, L)
    if not low > CHOLESKY_MARGIN * rel_tol * high:
        return None
    index = None if r == S.shape[0] else active.nonzero().flatten()
    return Whitening("cholesky", r, S.shape[0], L, index)


def _extreme_eigenvalue_estimates(S: torch.Tensor, L: torch.Tensor, iterations: int = 6,
                                  block: int = 8) -> tuple[float, float]:
    """(≥ λ_min, ≥ λ_max) of S = L Lᵀ.

    λ_min: 1 / the top Rayleigh–Ritz value of S⁻¹ after block inverse iteration from a random
    block (within a small factor of the truth after a few iterations; O(D²·block) each).
    λ_max: the Frobenius norm ‖S‖_F, a guaranteed bound at most √D times too large.
    """
    r = S.shape[0]
    gen = torch.Generator(device=S.device).manual_seed(0)
    Q = torch.linalg.qr(torch.randn(r, min(block, r), generator=gen, dtype=S.dtype, device=S.device)).Q
    def inverse_times(X: torch.Tensor) -> torch.Tensor:  # S⁻¹ X by two triangular solves
        return torch.linalg.solve_triangular(L.T, torch.linalg.solve_triangular(L, X, upper=False), upper=True)

    for _ in range(iterations):
        Q = torch.linalg.qr(inverse_times(Q)).Q
    top_of_inverse = float(torch.linalg.eigvalsh(Q.T @ inverse_times(Q))[-1])
    return 1.0 / top_of_inverse, float(torch.linalg.matrix_norm(S))


def _warn_rank(D: int, rank: int, rel_tol: float) -> None:
    warnings.warn(f"moment matrix of size {D} has rank {rank} (relative tolerance {rel_tol:g}): using "
                  "the pseudo-inverse (dead neurons, duplicated or constant inputs)",
                  RankDeficiencyWarning, stacklevel=5)


Decomposition = Whitening  # what the solver functions accept as a precomputed ``decomposition``
