"""Sums for new channels in an image/sequence node (docs/math.md §10), streamed batch by batch.

New channels in node w read the views ``sources`` (unfolded patches at w's positions q, plus a
constant channel) and write into a target through an out-edge of kernel k2. Treating the
out-edge's offsets o as extra observations:

    S = Σ_{i,q} c(q) b(q) b(q)ᵀ            c(q): how many (target position, offset) pairs read q
    M[c, :, o] = Σ_{i,p} v_c(p) b(s·p + d·o − pad)
    N[c, :, o] = Σ_{i,p} v⊥_c(p) b(s·p + d·o − pad),   v⊥ = v − δW* b_in   (the target's move
                                                        after its best update, b_in its in-views)

N is what the solver reads (N = M − P δW*ᵀ with P the in-views' sums against the shifted b, but
P — (C·k²+1) output channels instead of C_v — is never formed: 9× the work of M at a 3×3
target). So δW* must be known before N is summed: :func:`~daggrow.stats.collect_statistics`
solves it between two passes over the data. M and N are one conv weight-gradient of the
unfolded input against [v; v⊥] (``torch.nn.grad.conv{1,2}d_weight``), or, for a 2-d target of
at most WINDOWS_GEMM_POSITIONS positions (a deep stage, or a linear out-edge), one GEMM
[v; v⊥]·unfold(b)ᵀ over a chunk's windows (same sums; 1.4–1.8× faster on CPU there, slower on
wide maps); the whole (samples × positions × offsets × D) tensor is never built.
A linear out-edge that flattens w is the same with one "kernel" covering every position.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from .plan import FullKernel
from .statistics import Statistics
from .views import View, as_rows

if TYPE_CHECKING:
    from ..graph import Graph


WINDOWS_GEMM_POSITIONS = 16  # measured (1 thread): GEMM faster at 4×4 targets, conv weight-grad from 8×8 up


class ChannelSums:
    """Streams the sums S, M, N of one new-channel expansion (docs/math.md §10).

    S comes from the first pass: with c_max the largest count c(q), S = c_max·Σ_q b bᵀ − E,
    Σ_q b bᵀ the plain moments of the node's in-views (the pass sums them for δW* at the node
    anyway) and E = Σ_{q: c(q) < c_max} (c_max − c(q)) b bᵀ over the border positions only
    (:meth:`add_border`, :meth:`finish_s`). M and N come from the second pass (:meth:`add`),
    from the target's moves before and after its best update."""

    def __init__(self, graph: "Graph", fk: FullKernel, views: dict[str, View], stats: Statistics,
                 device: torch.device) -> None:
        self.fk, self.views = fk, views
        ov = fk.out_view
        self.node_shape = graph.node(fk.node).shape
        self.out_shape = graph.node(fk.target).shape or (1,) * ov.dim  # a vector target: one position
        self.geometry = dict(stride=ov.stride, padding=ov.padding, dilation=ov.dilation)
        self.out_positions = math.prod(self.out_shape)
        d_in = sum(stats.widths[k] for k in fk.sources) + 1
        grad_input = torch.nn.grad.conv1d_input if ov.dim == 1 else torch.nn.grad.conv2d_input
        # c(q): how many (target position, offset) pairs read node position q (border-aware)
        counts = grad_input((1, 1, *self.node_shape), torch.ones(1, 1, *ov.kernel, dtype=torch.float64),
                            torch.ones(1, 1, *self.out_shape, dtype=torch.float64), **self.geometry).flatten()
        self.c_max = float(counts.max())
        self.border = torch.nonzero(counts < self.c_max).flatten().to(device)
        self.border_weights = (self.c_max - counts[counts < self.c_max]).to(device)
        self.weight_grad = torch.nn.grad.conv1d_weight if ov.dim == 1 else torch.nn.grad.conv2d_weight
        self.combined = _combined_geometry(graph, fk, views)
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.S = stats.expansion[(fk.key, "S")] = z(d_in, d_in)  # E during the first pass
        self.M = stats.expansion[(fk.key, "M")] = z(graph.node(fk.target).width, d_in, *ov.kernel)
        self.N = stats.expansion[(fk.key, "N")] = z(graph.node(fk.target).width, d_in, *ov.kernel)

    def add_border(self, rows: dict[str, torch.Tensor], n: int) -> None:
        """First pass: E += Σ_{border q} (c_max − c(q)) b(q) b(q)ᵀ from one chunk of ``n`` samples'
        rows of the node's in-views (samples outer, positions inner)."""
        if self.border.numel() == 0:
            return
        parts = [rows[k].reshape(n, -1, rows[k].shape[1]).index_select(1, self.border) for k in self.fk.sources]
        b = torch.cat(parts + [parts[0].new_ones(n, self.border.numel(), 1)], 2)   # n × |border| × D
        weighted = b * self.border_weights.to(b.dtype)[None, :, None]
        self.S += weighted.reshape(-1, b.shape[2]).T @ b.reshape(-1, b.shape[2])

    def finish_s(self, stats: Statistics) -> None:
        """After the first pass (reduced): S = c_max·Σ_q b bᵀ − E, in place."""
        plain = stats.moment(list(self.fk.sources), list(self.fk.sources), True, True) * stats.n
        self.S.mul_(-1).add_(plain, alpha=self.c_max)

    def values_per_sample(self) -> int:
        """Values one sample adds to a chunk of the second pass: its signal b, [v; v⊥] and (small
        2-d targets) the out-edge's windows."""
        d_in, offsets = self.S.shape[0], math.prod(self.M.shape[2:])
        rows = d_in * math.prod(self.node_shape) + 2 * self.M.shape[0] * self.out_positions
        if len(self.M.shape[2:]) == 2 and self.out_positions <= WINDOWS_GEMM_POSITIONS:
            rows += d_in * offsets * self.out_positions
        return rows

    def _signal(self, values: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        parts = [self.views[k].signal(values[self.views[k].node]) for k in self.fk.sources]
        parts = [p.reshape(p.shape[0], p.shape[1], *self.node_shape) for p in parts]
        return torch.cat([*parts, like.new_ones(like.shape[0], 1, *self.node_shape)], 1)

    def add(self, values: dict[str, torch.Tensor], moves: dict[str, torch.Tensor],
            perps: dict[str, torch.Tensor]) -> None:
        """Second pass: add one chunk of samples to M and N (``values`` of the nodes the views
        read; ``moves`` and ``perps`` of the target: v, and v⊥ = v − δW* b_in, in the product dtype)."""
        fk = self.fk
        move = torch.cat([moves[fk.target], perps[fk.target]], 1)                    # [v; v⊥]
        move = move.reshape(move.shape[0], move.shape[1], *self.out_shape)
        channels = self.M.shape[0]
        if self.combined is not None:
            x = values[self.views[fk.sources[0]].node]
            product = self._combined_sums(x.to(move.dtype), move)
            self.M += product[:channels]
            self.N += product[channels:]
            return
        b = self._signal(values, move).to(move.dtype)
        kernel = tuple(self.M.shape[2:])
        if len(kernel) == 2 and self.out_positions <= WINDOWS_GEMM_POSITIONS:  # [v; v⊥]·windowsᵀ
            windows = as_rows(F.unfold(b, kernel, **self.geometry))              # (n·P_out) × (D·offsets)
            product = (as_rows(move).T @ windows).reshape(move.shape[1], *self.M.shape[1:])
        else:
            product = self.weight_grad(b, (move.shape[1], b.shape[1], *kernel), move, **self.geometry)
        self.M += product[:channels]
        self.N += product[channels:]

    def _combined_sums(self, x: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
        """[M; N] (2C_v × D × *K2) over combined offsets: with one conv in-view (kernel K1,
        stride s) of the source x and a same-size stride-1 out-edge (kernel K2, padding p2),
        b_{ch,o1}(q) = x̃_ch(s·q + o1), so Σ_p v(p) b(p + o2 − p2) depends on t = s·o2 + o1 only:
        one weight gradient with the kernel T = s·(K2 − 1) + K1 (5×5 for two 3×3 convs, not
        the 81 offset pairs of the unfolded input), read at t, minus the terms of the positions
        p whose p + o2 − p2 falls outside the node (b is zero there): a border strip per o2."""
        view = self.views[self.fk.sources[0]]
        T, P = self.combined
        dim, K1, K2, s = view.dim, view.kernel, self.fk.out_view.kernel, view.stride
        G = self.weight_grad(x, (move.shape[1], x.shape[1], *T), move, stride=s, padding=P)     # 2C × C_x × *T
        # index t = s·o2 + o1 on each axis, broadcast over (*K1, *K2)
        def along(a: int, size: int, at: int) -> torch.Tensor:
            return torch.arange(size, device=x.device).reshape([size if i == at else 1 for i in range(2 * dim)])

        axes = [s[a] * along(a, K2[a], dim + a) + along(a, K1[a], a) for a in range(dim)]
        sums = G[(slice(None), slice(None), *axes)]                                            # 2C × C_x × *K1 × *K2
        constant = move.flatten(2).sum((0, 2))[:, None].expand(-1, math.prod(K2)).clone()      # 2C × ΠK2
        padded = F.pad(x, [p for a in reversed(range(dim)) for p in (P[a], P[a])])
        p2, shape = self.fk.out_view.padding, self.node_shape
        for flat, o2 in enumerate(itertools.product(*[range(k) for k in K2])):
            shift = [o - p for o, p in zip(o2, p2)]
            invalid = [(0, -d) if d < 0 else (n - d, n) for d, n in zip(shift, shape)]  # p + shift outside [0, n)
            for axis in range(dim):  # the invalid p as disjoint boxes: axis 0 out; axis 1 out, axis 0 in; …
                box = [(0, n) for n in shape]
                for before in range(axis):
                    lo, hi = invalid[before]
                    box[before] = (hi, shape[before]) if lo == 0 else (0, lo)
                box[axis] = invalid[axis]
                if any(hi <= lo for lo, hi in box):
                    continue
                v_box = move[(slice(None), slice(None), *[slice(lo, hi) for lo, hi in box])]
                x_box = padded[(slice(None), slice(None), *[slice(st * (lo + o), st * (hi - 1 + o) + k)
                                                            for (lo, hi), o, st, k in zip(box, o2, s, K1)])]
                sums[(..., *o2)] -= self.weight_grad(x_box, (move.shape[1], x.shape[1], *K1), v_box, stride=s)
                constant[:, flat] -= v_box.sum([0, *range(2, 2 + dim)])
        sums = sums.reshape(move.shape[1], -1, *K2)
        return torch.cat([sums, constant.reshape(move.shape[1], 1, *K2)], 1)


def _combined_geometry(graph: "Graph", fk: FullKernel, views: dict[str, View]) -> tuple | None:
    """(T, P) of :meth:`ChannelSums._combined_sums` when it applies: one conv in-view (dilation 1),
    a stride-1, dilation-1 out-edge that keeps the node's size; else None."""
    if len(fk.sources) != 1 or views[fk.sources[0]].kind != "patches":
        return None
    view, ov = views[fk.sources[0]], fk.out_view
    shape = graph.node(fk.node).shape
    if (ov.kind != "patches" or any(d != 1 for d in (*view.dilation, *ov.dilation, *ov.stride))
            or graph.node(fk.target).shape != shape or any(2 * p != k - 1 for p, k in zip(ov.padding, ov.kernel))):
        return None
    T = tuple(s * (k2 - 1) + k1 for s, k1, k2 in zip(view.stride, view.kernel, ov.kernel))
    P = tuple(p1 + s * p2 for p1, s, p2 in zip(view.padding, view.stride, ov.padding))
    source = graph.node(view.node).shape
    if tuple((h + 2 * p - t) // s + 1 for h, p, t, s in zip(source, P, T, view.stride)) != tuple(shape):
        return None
    return T, P
