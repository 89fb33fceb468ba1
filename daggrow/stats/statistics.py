"""Running sums behind the moments of docs/math.md §3, and their assembly into solver inputs.

With ``h_u`` a node's value (n × d_u), ``v_v = −∂ℓ_i/∂z_v`` its desired move (n × d_v) and
``b_u = [h_u, 1]``, the accumulators are sums over samples (float64):

    hh[u, w] = Σ h_u h_wᵀ    h[u] = Σ h_u    hv[u, v] = Σ h_u v_vᵀ    v[v] = Σ v_v    vv[v] = Σ ‖v_v‖²

so that, e.g., ``S_u = (1/n) B_u B_uᵀ`` and ``M_{u,v} = (1/n) B_u V_vᵀ`` are read off blocks:

>>> stats.moment(["x"], ["x"])          # S_x, with the constant row and column last  # doctest: +SKIP

Sums add across batches and processes: ``a + b`` merges, :meth:`all_reduce` sums over
``torch.distributed``; both are exact, which is what makes data-parallel growth exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from ..errors import StatisticsError
from .views import View

if TYPE_CHECKING:
    from ..solve import BestUpdate

Pair = tuple[str, str]
SUMS = ("h", "hh", "v", "vv", "hv", "expansion", "hr", "vr")
SECOND_PASS = ("expansion", "hr", "vr")  # sums projected with a δW* solved from the others


@dataclass
class Statistics:
    """Sums of per-sample products for the nodes and pairs of a :class:`StatisticsPlan`."""

    widths: dict[str, int]
    n: int = 0
    h: dict[str, torch.Tensor] = field(default_factory=dict)
    hh: dict[Pair, torch.Tensor] = field(default_factory=dict)
    v: dict[str, torch.Tensor] = field(default_factory=dict)
    vv: dict[str, torch.Tensor] = field(default_factory=dict)
    hv: dict[Pair, torch.Tensor] = field(default_factory=dict)
    # new-channel sums of image/sequence nodes (docs/math.md §10), keyed by (FullKernel.key, "S" | "M" | "N");
    # N is projected with the target's δW* of these statistics (``updates``): such sums do not add
    expansion: dict[Pair, torch.Tensor] = field(default_factory=dict)
    # observations per sample of each view key and each target node (Π of the target's shape)
    positions: dict[str, int] = field(default_factory=dict)
    # quantities derived from data-only moments (e.g. the solver's decomposition of S_x); like
    # those moments they stay valid for another pass over the same samples (``reuse=``)
    data_cache: dict[tuple, object] = field(default_factory=dict)
    # a source key the memory planner read through a cheaper view → that view (see :meth:`lift`)
    aliases: dict[str, "View"] = field(default_factory=dict)
    # (C, *positions) of each aliased source's node, for :meth:`lift`
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # candidates (``Candidate.where``) the memory planner left out of this pass
    left_out: set[str] = field(default_factory=set)
    # second pass, v an image/sequence node: hr[u, v] = Σ h_u v⊥_vᵀ and vr[v] = Σ v⊥_v, with
    # v⊥ = v − δW*_v b_in(v) the move after the best update of ``updates`` (docs/math.md §5)
    hr: dict[Pair, torch.Tensor] = field(default_factory=dict)
    vr: dict[str, torch.Tensor] = field(default_factory=dict)
    # (node, rel_tol) → δW* solved from these sums (:func:`daggrow.stats.updates.best_update_at`)
    updates: dict[tuple[str, float], "BestUpdate"] = field(default_factory=dict)

    # ----------------------------------------------------------------- combining
    def __add__(self, other: "Statistics") -> "Statistics":
        if not isinstance(other, Statistics):
            return NotImplemented
        if self._layout() != other._layout():
            raise StatisticsError("cannot merge statistics collected with different plans or widths")
        if any(getattr(self, name) or getattr(other, name) for name in SECOND_PASS):
            raise StatisticsError("new-channel sums do not add: each pass projects them with the best update δW* "
                                  "solved from its own data; collect them in one pass over all the data")
        out = Statistics(widths=dict(self.widths), n=self.n + other.n, positions=dict(self.positions),
                         aliases=dict(self.aliases), shapes=dict(self.shapes))
        for name in SUMS:
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(out, name, {k: mine[k] + theirs[k] for k in mine})
        return out

    def all_reduce(self, group: object | None = None, exclude: Iterable[tuple[str, object]] = (),
                   only: Sequence[str] | None = None) -> "Statistics":
        """Sum these statistics over every process of ``group`` (in place; returns self), in one
        float64 all-reduce. ``exclude``: ``(sum name, key)`` blocks left as they are, e.g. input
        moments copied from a pass that was already reduced (``collect_statistics(reuse=...)``):
        summing them again would count every sample ``world_size`` times. ``only``: reduce the
        blocks of these sums (e.g. ``SECOND_PASS``, summed in a second pass) and leave ``n``.
        Under a process group :func:`~daggrow.stats.collect_statistics` already calls this
        (``across_processes=True``)."""
        import torch.distributed as dist

        skip = set(exclude)
        names = SUMS if only is None else tuple(only)
        # sorted keys: every process must flatten in the same order (set order depends on hash seeds)
        tensors = [getattr(self, name)[k] for name in names for k in sorted(getattr(self, name))
                   if (name, k) not in skip]
        device = tensors[0].device if tensors else self._device()
        count = [torch.tensor([float(self.n)], dtype=torch.float64, device=device)] if only is None else []
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors] + count)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()
        if only is None:
            self.n = int(round(flat[-1].item()))
        return self

    def _layout(self) -> tuple:
        return (tuple(sorted(self.widths.items())), tuple(sorted(self.positions.items())),
                tuple(sorted((k, v.key) for k, v in self.aliases.items())),
                *(tuple(sorted(getattr(self, k))) for k in SUMS))

    # ----------------------------------------------------------------- reading
    def _check_n(self) -> None:
        if self.n == 0:
            raise StatisticsError("no sample was accumulated: the loader yielded no batch")

    def key(self, u: str) -> str:
        """The key ``u``'s sums are stored under: the planner's cheaper view of it, if any."""
        return self.aliases[u].key if u in self.aliases else u

    def lift(self, keys: Sequence[str], X: torch.Tensor) -> torch.Tensor:
        """Rows of X stacked as the views of ``keys`` (then anything else, e.g. the constant row)
        → the same with each aliased key's rows lifted to its full view: Aᵀ X_u for a pooled
        read A·flatten(h_u) (:meth:`View.lift`). An identity when no key is aliased."""
        if not any(k in self.aliases for k in keys):
            return X
        blocks, offset = [], 0
        for k in keys:
            d = self.widths[self.key(k)]
            part = X[offset: offset + d]
            blocks.append(self.aliases[k].lift(part, self.shapes[k]) if k in self.aliases else part)
            offset += d
        return torch.cat(blocks + [X[offset:]], 0)

    def value_block(self, u: str, w: str) -> torch.Tensor:
        """Σ h_u h_wᵀ (d_u × d_w) from whichever orientation was accumulated."""
        u, w = self.key(u), self.key(w)
        if (u, w) in self.hh:
            return self.hh[(u, w)]
        if (w, u) in self.hh:
            return self.hh[(w, u)].T
        raise StatisticsError(f"the moment between {u!r} and {w!r} was not collected; "
                              "add the candidate that needs it to the statistics plan")

    def _value_sum(self, u: str) -> torch.Tensor:
        u = self.key(u)
        if u not in self.h:
            raise StatisticsError(f"the values of node {u!r} were not collected")
        return self.h[u]

    def moment(self, U: Sequence[str], W: Sequence[str], bias_u: bool = True, bias_w: bool = True) -> torch.Tensor:
        """(1/n) B_U B_Wᵀ with B_U = [h_{u1}; …; h_{up}; 1] (constant row last, when ``bias_u``).

        With ``U == W`` this is S_U; with different lists, the cross-moment P_{U,W}.
        """
        self._check_n()
        rows = [torch.cat([self.value_block(u, w) for w in W] + ([self._value_sum(u)[:, None]] if bias_w else []), 1)
                for u in U]
        if bias_u:
            last = [self._value_sum(w)[None, :] for w in W]
            if bias_w:
                count = float(self.n * self.positions.get(self.key((list(U) or list(W) or [""])[0]), 1))
                last.append(torch.full((1, 1), count, dtype=torch.float64, device=self._device()))
            rows.append(torch.cat(last, 1))
        return torch.cat(rows, 0) / self.n

    def grad_moment(self, U: Sequence[str], T: Sequence[str], bias: bool = True) -> torch.Tensor:
        """M_{U,T} = (1/n) B_U V_Tᵀ, with V_T the stacked desired moves of the targets."""
        self._check_n()
        rows = []
        for u in map(self.key, U):
            blocks = []
            for t in T:
                if (u, t) not in self.hv:
                    raise StatisticsError(f"the moment between node {u!r} and the desired move of {t!r} was not "
                                          "collected; add the candidate that needs it to the statistics plan")
                blocks.append(self.hv[(u, t)])
            rows.append(torch.cat(blocks, 1))
        if bias:
            rows.append(torch.cat([self._grad_sum(t)[None, :] for t in T], 1))
        return torch.cat(rows, 0) / self.n

    def residual_moment(self, U: Sequence[str], T: Sequence[str], bias: bool = True) -> torch.Tensor:
        """N_{U,T} = (1/n) B_U V⊥_Tᵀ, summed directly in the second pass (image/sequence targets)."""
        self._check_n()
        rows = []
        for u in map(self.key, U):
            missing = [t for t in T if (u, t) not in self.hr]
            if missing:
                raise StatisticsError(f"the residual moment between node {u!r} and the projected move of "
                                      f"{missing[0]!r} was not collected; add the candidate that needs it to the plan")
            rows.append(torch.cat([self.hr[(u, t)] for t in T], 1))
        if bias:
            rows.append(torch.cat([self.vr[t][None, :] for t in T], 1))
        return torch.cat(rows, 0) / self.n

    def _grad_sum(self, t: str) -> torch.Tensor:
        if t not in self.v:
            raise StatisticsError(f"the desired move of node {t!r} was not collected")
        return self.v[t]

    def grad_energy(self, t: str) -> float:
        """g_t = (1/n) ‖V_t‖²_F."""
        self._check_n()
        if t not in self.vv:
            raise StatisticsError(f"the desired move of node {t!r} was not collected")
        return float(self.vv[t]) / self.n

    def full_kernel_moments(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S, M, N) of a new-channel expansion (docs/math.md §10), as means over samples:

        S = (1/n) Σ_{i,q} c(q) b(q) b(q)ᵀ (D × D, c(q) = how many (position, offset) pairs of the
        out-edge read position q), M[c, :, o] = (1/n) Σ_{i,p} v_c(p) b(p+o) (C_v × D × offsets),
        N[c, :, o] = (1/n) Σ_{i,p} v⊥_c(p) b(p+o) with v⊥ = v − δW* b_in the target's move after
        its best update (δW* from ``updates``, solved at ``REL_TOL``).
        """
        self._check_n()
        try:
            return tuple(self.expansion[(key, part)] / self.n for part in ("S", "M", "N"))
        except KeyError:
            raise StatisticsError(f"the new-channel sums of {key!r} were not collected; add the candidate "
                                  "that needs them to the statistics plan") from None

    def _device(self) -> torch.device:
        for d in (self.h, self.v):
            for t in d.values():
                return t.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> "Statistics":
        out = Statistics(widths=dict(self.widths), n=self.n, positions=dict(self.positions),
                         aliases=dict(self.aliases), shapes=dict(self.shapes))
        for name in SUMS:
            setattr(out, name, {k: t.to(device) for k, t in getattr(self, name).items()})
        out.updates = {k: replace(u, delta=u.delta.to(device)) for k, u in self.updates.items()}
        out.left_out = set(self.left_out)
        return out

    def __repr__(self) -> str:
        return (f"Statistics(n={self.n}, nodes={len(self.h)}, value pairs={len(self.hh)}, "
                f"desired moves={len(self.v)}, gradient pairs={len(self.hv)})")


def empty_statistics(widths: dict[str, int], values: Iterable[str], value_pairs: Iterable[Pair],
                     grads: Iterable[str], grad_pairs: Iterable[Pair],
                     device: torch.device | str | None = None) -> Statistics:
    """Zero accumulators for a plan (float64)."""
    z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
    s = Statistics(widths=dict(widths))
    s.h = {u: z(widths[u]) for u in sorted(values)}
    s.hh = {(u, w): z(widths[u], widths[w]) for u, w in sorted(value_pairs)}
    s.v = {t: z(widths[t]) for t in sorted(grads)}
    s.vv = {t: z(()) for t in sorted(grads)}
    s.hv = {(u, t): z(widths[u], widths[t]) for u, t in sorted(grad_pairs)}
    return s
