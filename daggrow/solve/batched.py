"""TINY neurons for many candidates at once (MATH §5): the SVDs of one shape in one call.

Each problem comes already whitened, ``FN = F N`` and ``FM = F M`` (r × d) with its whitening
F (several candidates share F and their targets' whitened blocks, see ``propose``). Then, as
in :func:`~daggrow.solve.tiny_neurons`,

    F N = Σ_k λ_k a_k c_kᵀ,   α_k = √λ_k Fᵀ a_k,   ω_k = √λ_k c_k,
    first-order gain Σ_k α_kᵀ M ω_k = Σ_k λ_k a_kᵀ (F M) c_k,

and the answers equal :func:`~daggrow.solve.tiny_neurons`'s to round-off (same SVD per matrix,
same cuts, same signs). The fan-ins of all problems sharing one F are mapped back in one call.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import DaggrowError
from .linalg import Decomposition
from .neurons import NeuronSolution, _count, _drop_round_off, _empty, _fix_signs


@dataclass
class WhitenedProblem:
    white: Decomposition        # F (r × D) of S
    FN: torch.Tensor            # F N (r × d)
    FM: torch.Tensor            # F M (r × d)
    max_neurons: int
    min_decrease: float = 0.0


def tiny_neurons_batched(problems: Sequence[WhitenedProblem], *, rel_threshold: float = 1e-3
                         ) -> list[NeuronSolution | DaggrowError]:
    """:func:`~daggrow.solve.tiny_neurons` of every problem; an SVD that fails in a batch is
    retried alone, and a problem whose SVD still fails gets its :class:`DaggrowError` in its
    place instead of a solution (the others are unaffected)."""
    out: list = [None] * len(problems)
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(problems):
        if p.FN.numel() == 0 or p.max_neurons == 0:
            out[i] = _empty(p.white.size, p.FN.shape[1])
        else:
            by_shape[tuple(p.FN.shape)].append(i)
    parts: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (index, a_k√λ, ω, λ)
    for index in by_shape.values():
        for i, (a, lam, ct) in zip(index, _svds([problems[i].FN for i in index])):
            if isinstance(lam, DaggrowError):
                out[i] = lam
                continue
            p = problems[i]
            lam = _drop_round_off(lam)
            k = min(_count(lam, p.max_neurons, rel_threshold, p.min_decrease), p.white.rank)
            root = lam[:k].sqrt()
            gain = float((lam[:k] * ((a[:, :k].T @ p.FM) * ct[:k]).sum(1)).sum())
            out[i] = (lam, k, gain)
            parts.append((i, a[:, :k] * root, ct[:k].T * root, lam))
    by_white: dict[int, list] = defaultdict(list)
    for part in parts:
        by_white[id(problems[part[0]].white)].append(part)
    for group in by_white.values():
        white = problems[group[0][0]].white
        fan_ins = white.unwhiten(torch.cat([a for _, a, _, _ in group], 1))
        offset = 0
        for i, a, fan_out, lam in group:
            k = a.shape[1]
            fan_in, fan_out = _fix_signs(fan_ins[:, offset: offset + k], fan_out)
            offset += k
            _, _, gain = out[i]
            out[i] = NeuronSolution(fan_in, fan_out, lam[:k].clone(), lam, gain, float((lam[:k] ** 2).sum()))
    return out


def _svds(matrices: list[torch.Tensor]) -> list[tuple]:
    """Thin SVDs of same-shape matrices in one batched call; one by one if the batch fails."""
    try:
        a, lam, ct = torch.linalg.svd(torch.stack(matrices), full_matrices=False)
        return list(zip(a, lam, ct))
    except RuntimeError:
        out = []
        for m in matrices:
            try:
                out.append(torch.linalg.svd(m, full_matrices=False))
            except RuntimeError as err:
                out.append((None, DaggrowError(f"the SVD of the whitened problem failed: {err}"), None))
        return out
