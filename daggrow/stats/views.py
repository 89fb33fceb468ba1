"""What a growable edge reads from its source: the rows b_u of docs/math.md §2 and §10.

Every growable edge is linear in a *view* of its source's value, one row per observation:

- ``plain``: a linear edge from a vector node reads h_u itself (one row per sample); its key
  is the node's name.
- ``flatten``: a linear edge from an image/sequence node reads ``flatten(h_u)``.
- ``patches``: a conv edge reads the unfolded patch (C_u·Πk values, channel-major as in the
  kernel ``weight.reshape(C_v, -1)``) at each of the target's P positions.
- ``pooled``: a cheaper read of an image/sequence node chosen by the memory planner
  (:mod:`daggrow.stats.memory`): ``flatten(adaptive_avg_pool(h_u, grid))``, C_u·Π(grid) values
  per sample. It is a linear function A·flatten(h_u) of the flattened view, so a fan-in α solved
  on it is the flattened-view fan-in Aᵀα (:meth:`View.lift`), exactly.
- ``tokens``: a per-token linear edge from a tokens node ``(n, *grid, d)`` reads each token's
  d features: one row per (sample, token), like a 1×1 conv's positions; its key is the node's name.

**Count convention** (one for every layer type): statistics sum over positions and average
over samples, ``S = (1/n) Σ_i Σ_p b(i,p) b(i,p)ᵀ`` with n the number of samples. With the
per-sample loss ℓ_i (docs/math.md §1) the first-order loss change of a linear or conv edge update is
then ``−tr(δWᵀ M)`` in both cases, so gains compare across layer types.

>>> View("x").key, View("x", "patches", dim=1, kernel=(3,), stride=(1,), padding=(1,), dilation=(1,)).key
('x', 'x|conv k3 s1 p1 d1')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch.nn import functional as F

from ..graph.spec import ConvBlock, EdgeSpec, conv_output_shape

if TYPE_CHECKING:
    from ..graph import Graph


@dataclass(frozen=True)
class View:
    node: str
    kind: Literal["plain", "flatten", "patches", "tokens", "pooled"] = "plain"
    dim: int = 0
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        if self.kind in ("plain", "tokens"):
            return self.node
        if self.kind == "flatten":
            return f"{self.node}|flatten"
        size = lambda t: "x".join(map(str, t))  # noqa: E731
        if self.kind == "pooled":
            return f"{self.node}|pool {size(self.kernel)}"
        return (f"{self.node}|conv k{size(self.kernel)} s{size(self.stride)} p{size(self.padding)} "
                f"d{size(self.dilation)}")

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The positions a view is read at: the conv's output shape for patches, the token grid
        for tokens; () otherwise."""
        if self.kind == "tokens":
            return shape
        if self.kind != "patches":
            return ()
        return conv_output_shape(shape, self.kernel, self.stride, self.padding, self.dilation)

    def features(self, graph: "Graph") -> int:
        """Values per row (without the constant 1 of the bias)."""
        spec = graph.node(self.node)
        if self.kind == "tokens":
            return spec.width
        if self.kind in ("patches", "pooled"):  # a pooled view's ``kernel`` is its grid
            out = spec.width
            for k in self.kernel:
                out *= k
            return out
        return spec.features

    def signal(self, h: torch.Tensor) -> torch.Tensor:
        """The view as a multi-channel signal (n, D, *target positions): patches as channels."""
        if self.kind == "tokens":
            return h.movedim(-1, 1)
        if self.kind == "pooled":
            h = self.pool(h)
        if self.kind != "patches":
            return h.reshape(h.shape[0], -1, *([1] * max(self.dim, 1)))
        if self.dim == 2:
            cols = F.unfold(h, self.kernel, dilation=self.dilation, padding=self.padding, stride=self.stride)
            return cols.reshape(h.shape[0], cols.shape[1], *self.output_shape(tuple(h.shape[2:])))
        (k,), (s,), (p,), (d,) = self.kernel, self.stride, self.padding, self.dilation
        x = F.pad(h, (p, p)) if p else h
        span = d * (k - 1) + 1
        windows = x.unfold(2, span, s)                      # n × C × P × span
        if d > 1:
            windows = windows[..., ::d]
        n, c, positions, _ = windows.shape
        return windows.permute(0, 1, 3, 2).reshape(n, c * k, positions)

    def rows(self, h: torch.Tensor) -> torch.Tensor:
        """One row per observation: (n·P) × D, samples outer, positions inner."""
        if self.kind == "plain":
            return h
        if self.kind == "tokens":
            return h.reshape(-1, h.shape[-1])
        if self.kind == "flatten":
            return h.flatten(1)
        if self.kind == "pooled":
            return self.pool(h).flatten(1)
        if self.dim == 2:  # strided windows copied once into rows (unfold, then transposing, copies twice)
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
            x = F.pad(h, (pw, pw, ph, ph)) if ph or pw else h
            windows = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)  # n, C, H', W', span²
            if dh > 1 or dw > 1:
                windows = windows[..., ::dh, ::dw]
            return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, h.shape[1] * kh * kw)
        return as_rows(self.signal(h))

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """adaptive_avg_pool(h, grid): (n, C, *shape) → (n, C, *grid), a pooled view's values."""
        return (F.adaptive_avg_pool1d if self.dim == 1 else F.adaptive_avg_pool2d)(h, self.kernel)

    def lift(self, alpha: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Aᵀ α: fan-in rows (C·Π grid × k) on this pooled view → rows (C·Π shape × k) on the
        flattened node of ``shape`` = (C, *positions), with A the pooling (so (Aᵀα)ᵀ flatten(h) =
        αᵀ pool(h) for every h: the same function). Computed as the pooling's vector-Jacobian product."""
        k = alpha.shape[1]
        x = torch.zeros(k, *shape, dtype=alpha.dtype, device=alpha.device, requires_grad=True)
        with torch.enable_grad():
            pooled = self.pool(x)
            (grad,) = torch.autograd.grad(pooled, x, alpha.T.reshape(pooled.shape))
        return grad.reshape(k, -1).T


def pooled_view(node: str, grid: tuple[int, ...]) -> View:
    """The pooled read of the image/sequence node ``node`` on ``grid`` (one size per spatial axis)."""
    return View(node, "pooled", len(grid), tuple(grid))


def as_rows(signal: torch.Tensor) -> torch.Tensor:
    """(n, C, *positions) → (n·P) × C: samples outer, positions inner."""
    if signal.ndim == 2:
        return signal
    return signal.flatten(2).transpose(1, 2).reshape(-1, signal.shape[1])


def node_view(graph: "Graph", node: str) -> View:
    """What a linear block reads from ``node``: its value, flattened when it has a spatial shape,
    each token's features for a tokens node."""
    spec = graph.node(node)
    if spec.layout == "tokens":
        return View(node, "tokens", len(spec.shape))
    return View(node, "flatten", len(spec.shape)) if spec.shape else View(node)


def value_rows(graph: "Graph", node: str, t: torch.Tensor) -> torch.Tensor:
    """A node-shaped tensor (a value or a desired move) as rows: (n·P) × width, samples outer."""
    if graph.node(node).layout == "tokens":
        return t.reshape(-1, t.shape[-1])
    return as_rows(t)


def edge_view(graph: "Graph", edge: EdgeSpec) -> View:
    """The view of its source that a growable edge is linear in."""
    if isinstance(edge.block, ConvBlock):
        return block_view(edge.source, edge.block)
    return node_view(graph, edge.source)


def block_view(source: str, block: ConvBlock) -> View:
    """The unfolded patches a conv ``block`` reads from ``source`` (an edge's, or a new one's)."""
    return View(source, "patches", block.dim, block.kernel_size, block.stride, block.padding, block.dilation)


def positions(graph: "Graph", node: str) -> int:
    """Observations per sample at a node: Π(shape) (1 for a vector node)."""
    out = 1
    for s in graph.node(node).shape:
        out *= s
    return out


def view_positions(graph: "Graph", view: View) -> int:
    """Observations per sample of a view: the conv's output positions, the tokens (else 1)."""
    out = 1
    for s in view.output_shape(graph.node(view.node).shape):
        out *= s
    return out
