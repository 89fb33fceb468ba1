"""New conv nodes and conv edges between image/sequence nodes (growing a CNN's DAG).

Between two image nodes u and v of one dimension, v one or two layers after u, whose shapes a
conv maps one onto the other:

- ``new_node`` u → n → v: a new node n of K channels at v's positions, fan-in a 3×3 conv
  (3-wide for sequences) of u — stride 1 inside a stage, stride 2 into a stage of half the
  size — and fan-out a bias-free 1×1 conv into v: "a new 3×3 branch".
- ``new_edge`` u → v: a 1×1 conv (stride 1 or 2): "a new 1×1 or strided skip".

Both are solved in closed form exactly like their vector versions (docs/math.md §5): the fan-in reads
the unfolded patches of u at v's positions (a ``patches`` view, one row per sample and
position), and because the fan-out is 1×1 each position of v is one observation, so S, M and N
are the vector formulas summed over positions (the count convention of docs/ir.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..graph.spec import ConvBlock, conv_output_shape, is_growable

if TYPE_CHECKING:
    from ..graph import Graph

KERNELS = {"new_node": 3, "new_edge": 1}


def image_pair(graph: "Graph", u: str, v: str) -> bool:
    """u and v are image/sequence nodes (channels layout) of one dimension, v is a conv node (it
    sums its in-edges, one of them a growable conv), and v is one or two layers after u (a
    branch beside a layer or a skip over one; this keeps the candidates about linear in the
    depth: the DenseNet-like zoo model has 36 conv pairs this way, 162 with every later node)."""
    source, target = graph.node(u), graph.node(v)
    if not (bool(source.shape) and len(source.shape) == len(target.shape) and len(target.shape) in (1, 2)
            and source.layout == target.layout == "channels" and target.op is None
            and any(is_growable(e.block) for e in graph.in_edges(v))):
        return False
    near = set(graph.successors(u))
    return v in near or any(v in graph.successors(w) for w in near)


def conv_geometry(graph: "Graph", u: str, v: str, kind: str) -> ConvBlock | None:
    """The fan-in conv of a new node (3×3, padding 1) or the new edge (1×1) from u onto v's shape,
    stride 1 or 2; ``None`` when neither maps u's shape onto v's."""
    su, sv = graph.node(u).shape, graph.node(v).shape
    k = KERNELS[kind]
    for stride in (1, 2):
        if conv_output_shape(su, (k,) * len(su), (stride,) * len(su), (k // 2,) * len(su), (1,) * len(su)) == sv:
            return ConvBlock(dim=len(su), kernel_size=k, stride=stride, padding=k // 2)
    return None


def one_by_one(dim: int) -> ConvBlock:
    """The bias-free 1×1 fan-out of a new conv node."""
    return ConvBlock(dim=dim, kernel_size=1, bias=False)
