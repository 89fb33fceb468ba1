"""Which 3-d and 4-d tensors are channels-first and which hold tokens, decided before the walk.

A ``(n, A, B)`` tensor is a sequence of A channels (a Conv1d reads it) or B features of A tokens
(a Linear or a LayerNorm over the last dimension reads it); the shape alone cannot tell. The
ops that touch a tensor vote: convs, poolings, BatchNorm and flatten vote ``channels``, Linear
and LayerNorm(d) vote ``tokens``; elementwise ops (activations, dropout, sums of equal shapes,
scalar multiples, shape-keeping views) and concatenations join their tensors into one group that
shares a layout. A group is ``tokens`` when its only votes are tokens, else ``channels`` (the
default, and the tie-break: a Linear on a tensor a conv also reads stays opaque).

For ``x (n, 8, 16) → nn.Linear(16, 32) → relu``, x, the Linear's output and the relu are tokens
(8 tokens of 16, then 32, features); for ``x → nn.Conv1d(8, 4, 3)``, x is 8 channels of length 16.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from . import ops, spatial

_CHANNEL_MODULES = (*spatial.CONVS, *spatial.POOL_MODULES, nn.BatchNorm1d, nn.BatchNorm2d)


class _Groups:
    """Union-find over fx nodes, with the layout votes of each group (joined groups pool their votes)."""

    def __init__(self) -> None:
        self.parent: dict[fx.Node, fx.Node] = {}
        self.votes: dict[fx.Node, set[str]] = {}

    def vote(self, a: fx.Node, layout: str) -> None:
        self.votes.setdefault(self.find(a), set()).add(layout)

    def votes_of(self, a: fx.Node) -> set[str]:
        return self.votes.get(self.find(a), set())

    def find(self, a: fx.Node) -> fx.Node:
        self.parent.setdefault(a, a)
        while self.parent[a] is not a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def join(self, a: fx.Node, b: fx.Node) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a is not root_b:
            self.parent[root_a] = root_b
            self.votes.setdefault(root_b, set()).update(self.votes.pop(root_a, set()))


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if _shape(a) is not None]


def infer_layouts(gm: fx.GraphModule, leaf_targets: set[str]) -> dict[fx.Node, str]:
    """``"tokens"`` or ``"channels"`` for every fx node whose value is a 3-d or 4-d tensor."""
    groups = _Groups()

    def vote(node: Any, layout: str) -> None:
        shape = _shape(node)
        if shape is not None and len(shape) >= 3:
            groups.vote(node, layout)

    def join_all(nodes: list[fx.Node]) -> None:
        nodes = [n for n in nodes if (_shape(n) or ()) and len(_shape(n)) >= 3]
        for a in nodes[1:]:
            groups.join(a, nodes[0])

    for node in gm.graph.nodes:
        shape = _shape(node)
        if node.op not in ("call_module", "call_function", "call_method") or shape is None:
            continue
        args = _tensor_args(node)
        first = args[0] if args else None
        if node.op == "call_module":
            if node.target in leaf_targets:
                continue
            module = gm.get_submodule(node.target)
            if isinstance(module, nn.Linear) or (isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1):
                vote(first, "tokens"), vote(node, "tokens")
            elif isinstance(module, (*_CHANNEL_MODULES, nn.Flatten)):
                vote(first, "channels")
                if not isinstance(module, nn.Flatten):
                    vote(node, "channels")
            elif _elementwise_module(node, module):
                join_all([node, *args])
            continue
        target = node.target
        if node.op == "call_function" and target in spatial.POOL_FUNCTIONS:
            vote(first, "channels"), vote(node, "channels")
        elif _is_mean(node) and first is not None and spatial.is_spatial_mean(*_mean_args(node), len(_shape(first))):
            vote(first, "channels")
        elif _elementwise_call(node, args, shape):
            join_all([node, *[a for a in args if _shape(a) == shape]])  # a broadcast operand keeps its own
        elif _is_concat(node):
            join_all([node, *args])
    layouts: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        shape = _shape(node)
        if shape is not None and len(shape) in (3, 4):
            found = groups.votes_of(node)
            layouts[node] = "tokens" if found == {"tokens"} else "channels"
    return layouts


def _elementwise_module(node: fx.Node, module: nn.Module) -> bool:
    try:
        return ops.activation_of_module(module) is not None or ops.is_dropout(node, module) \
            or isinstance(module, nn.Identity)
    except ops.Unsupported:
        return False


def _elementwise_call(node: fx.Node, args: list[fx.Node], shape: tuple[int, ...]) -> bool:
    """Activations, arithmetic (a broadcast operand is left out of the group), dropout, stochastic
    depth and views that keep the shape."""
    same = all(_shape(a) == shape for a in args)
    if node.op == "call_method":
        name = node.target
        return ops.activation_of_method(name) is not None or name in ops.METHOD_FUNCTIONS or (
            same and name in ops.SHAPE_METHODS)
    fn = node.target
    try:
        if ops.activation_of_function(fn, node.args, node.kwargs) is not None:
            return True
    except (ops.Unsupported, TypeError):
        return False
    return fn in ops.ARITHMETIC or (same and (fn in ops.SHAPE_FUNCTIONS or fn is torch.nn.functional.dropout
                                              or ops.is_stochastic_depth(fn)))


def _is_mean(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target == "mean") or (node.op == "call_function"
                                                                     and node.target is torch.mean)


def _mean_args(node: fx.Node) -> tuple[Any, Any]:
    args, kwargs = node.args, node.kwargs
    return (args[1] if len(args) > 1 else kwargs.get("dim"), args[2] if len(args) > 2 else kwargs.get("keepdim", False))


def _is_concat(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in ops.CONCATS


def batch_first(shape: tuple[int, ...], batch: int) -> bool:
    """A tensor whose first dimension is the batch (the example inputs' first dimension)."""
    return len(shape) >= 1 and shape[0] == batch

