"""Explicit per-sample data and brute-force references for the solver tests (float64).

Data: B (D × n) stacks augmented inputs (constant row last when asked), V (d × n) desired moves.
References never use the solver's formulas: lstsq on samples, explicit residuals, and the
Eckart–Young optimum of min_rank K (1/n)‖V⊥ − X B‖², whose k-th value λ_k is the k-th singular
value of V⊥ Q / √n, with Q an orthonormal basis of the row space of B.
"""

from __future__ import annotations

import torch

F64 = torch.float64


def features(n: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """(width × n) correlated, non-centred features: a random rotation of Gaussians with scales in
    [1/e, e] (a well-conditioned covariance, so float64 references agree to ~1e-10), plus an offset."""
    Q, _ = torch.linalg.qr(torch.randn(width, width, generator=gen, dtype=F64))
    scales = torch.exp(2 * torch.rand(width, generator=gen, dtype=F64) - 1)
    Z = torch.randn(width, n, generator=gen, dtype=F64)
    return (Q * scales) @ Z + torch.randn(width, 1, generator=gen, dtype=F64)


def ones(n: int) -> torch.Tensor:
    return torch.ones(1, n, dtype=F64)


def targets(H: torch.Tensor, d: int, gen: torch.Generator) -> torch.Tensor:
    """(d × n) desired moves: a nonlinear function of the rows of H plus noise (not linear in H)."""
    W = torch.randn(d, H.shape[0], generator=gen, dtype=F64)
    return torch.tanh(W @ H) + 0.3 * (W @ H) ** 2 / H.shape[0] + 0.1 * torch.randn(d, H.shape[1], generator=gen, dtype=F64)


def moments(B: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """S = (1/n) B Bᵀ, M = (1/n) B Vᵀ, g = (1/n)‖V‖²."""
    n = B.shape[1]
    return B @ B.T / n, B @ V.T / n, float((V ** 2).sum()) / n


def energy(V: torch.Tensor) -> float:
    """(1/n)‖V‖²_F."""
    return float((V ** 2).sum()) / V.shape[1]


def inner(X: torch.Tensor, Y: torch.Tensor) -> float:
    """(1/n)⟨X, Y⟩."""
    return float((X * Y).sum()) / X.shape[1]


def lstsq_update(B: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Minimum-norm argmin_X ‖V − X B‖² on the samples (gelsd: SVD-based, rank-revealing)."""
    return torch.linalg.lstsq(B.T, V.T, driver="gelsd").solution.T


def reduced_rank_values(B: torch.Tensor, Vp: torch.Tensor) -> torch.Tensor:
    """λ_k = s_k(V⊥ Q)/√n, Q (n × r) an orthonormal basis of the row space of B (Eckart–Young).

    min_{rank X ≤ K} (1/n)‖V⊥ − X B‖² = (1/n)‖V⊥‖² − Σ_{k≤K} λ_k².
    """
    _, s, Qt = torch.linalg.svd(B, full_matrices=False)
    r = int((s > 1e-10 * s[0]).sum())
    return torch.linalg.svdvals(Vp @ Qt[:r].T) / B.shape[1] ** 0.5
