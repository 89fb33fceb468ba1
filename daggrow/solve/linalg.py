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

**Never a raw LinAlgError.** Every factorisation runs on the *active* coordinates only (the rows
of S with a nonzero entry: a dead neuron, a padding tap that no sample reaches), and the results
are scattered back with zeros, which is exactly the full-S answer since S⁺ is zero on those rows.
When a factorisation still fails, :func:`stable_eigh` retries with a jitter δI (δ subtracted back
from the eigenvalues: the eigenvectors of S + δI are those of S), then as an SVD; only if all
three fail does a :class:`~daggrow.errors.SolverError` name the matrix (``propose`` skips that
candidate).

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

from ..errors import DaggrowError, SolverError


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


def active_coordinates(S: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows of ``S`` with a nonzero entry; ``None`` when every row has one."""
    nonzero = (S != 0).any(1)
    if bool(nonzero.all()):
        return None
    return nonzero.nonzero().flatten()


def _block(S: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return S if index is None else S[index][:, index]


def _scatter_rows(X: torch.Tensor, index: torch.Tensor | None, size: int) -> torch.Tensor:
    """X (len(index) × k) placed at rows ``index`` of a zero (size × k) matrix."""
    if index is None:
        return X
    out = X.new_zeros(size, X.shape[1])
    out[index] = X
    return out


JITTER = 1e-10  # relative to max |S_ii|: the shift of the second eigh attempt


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def stable_eigh(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ ascending, E) with S = E diag(μ) Eᵀ for a symmetric float64 S, never a raw LinAlgError.

    Tries ``eigh(S)``; then ``eigh(S + δI)`` with δ = JITTER·max|S_ii| and μ = its eigenvalues − δ
    (same eigenvectors); then the SVD S = U Σ Vᵀ, which for a PSD S is its eigendecomposition
    (μ = σ ascending, E = U; a negative round-off eigenvalue comes back as |μ|, below any cut).
    Raises :class:`SolverError` when all three fail or give non-finite values.
    """
    S = (S + S.T) / 2
    D = S.shape[0]
    attempts = []
    try:
        evals, evecs = torch.linalg.eigh(S)
        if _finite(evals):  # a NaN anywhere in a failed eigh shows in the eigenvalues
            return evals, evecs
        attempts.append("eigh: non-finite result")
    except torch.linalg.LinAlgError as err:
        attempts.append(f"eigh: {err}".splitlines()[0])
    except torch.OutOfMemoryError:
        raise SolverError(_no_memory(D)) from None
    delta = JITTER * float(torch.diagonal(S).abs().max()) if D else 0.0
    try:
        evals, evecs = torch.linalg.eigh(S + delta * torch.eye(D, dtype=S.dtype, device=S.device))
        if _finite(evals):
            return evals - delta, evecs
        attempts.append("eigh with jitter: non-finite result")
    except torch.linalg.LinAlgError as err:
        attempts.append(f"eigh with jitter {delta:.3g}: {err}".splitlines()[0])
    try:
        U, sigma, _ = torch.linalg.svd(S)
        if _finite(U, sigma):
            return sigma.flip(0), U.flip(1)
        attempts.append("svd: non-finite result")
    except torch.linalg.LinAlgError as err:
        attempts.append(f"svd: {err}".splitlines()[0])
    raise SolverError(f"could not factorise a {D}×{D} moment matrix ({'; '.join(attempts)}): its entries "
                      "are probably badly scaled (values spanning many orders of magnitude); normalise the "
                      "inputs or the activations (e.g. BatchNorm) and grow again")


def stable_svd(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD X = U diag(σ) Vᵀ (σ descending), returned as (U, σ, Vᵀ), never a raw LinAlgError.

    Falls back to the eigendecomposition of the smaller Gram matrix (XᵀX = V Σ² Vᵀ, U = X V / σ,
    zero columns where σ = 0) through :func:`stable_eigh`, else raises :class:`SolverError`.
    """
    try:
        U, sigma, Vt = torch.linalg.svd(X, full_matrices=False)
        if _finite(U, sigma, Vt):
            return U, sigma, Vt
    except torch.linalg.LinAlgError:
        pass
    except torch.OutOfMemoryError:
        raise SolverError(_no_memory(max(X.shape))) from None
    wide = X.shape[0] < X.shape[1]
    Y = X.T if wide else X                                  # tall: rows ≥ columns
    evals, V = stable_eigh(Y.T @ Y)
    sigma = evals.clamp_min(0).sqrt().flip(0)
    V = V.flip(1)
    scale = torch.where(sigma > 0, 1 / sigma, torch.zeros_like(sigma))
    U = (Y @ V) * scale
    return (V, sigma, U.T) if wide else (U, sigma, V.T)


def _no_memory(D: int) -> str:
    return (f"not enough memory to factorise a {D}×{D} moment matrix: lower the statistics plan's size "
            "with memory_budget= (or --memory-budget), which reads large sources through pooled views")


def psd_eigh(S: torch.Tensor, rel_tol: float = 1e-10, warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept part ``(μ_r, E_r)`` of the eigendecomposition of a symmetric PSD ``S``.

    μ_r (r,) are the eigenvalues above ``rel_tol · μ_max`` (ascending), E_r (D × r) their
    orthonormal eigenvectors. Warns with :class:`RankDeficiencyWarning` when r < D. Only the
    active coordinates are decomposed (:func:`active_coordinates`; E_r is zero on the others).
    """
    S = as_float64_matrix("S", S)
    D = S.shape[0]
    if S.shape[1] != D:
        raise SolverInputError(f"S must be square, got shape {tuple(S.shape)}")
    mu, E, index = _kept_eigenpairs(S, rel_tol)
    if warn and mu.numel() < D:
        _warn_rank(D, int(mu.numel()), rel_tol)
    return mu, _scatter_rows(E, index, D)


def _kept_eigenpairs(S: torch.Tensor, rel_tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(μ_r, E_r on the active coordinates, their index) of a square float64 S."""
    D = S.shape[0]
    index = active_coordinates(S) if D else None
    block = _block(S, index)
    if block.shape[0] == 0:
        return S.new_zeros(0), S.new_zeros(0, 0), index
    evals, evecs = stable_eigh(block)
    top = float(evals[-1])
    keep = evals > rel_tol * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    return evals[keep], evecs[:, keep], index


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

    ``method`` is ``"cholesky"`` (F = L⁻¹) or ``"eigh"`` (F = diag(μ_r^{-1/2}) E_rᵀ, the kept
    eigenpairs), both on the ``active`` coordinates (zero on the others). Apply it, never form it:

    >>> W = whitening(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
    >>> W.method, W.rank, W.solve(torch.tensor([[4.0], [1.0]])).flatten().tolist()
    ('cholesky', 2, [1.0, 1.0])
    """

    method: Literal["cholesky", "eigh"]
    rank: int
    size: int
    factor: torch.Tensor                 # cholesky: L (a × a, lower); eigh: E_r diag(μ_r^{-1/2}) (a × r)
    active: torch.Tensor | None = None   # the a coordinates with a nonzero row of S (None: all of them)

    def whiten(self, N: torch.Tensor) -> torch.Tensor:
        """F N (r × d) for N (D × d)."""
        rows = N if self.active is None else N[self.active]
        if self.method == "eigh":
            return self.factor.T @ rows
        return torch.linalg.solve_triangular(self.factor, rows, upper=False)

    def unwhiten(self, A: torch.Tensor) -> torch.Tensor:
        """Fᵀ A (D × k) for A (r × k): maps whitened directions back to fan-in weights."""
        if self.method == "eigh":
            out = self.factor @ A
        else:
            out = torch.linalg.solve_triangular(self.factor.T, A, upper=True)
        return _scatter_rows(out, self.active, self.size)

    def solve(self, M: torch.Tensor) -> torch.Tensor:
        """S⁺ M = Fᵀ F M (D × d): the minimum-norm least-squares solution."""
        return self.unwhiten(self.whiten(M))


def whitening(S: torch.Tensor, rel_tol: float = 1e-10, warn: bool = True,
              method: Literal["auto", "eigh"] = "auto") -> Whitening:
    """The :class:`Whitening` of a symmetric PSD S, float64, with the spectral cut of :func:`psd_eigh`.

    Both methods work on the active coordinates (rows of S with a nonzero entry; a dead neuron,
    a constant-zero input or a padding tap is not one). ``"auto"``: Cholesky of that block when it
    succeeds and its estimated condition number is below 1/(CHOLESKY_MARGIN·rel_tol); the
    eigendecomposition (:func:`stable_eigh`) otherwise (duplicated inputs, near-singular S).
    ``"eigh"`` always decomposes.
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
    mu, E, index = _kept_eigenpairs(S, rel_tol)
    if warn and mu.numel() < D:
        _warn_rank(D, int(mu.numel()), rel_tol)
    return Whitening("eigh", int(mu.numel()), D, E * mu.rsqrt(), index)


def _cholesky_whitening(S: torch.Tensor, rel_tol: float) -> Whitening | None:
    index = active_coordinates(S)
    block = _block(S, index)
    if block.shape[0] == 0 or not bool((torch.diagonal(block) > 0).all()):
        return None  # nothing active, or a zero diagonal with a nonzero row: not PSD, decompose
    try:
        L, info = torch.linalg.cholesky_ex((block + block.T) / 2)
        if int(info) != 0 or not _finite(L):
            return None
        low, high = _extreme_eigenvalue_estimates(block, L)
    except torch.linalg.LinAlgError:  # the estimate's QR/eigvalsh: leave it to the eigh path
        return None
    if not low > CHOLESKY_MARGIN * rel_tol * high:
        return None
    return Whitening("cholesky", block.shape[0], S.shape[0], L, index)


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
