"""New neurons for an expansion with fan-in sources U and targets T (MATH §5).

TINY (default): with S = (1/n) B_U B_Uᵀ and N = (1/n) B_U V⊥_Tᵀ,

    S^{-1/2} N = Σ_k λ_k a_k c_kᵀ (SVD),   α_k = √λ_k S^{-1/2} a_k,   ω_k = √λ_k c_k

minimises (1/n)‖V⊥_T − Ω Aᵀ B_U‖² at rank K; the bottleneck drops by Σ_{k≤K} λ_k², and the
loss changes by −γ Σ_k α_kᵀ M ω_k to first order at amplitude γ (M, not N).

Other initialisations, same return type: GradMax (fan-in 0, fan-out from the top singular
vectors of M), NORTH-style (fan-out 0, fan-in orthogonal to the existing pre-activations),
random, zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .linalg import sym_pinv_sqrt

Init = Literal["tiny", "gradmax", "north", "random", "zero"]
INITS: tuple[str, ...] = ("tiny", "gradmax", "north", "random", "zero")


@dataclass(frozen=True)
class NeuronSolution:
    fan_in: torch.Tensor            # (D × K): column k is α_k
    fan_out: torch.Tensor           # (d × K): column k is ω_k
    eigenvalues: torch.Tensor       # (K,): λ_1 ≥ … ≥ λ_K of the kept directions
    all_eigenvalues: torch.Tensor   # the whole spectrum
    first_order_gain: float         # Σ_k α_kᵀ M ω_k
    bottleneck_decrease: float      # Σ_k λ_k² (TINY); 0 for the others


def _count(values: torch.Tensor, max_neurons: int, rel_threshold: float, min_square: float = 0.0) -> int:
    """Directions with value > rel_threshold·value_1 and value² > min_square, at most max_neurons."""
    if values.numel() == 0 or float(values[0]) <= 0:
        return 0
    keep = (values > rel_threshold * values[0]) & (values ** 2 > min_square)
    return int(min(max_neurons, int(keep.sum())))


def tiny_neurons(S: torch.Tensor, N: torch.Tensor, M: torch.Tensor, max_neurons: int, *,
                 rel_threshold: float = 1e-3, rel_tol: float = 1e-10, min_decrease: float = 0.0) -> NeuronSolution:
    """The TINY neurons; K = min(max_neurons, #{λ_k > rel_threshold·λ_1 and λ_k² > min_decrease}).

    ``min_decrease`` is an absolute floor on a direction's bottleneck decrease λ_k²: pass a tiny
    fraction of (1/n)‖V_T‖² so that round-off directions (N ≈ 0) are not proposed.
    """
    S, N, M = S.double(), N.double(), M.double()
    inv_sqrt, _, _ = sym_pinv_sqrt(S, rel_tol)
    a, lam, ct = torch.linalg.svd(inv_sqrt @ N, full_matrices=False)
    # drop round-off directions: singular values relative to the largest
    if lam.numel() and float(lam[0]) > 0:
        lam = torch.where(lam > 1e-12 * lam[0], lam, torch.zeros_like(lam))
    k = _count(lam, max_neurons, rel_threshold, min_decrease)
    root = lam[:k].sqrt()
    fan_in = inv_sqrt @ a[:, :k] * root
    fan_out = ct[:k].T * root
    gain = float(((fan_in.T @ M) * fan_out.T).sum())
    return NeuronSolution(fan_in, fan_out, lam[:k].clone(), lam, gain, float((lam[:k] ** 2).sum()))


def gradmax_neurons(M: torch.Tensor, max_neurons: int, *, rel_threshold: float = 1e-3,
                    min_square: float = 0.0) -> NeuronSolution:
    """GradMax: fan-in 0; fan-out = top-K singular directions of Mᵀ (d × D), scaled by √σ_k."""
    M = M.double()
    _, sigma, vt = torch.linalg.svd(M, full_matrices=False)  # M = U diag(σ) Vᵀ, Vᵀ rows live in R^d
    k = _count(sigma, max_neurons, rel_threshold, min_square)
    fan_out = vt[:k].T * sigma[:k].sqrt()
    return NeuronSolution(M.new_zeros(M.shape[0], k), fan_out, sigma[:k].clone(), sigma, 0.0, 0.0)


def north_neurons(S: torch.Tensor, d_out: int, max_neurons: int, existing_fan_in: torch.Tensor | None = None, *,
                  generator: torch.Generator | None = None, rel_tol: float = 1e-10) -> NeuronSolution:
    """NORTH-style: fan-out 0; random fan-in whose pre-activations αᵀB are orthogonal to the
    existing ones (αᵀ S W = 0 for the existing fan-in W), normalised to αᵀ S α = 1."""
    S = S.double()
    D = S.shape[0]
    alpha = torch.randn(D, max_neurons, generator=generator, dtype=torch.float64)
    if existing_fan_in is not None and existing_fan_in.numel():
        C = S @ existing_fan_in.double()                      # constraints: αᵀ C = 0
        q, r = torch.linalg.qr(C)
        rank = int((r.diagonal().abs() > rel_tol * r.diagonal().abs().max().clamp_min(1e-300)).sum())
        q = q[:, :rank]
        alpha = alpha - q @ (q.T @ alpha)
    norms = ((alpha * (S @ alpha)).sum(0)).clamp_min(0).sqrt()
    keep = norms > 1e-12 * max(float(norms.max()) if norms.numel() else 0.0, 1e-300)
    alpha = alpha[:, keep] / norms[keep]
    k = alpha.shape[1]
    empty = torch.zeros(0, dtype=torch.float64)
    return NeuronSolution(alpha, S.new_zeros(d_out, k), empty, empty, 0.0, 0.0)


def random_neurons(D: int, d: int, k: int, *, generator: torch.Generator | None = None,
                   scale: float = 1.0, M: torch.Tensor | None = None) -> NeuronSolution:
    """Gaussian fan-in and fan-out, entries N(0, scale²/fan-in size) and N(0, scale²/k)."""
    fan_in = torch.randn(D, k, generator=generator, dtype=torch.float64) * scale / max(D, 1) ** 0.5
    fan_out = torch.randn(d, k, generator=generator, dtype=torch.float64) * scale / max(k, 1) ** 0.5
    gain = float(((fan_in.T @ M.double()) * fan_out.T).sum()) if M is not None else 0.0
    empty = torch.zeros(0, dtype=torch.float64)
    return NeuronSolution(fan_in, fan_out, empty, empty, gain, 0.0)


def zero_neurons(D: int, d: int, k: int) -> NeuronSolution:
    """K neurons with zero fan-in and fan-out: capacity only."""
    empty = torch.zeros(0, dtype=torch.float64)
    return NeuronSolution(torch.zeros(D, k, dtype=torch.float64), torch.zeros(d, k, dtype=torch.float64),
                          empty, empty, 0.0, 0.0)


def solve_neurons(init: Init, *, S: torch.Tensor, N: torch.Tensor, M: torch.Tensor, max_neurons: int,
                  existing_fan_in: torch.Tensor | None = None, rel_threshold: float = 1e-3,
                  rel_tol: float = 1e-10, min_decrease: float = 0.0,
                  generator: torch.Generator | None = None) -> NeuronSolution:
    """Dispatch on ``init``: one entry point for every initialisation."""
    D, d = S.shape[0], N.shape[1]
    if init == "tiny":
        return tiny_neurons(S, N, M, max_neurons, rel_threshold=rel_threshold, rel_tol=rel_tol,
                            min_decrease=min_decrease)
    if init == "gradmax":
        return gradmax_neurons(M, max_neurons, rel_threshold=rel_threshold, min_square=min_decrease)
    if init == "north":
        return north_neurons(S, d, max_neurons, existing_fan_in, generator=generator, rel_tol=rel_tol)
    if init == "random":
        return random_neurons(D, d, max_neurons, generator=generator, M=M)
    if init == "zero":
        return zero_neurons(D, d, max_neurons)
    raise ValueError(f"unknown init {init!r}; use one of {INITS}")
