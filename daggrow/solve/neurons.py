"""New neurons for an expansion with fan-in sources U and targets T (docs/math.md §5).

TINY (default): with S = (1/n) B_U B_Uᵀ (D × D), N = (1/n) B_U V⊥_Tᵀ (D × d) and
M = (1/n) B_U V_Tᵀ (D × d),

    S^{-1/2} N = Σ_k λ_k a_k c_kᵀ (SVD),   α_k = √λ_k S^{-1/2} a_k,   ω_k = √λ_k c_k

minimises (1/n)‖V⊥_T − Ω Aᵀ B_U‖² over rank K (A = [α_k], Ω = [ω_k]); the bottleneck drops by
Σ_{k≤K} λ_k², (1/n)⟨V⊥_T, Ω Aᵀ B_U⟩ = Σ λ_k², and the loss changes by −γ Σ_k α_kᵀ M ω_k to
first order at amplitude γ (M, not N: the cross term with δW* is real).

Other initialisations, same return type (:class:`NeuronSolution`):

* GradMax: fan-in 0, fan-out ω_k = √σ_k r_k from the SVD M = Σ σ_k l_k r_kᵀ (r_k ∈ R^d: the
  top left singular vectors of Mᵀ); no S, no projection. ω maximises ‖M ω‖, the gradient norm of
  the new fan-in.
* NORTH-style: fan-out 0, random fan-in whose pre-activations αᵀB are orthonormal,
  αᵀ S α = I, and orthogonal to those of the existing neurons, αᵀ S W = 0.
* random: Gaussian fan-in and fan-out.  * zero: both zero (capacity only; a saddle point).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .linalg import Decomposition, SolverInputError, as_float64_matrix, psd_eigh, stable_svd, whitening

Init = Literal["tiny", "gradmax", "north", "random", "zero"]
INITS: tuple[str, ...] = ("tiny", "gradmax", "north", "random", "zero")

# singular values below this fraction of the largest are float64 round-off, set to exactly 0
ROUND_OFF_FRACTION = 1e-12


@dataclass(frozen=True)
class NeuronSolution:
    fan_in: torch.Tensor            # (D × K): column k is α_k (rows aligned with B_U)
    fan_out: torch.Tensor           # (d × K): column k is ω_k (rows aligned with the stacked targets)
    eigenvalues: torch.Tensor       # (K,): λ_1 ≥ … ≥ λ_K of the kept directions (σ_k for GradMax)
    all_eigenvalues: torch.Tensor   # the whole spectrum (round-off set to 0); empty for north/random/zero
    first_order_gain: float         # Σ_k α_kᵀ M ω_k: loss decrease per unit amplitude, to first order
    bottleneck_decrease: float      # Σ_k λ_k² (TINY); 0 for the others

    @property
    def num_neurons(self) -> int:
        """K, the number of solved directions (before any activation pairing)."""
        return int(self.fan_in.shape[1])


def _check_max_neurons(max_neurons: int) -> int:
    if int(max_neurons) != max_neurons or max_neurons < 0:
        raise SolverInputError(f"max_neurons must be a non-negative integer, got {max_neurons!r}")
    return int(max_neurons)


def _count(values: torch.Tensor, max_neurons: int, rel_threshold: float, min_square: float = 0.0) -> int:
    """#{value_k > rel_threshold·value_1 and value_k² > min_square}, at most max_neurons; 0 if value_1 = 0."""
    if values.numel() == 0 or float(values[0]) <= 0:
        return 0
    keep = (values > rel_threshold * values[0]) & (values ** 2 > min_square)
    return min(max_neurons, int(keep.sum()))


def _drop_round_off(values: torch.Tensor) -> torch.Tensor:
    if values.numel() and float(values[0]) > 0:
        return torch.where(values > ROUND_OFF_FRACTION * values[0], values, torch.zeros_like(values))
    return torch.zeros_like(values)


def _fix_signs(fan_in: torch.Tensor, fan_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make each ω_k's largest entry positive (flipping α_k too), so results are reproducible."""
    if fan_out.numel() == 0:
        return fan_in, fan_out
    idx = fan_out.abs().argmax(0)
    sign = torch.sign(fan_out.gather(0, idx[None, :]))[0]
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return fan_in * sign, fan_out * sign


def _empty(D: int, d: int) -> NeuronSolution:
    none = torch.zeros(0, dtype=torch.float64)
    return NeuronSolution(torch.zeros(D, 0, dtype=torch.float64), torch.zeros(d, 0, dtype=torch.float64),
                          none, none, 0.0, 0.0)


def tiny_neurons(S: torch.Tensor, N: torch.Tensor, M: torch.Tensor, max_neurons: int, *,
                 rel_threshold: float = 1e-3, rel_tol: float = 1e-10, min_decrease: float = 0.0,
                 decomposition: Decomposition | None = None) -> NeuronSolution:
    """The TINY neurons of docs/math.md §5, float64.

    K = min(max_neurons, #{λ_k > rel_threshold·λ_1 and λ_k² > min_decrease}, rank S). K = 0 (empty
    tensors, gains 0) when every λ is 0, e.g. at a perfect fit or with all-zero gradients.
    ``min_decrease`` is an absolute floor on a direction's bottleneck decrease λ_k²: pass a tiny
    fraction of (1/n)‖V_T‖² so that round-off directions (N ≈ 0) are not proposed. ``rel_tol``
    cuts the eigenvalues of S (relative to the largest) in S^{-1/2}; ``decomposition`` is
    ``whitening(S, rel_tol)`` when the caller already has it. Any whitening factor F of S
    (F S Fᵀ = I) may stand for S^{-1/2}: the SVD of F N gives the same λ_k, α_k and ω_k.
    """
    max_neurons = _check_max_neurons(max_neurons)
    S = as_float64_matrix("S", S)
    N = as_float64_matrix("N", N, rows=S.shape[0])
    M = as_float64_matrix("M", M, rows=S.shape[0], cols=N.shape[1])
    D, d = N.shape
    if D == 0 or d == 0:
        return _empty(D, d)
    white = decomposition if decomposition is not None else whitening(S, rel_tol)
    a, lam, ct = stable_svd(white.whiten(N))
    lam = _drop_round_off(lam)
    k = min(_count(lam, max_neurons, rel_threshold, min_decrease), white.rank)
    root = lam[:k].sqrt()
    fan_in, fan_out = _fix_signs(white.unwhiten(a[:, :k]) * root, ct[:k].T * root)
    gain = float(((fan_in.T @ M) * fan_out.T).sum())
    return NeuronSolution(fan_in, fan_out, lam[:k].clone(), lam, gain, float((lam[:k] ** 2).sum()))


def gradmax_neurons(M: torch.Tensor, max_neurons: int, *, rel_threshold: float = 1e-3,
                    min_square: float = 0.0) -> NeuronSolution:
    """GradMax: fan-in 0; fan-out = top-K left singular vectors of Mᵀ (d × D), scaled by √σ_k.

    K = min(max_neurons, #{σ_k > rel_threshold·σ_1 and σ_k² > min_square}).
    """
    max_neurons = _check_max_neurons(max_neurons)
    M = as_float64_matrix("M", M)
    D, d = M.shape
    if D == 0 or d == 0:
        return _empty(D, d)
    _, sigma, vt = stable_svd(M)  # M = L diag(σ) Rᵀ, rows of Rᵀ live in R^d
    sigma = _drop_round_off(sigma)
    k = _count(sigma, max_neurons, rel_threshold, min_square)
    fan_in, fan_out = _fix_signs(M.new_zeros(D, k), vt[:k].T * sigma[:k].sqrt())
    return NeuronSolution(fan_in, fan_out, sigma[:k].clone(), sigma, 0.0, 0.0)


def north_neurons(S: torch.Tensor, d_out: int, max_neurons: int, existing_fan_in: torch.Tensor | None = None, *,
                  generator: torch.Generator | None = None, rel_tol: float = 1e-10) -> NeuronSolution:
    """NORTH-style: fan-out 0 (d_out × K); random fan-in A (D × K) with

        Aᵀ S A = I      (the new pre-activations Aᵀ B are orthonormal over the samples)
        Aᵀ S W = 0      (and orthogonal to those of the existing neurons, W = existing_fan_in, D × d_w)

    Drawn as A = E μ^{-1/2} Z with S ≈ E diag(μ) Eᵀ (kept part) and Z orthonormal, random, and
    orthogonal to μ^{1/2} Eᵀ W. K = min(max_neurons, rank S − rank(S W)): fewer neurons when the
    existing ones already span the inputs.
    """
    max_neurons = _check_max_neurons(max_neurons)
    S = as_float64_matrix("S", S)
    D = S.shape[0]
    mu, E = psd_eigh(S, rel_tol)
    r = mu.numel()
    basis = torch.eye(r, dtype=torch.float64)              # whitened coordinates allowed for Z
    if existing_fan_in is not None and existing_fan_in.numel():
        W = as_float64_matrix("existing_fan_in", existing_fan_in, rows=D)
        C = mu.sqrt()[:, None] * (E.T @ W)                 # zᵀ C = αᵀ S W
        U, sv, _ = torch.linalg.svd(C, full_matrices=True)
        rank_c = int((sv > rel_tol * sv[0]).sum()) if sv.numel() and float(sv[0]) > 0 else 0
        basis = U[:, rank_c:]
    k = min(max_neurons, basis.shape[1])
    if k == 0:
        return _empty(D, d_out)
    Z = basis @ torch.randn(basis.shape[1], k, generator=generator, dtype=torch.float64)
    Z, _ = torch.linalg.qr(Z)
    fan_in = (E * mu.rsqrt()) @ Z
    empty = torch.zeros(0, dtype=torch.float64)
    return NeuronSolution(fan_in, S.new_zeros(d_out, k), empty, empty, 0.0, 0.0)


def random_neurons(D: int, d: int, k: int, *, generator: torch.Generator | None = None,
                   scale: float = 1.0, M: torch.Tensor | None = None) -> NeuronSolution:
    """Gaussian fan-in and fan-out, entries N(0, scale²/D) and N(0, scale²/k).

    With ``M`` (D × d) given, ``first_order_gain`` = Σ_k α_kᵀ M ω_k is reported too.
    """
    k = _check_max_neurons(k)
    fan_in = torch.randn(D, k, generator=generator, dtype=torch.float64) * scale / max(D, 1) ** 0.5
    fan_out = torch.randn(d, k, generator=generator, dtype=torch.float64) * scale / max(k, 1) ** 0.5
    gain = 0.0
    if M is not None:
        M = as_float64_matrix("M", M, rows=D, cols=d)
        gain = float(((fan_in.T @ M) * fan_out.T).sum())
    empty = torch.zeros(0, dtype=torch.float64)
    return NeuronSolution(fan_in, fan_out, empty, empty, gain, 0.0)


def zero_neurons(D: int, d: int, k: int) -> NeuronSolution:
    """K neurons with zero fan-in and fan-out: capacity only (gradients of both are 0 at first)."""
    k = _check_max_neurons(k)
    empty = torch.zeros(0, dtype=torch.float64)
    return NeuronSolution(torch.zeros(D, k, dtype=torch.float64), torch.zeros(d, k, dtype=torch.float64),
                          empty, empty, 0.0, 0.0)


def solve_neurons(init: Init, *, S: torch.Tensor, N: torch.Tensor, M: torch.Tensor, max_neurons: int,
                  existing_fan_in: torch.Tensor | None = None, rel_threshold: float = 1e-3,
                  rel_tol: float = 1e-10, min_decrease: float = 0.0,
                  generator: torch.Generator | None = None, random_scale: float = 1.0,
                  decomposition: Decomposition | None = None) -> NeuronSolution:
    """Dispatch on ``init`` (one of :data:`INITS`): one entry point for every initialisation.

    S (D × D), N and M (D × d) as in :func:`tiny_neurons`; ``existing_fan_in`` (D × d_w) is only
    used by NORTH, ``generator`` by NORTH and random.
    """
    D, d = S.shape[0], N.shape[1]
    if init == "tiny":
        return tiny_neurons(S, N, M, max_neurons, rel_threshold=rel_threshold, rel_tol=rel_tol,
                            min_decrease=min_decrease, decomposition=decomposition)
    if init == "gradmax":
        return gradmax_neurons(M, max_neurons, rel_threshold=rel_threshold, min_square=min_decrease)
    if init == "north":
        return north_neurons(S, d, max_neurons, existing_fan_in, generator=generator, rel_tol=rel_tol)
    if init == "random":
        return random_neurons(D, d, max_neurons, generator=generator, scale=random_scale, M=M)
    if init == "zero":
        return zero_neurons(D, d, max_neurons)
    raise SolverInputError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
