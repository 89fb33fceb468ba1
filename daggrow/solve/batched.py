"""TINY neurons for many candidates at once (docs/math.md §5): the SVDs of one shape in one call.

Each problem comes with ``FN = F N`` (r × d) already whitened by its whitening F (several
candidates share F and their targets' whitened blocks, see ``propose``) and its M (D × d).
Then, as in :func:`~daggrow.solve.tiny_neurons`,

    F N = Σ_k λ_k a_k c_kᵀ,   α_k = √λ_k Fᵀ a_k,   ω_k = √λ_k c_k,   first-order gain Σ_k α_kᵀ M ω_k

and the answers equal :func:`~daggrow.solve.tiny_neurons`'s to round-off (same SVD per matrix,
same cuts, same signs). The fan-ins of all problems sharing one F are mapped back in one call.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import DaggrowError, SolverError
from .linalg import Decomposition
from .neurons import ROUND_OFF_FRACTION, NeuronSolution, _empty


@dataclass
class WhitenedProblem:
    white: Decomposition        # F (r × D) of S
    FN: torch.Tensor            # F N (r × d)
    M: torch.Tensor             # M (D × d), for the gain α_kᵀ M ω_k of the kept directions
    max_neurons: int
    min_decrease: float = 0.0


def tiny_neurons_batched(problems: Sequence[WhitenedProblem], *, rel_threshold: float = 1e-3
                         ) -> list[NeuronSolution | DaggrowError]:
    """:func:`~daggrow.solve.tiny_neurons` of every problem; a batch whose SVD fails is split
    until the failing problems are alone, and each of those gets a :class:`SolverError` in its
    place instead of a solution (the others are unaffected)."""
    out: list = [None] * len(problems)
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(problems):
        if p.FN.numel() == 0 or p.max_neurons == 0:
            out[i] = _empty(p.white.size, p.FN.shape[1])
        else:
            by_shape[tuple(p.FN.shape)].append(i)
    parts: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, float, float]] = []
    for index in by_shape.values():
        solved = _svds([problems[i].FN for i in index])
        if solved is None:  # the batch failed: one by one, so that only the broken ones fail
            if len(index) == 1:
                out[index[0]] = SolverError("the SVD of the whitened problem S^{-1/2} N failed")
                continue
            half = len(index) // 2
            for part in (index[:half], index[half:]):
                for i, sol in zip(part, tiny_neurons_batched([problems[i] for i in part], rel_threshold=rel_threshold)):
                    out[i] = sol
            continue
        a, lam, ct = solved
        # the cuts of tiny_neurons, for the whole batch: round-off to 0, then
        # K = min(max_neurons, #{λ_k > rel_threshold·λ_1 and λ_k² > min_decrease}, rank S)
        top = lam[:, :1]
        lam = torch.where((lam > ROUND_OFF_FRACTION * top) & (top > 0), lam, torch.zeros_like(lam))
        floor = lam.new_tensor([problems[i].min_decrease for i in index])[:, None]
        keep = (lam > rel_threshold * lam[:, :1]) & (lam ** 2 > floor) & (lam[:, :1] > 0)
        limit = torch.tensor([min(problems[i].max_neurons, problems[i].white.rank) for i in index])
        k = torch.minimum(keep.sum(1).cpu(), limit)
        used = torch.arange(lam.shape[1])[None, :] < k[:, None]
        used = used.to(lam.device)
        decreases = (used * lam ** 2).sum(1).tolist()
        # signs as _fix_signs: each ω_k's largest entry positive (ω_k ∝ c_k, √λ_k > 0)
        idx = ct.abs().argmax(2, keepdim=True)
        sign = torch.sign(ct.gather(2, idx))[..., 0]
        root = lam.sqrt() * torch.where(sign == 0, torch.ones_like(sign), sign)
        for j, (i, kk) in enumerate(zip(index, k.tolist())):
            parts.append((i, a[j, :, :kk] * root[j, :kk], ct[j, :kk].T * root[j, :kk], lam[j], decreases[j]))
    by_white: dict[int, list] = defaultdict(list)
    for part in parts:
        by_white[id(problems[part[0]].white)].append(part)
    for group in by_white.values():
        white = problems[group[0][0]].white
        fan_ins = white.unwhiten(torch.cat([part[1] for part in group], 1))
        offset = 0
        for i, a, fan_out, lam, decrease in group:
            k = a.shape[1]
            fan_in = fan_ins[:, offset: offset + k]
            offset += k
            gain = float(((fan_in.T @ problems[i].M) * fan_out.T).sum())  # Σ_k α_kᵀ M ω_k
            out[i] = NeuronSolution(fan_in, fan_out, lam[:k].clone(), lam, gain, decrease)
    return out


def _svds(matrices: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Thin SVDs of same-shape matrices in one batched call (``None`` if it fails)."""
    try:
        stacked = matrices[0][None] if len(matrices) == 1 else torch.stack(matrices)  # one: no copy
        return torch.linalg.svd(stacked, full_matrices=False)
    except RuntimeError:  # LinAlgError (no convergence) is a RuntimeError
        return None
