"""What each kind of edge block means for shapes, modules and the forward pass.

One place answers, for every block kind: which source/target shapes it joins
(:func:`check_shapes`), which module it holds (:func:`default_module`, :func:`check_module`),
and how it maps the source's value to a term of the target's pre-activation
(:func:`edge_forward`, used by the evaluator; the code generator emits the same calls).

>>> from daggrow.graph.spec import ConvBlock, NodeSpec
>>> x, h = NodeSpec(name="x", width=1, shape=(40,)), NodeSpec(name="h", width=8, shape=(19,))
>>> check_shapes(ConvBlock(dim=1, kernel_size=5, stride=2, padding=1), x, h, "e")
>>> default_module(ConvBlock(dim=1, kernel_size=5, stride=2, padding=1), x, h)
Conv1d(1, 8, kernel_size=(5,), stride=(2,), padding=(1,))
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import GraphError, WidthMismatchError
from .spec import (Block, ConvBlock, FlattenBlock, FrozenBlock, IdentityBlock, LinearBlock, NodeSpec, OperandBlock,
                   PlaceBlock, PoolBlock)


def _where(name: str, source: NodeSpec, target: NodeSpec) -> str:
    return (f"edge {name!r} from {source.name!r} ({_describe(source)}) to {target.name!r} ({_describe(target)})")


def _describe(node: NodeSpec) -> str:
    if node.layout == "opaque":
        return "an opaque value"
    if node.layout == "tokens":
        return f"{'×'.join(map(str, node.shape))} tokens × {node.width}"
    return f"width {node.width}" if not node.shape else f"{node.width} channels × {'×'.join(map(str, node.shape))}"


def linear_in_features(source: NodeSpec, target: NodeSpec) -> int:
    """Input features of a linear block: per token between token nodes, else the flattened source."""
    return source.width if target.layout == "tokens" else source.features


def check_shapes(block: Block, source: NodeSpec, target: NodeSpec, name: str) -> None:
    """Raise :class:`WidthMismatchError` when ``block`` cannot join ``source`` to ``target``.

    An op node's in-edges are its operands (:class:`OperandBlock`), and operands enter only op
    nodes; an opaque-layout value is read only through operands.
    """
    where = _where(name, source, target)
    if isinstance(block, OperandBlock) != (target.op is not None):
        raise GraphError(f"{where}: an op node's in-edges are operand blocks, and operand blocks enter op nodes only")
    if isinstance(block, OperandBlock):
        if block.position >= target.op.inputs:
            raise GraphError(f"{where}: operand position {block.position}, but the op takes {target.op.inputs} input(s)")
        return
    if source.layout == "opaque" and not isinstance(block, FrozenBlock):
        raise WidthMismatchError(f"{where}: only op nodes (operand edges) and frozen edges read an opaque value")
    if isinstance(block, LinearBlock):
        if target.layout == "tokens":
            if source.layout != "tokens" or source.shape != target.shape:
                raise WidthMismatchError(f"{where}: a linear block into a tokens node is applied per token: its "
                                         "source must be a tokens node with the same token grid")
        elif target.shape:
            raise WidthMismatchError(f"{where}: a linear block writes a vector node (or, per token, a tokens node); use a conv block "
                                     "for an image/sequence target")
        elif source.layout == "tokens":
            raise WidthMismatchError(f"{where}: a linear block from a tokens node writes a tokens node (per token); "
                                     "reduce the tokens first (an op node such as a mean or a class token)")
    elif isinstance(block, (IdentityBlock, PlaceBlock)):
        if (source.layout, source.shape) != (target.layout, target.shape):
            raise WidthMismatchError(f"{where}: an {block.kind} block joins nodes of one layout and shape")
        if isinstance(block, IdentityBlock) and source.width != target.width:
            raise WidthMismatchError(f"{where}: an identity needs equal widths and shapes: use a linear "
                                     "(or conv) block instead")
        if isinstance(block, PlaceBlock) and block.offset + source.width > target.width:
            raise WidthMismatchError(f"{where}: placing {source.width} features at offset {block.offset} "
                                     f"overruns the target's {target.width}")
    elif not isinstance(block, FrozenBlock) and "tokens" in (source.layout, target.layout):
        raise WidthMismatchError(f"{where}: a {block.kind} block joins channels-first nodes, not tokens nodes")
    elif isinstance(block, ConvBlock):
        if len(source.shape) != block.dim or len(target.shape) != block.dim:
            raise WidthMismatchError(f"{where}: a {block.dim}-d conv joins nodes with {block.dim}-d shapes")
        if source.width % block.groups or target.width % block.groups:
            raise WidthMismatchError(f"{where}: groups={block.groups} must divide both channel counts")
        out = block.output_shape(source.shape)
        if out != target.shape:
            raise WidthMismatchError(f"{where}: the conv maps shape {source.shape} to {out}, not {target.shape}")
    elif isinstance(block, PoolBlock):
        if len(source.shape) != block.dim or source.width != target.width:
            raise WidthMismatchError(f"{where}: a {block.dim}-d pool keeps the channels of a {block.dim}-d node")
        out = block.output_shape(source.shape)
        if out != target.shape:
            raise WidthMismatchError(f"{where}: the pool maps shape {source.shape} to {out}, not {target.shape}")
    elif isinstance(block, FlattenBlock):
        if target.shape or target.width != source.features:
            raise WidthMismatchError(f"{where}: flatten gives a vector of {source.features} features")


def default_module(block: Block, source: NodeSpec, target: NodeSpec) -> nn.Module:
    """A freshly initialised module for a block (PyTorch's default initialisation)."""
    if isinstance(block, LinearBlock):
        return nn.Linear(linear_in_features(source, target), target.width, bias=block.bias)
    if isinstance(block, ConvBlock):
        conv = nn.Conv1d if block.dim == 1 else nn.Conv2d
        return conv(source.width, target.width, block.kernel_size, stride=block.stride, padding=block.padding,
                    dilation=block.dilation, groups=block.groups, bias=block.bias)
    if isinstance(block, (IdentityBlock, PoolBlock, FlattenBlock, PlaceBlock, OperandBlock)):
        return nn.Identity()
    raise GraphError(f"a {block.kind} block has no default module: pass module=")


def check_module(block: Block, module: nn.Module, source: NodeSpec, target: NodeSpec, name: str) -> None:
    """Raise when ``module`` does not implement ``block`` between these nodes."""
    if isinstance(block, LinearBlock):
        if not isinstance(module, nn.Linear):
            raise GraphError(f"linear edge {name!r} needs an nn.Linear, got {type(module).__name__}")
        expected = (target.width, linear_in_features(source, target))
        if tuple(module.weight.shape) != expected:
            raise WidthMismatchError(f"{_where(name, source, target)} needs a weight of shape {expected}, "
                                     f"got {tuple(module.weight.shape)}")
    elif isinstance(block, ConvBlock):
        kind = nn.Conv1d if block.dim == 1 else nn.Conv2d
        if type(module) is not kind:
            raise GraphError(f"conv edge {name!r} needs an nn.{kind.__name__}, got {type(module).__name__}")
        expected = (target.width, source.width // block.groups, *block.kernel_size)
        got = (tuple(module.weight.shape), module.stride, module.padding, module.dilation, module.groups)
        if got != (expected, block.stride, block.padding, block.dilation, block.groups):
            raise WidthMismatchError(f"{_where(name, source, target)}: the module (weight {got[0]}, stride "
                                     f"{got[1]}, padding {got[2]}, dilation {got[3]}, groups {got[4]}) differs "
                                     f"from the block (weight {expected}, {block.stride}, {block.padding}, "
                                     f"{block.dilation}, {block.groups})")
        if module.padding_mode != "zeros":
            raise GraphError(f"conv edge {name!r}: only padding_mode='zeros' is supported")
    elif isinstance(block, FrozenBlock):
        if not isinstance(module, nn.Module):
            raise GraphError(f"frozen edge {name!r} needs an nn.Module")
        return
    else:
        if not isinstance(module, nn.Identity):
            raise GraphError(f"{block.kind} edge {name!r} has no parameters; its module must be nn.Identity")
        return
    if (module.bias is not None) != block.bias:
        raise GraphError(f"{block.kind} edge {name!r}: the block says bias={block.bias} but the module "
                         f"{'has' if module.bias is not None else 'has no'} bias")


def parameter_free_function(block: Block, source: NodeSpec | None = None,
                            target: NodeSpec | None = None) -> tuple[Callable, tuple, dict]:
    """``(function, extra args, kwargs)`` computing a parameter-free block: ``function(h, *args, **kwargs)``.

    A placement needs its ``source`` and ``target`` (it pads the source's features with zeros
    up to the target's, then scales)."""
    if isinstance(block, IdentityBlock):
        return torch.mul, (block.scale,), {}
    if isinstance(block, FlattenBlock):
        return torch.flatten, (1,), {}
    if isinstance(block, PlaceBlock):
        return F.pad, (placement_padding(block, source, target),), {}
    if isinstance(block, PoolBlock):
        if block.op == "adaptive_avg":
            fn = F.adaptive_avg_pool1d if block.dim == 1 else F.adaptive_avg_pool2d
            return fn, (block.output_size,), {}
        fn = {("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d,
              ("avg", 1): F.avg_pool1d, ("avg", 2): F.avg_pool2d}[(block.op, block.dim)]
        kwargs: dict = {"ceil_mode": True} if block.ceil_mode else {}
        if block.op == "avg" and not block.count_include_pad:
            kwargs["count_include_pad"] = False
        return fn, (block.kernel_size, block.stride, block.padding), kwargs
    raise GraphError(f"a {block.kind} block has parameters")


def placement_padding(block: PlaceBlock, source: NodeSpec, target: NodeSpec) -> tuple[int, ...]:
    """``F.pad`` widths putting the source's features at ``[offset, offset + width)`` of the target's."""
    after = target.width - block.offset - source.width
    if source.layout == "tokens":
        return (block.offset, after)
    return (0, 0) * len(source.shape) + (block.offset, after)


def tiles(blocks: list[Block], sources: list[NodeSpec], target: NodeSpec) -> list[int] | None:
    """When unscaled placements cover the target's features exactly once, the order of the in-edges
    by offset (the node is then ``torch.cat`` of their sources); else ``None``."""
    if not blocks or not all(isinstance(b, PlaceBlock) and b.scale == 1.0 for b in blocks):
        return None
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].offset)
    end = 0
    for i in order:
        if blocks[i].offset != end:
            return None
        end += sources[i].width
    return order if end == target.width else None


def flattens_source(block: Block, source: NodeSpec) -> bool:
    """A linear block reading an image/sequence node flattens it first (a tokens source: per token)."""
    return isinstance(block, LinearBlock) and source.spatial


def edge_forward(block: Block, module: nn.Module, source: NodeSpec, h: torch.Tensor,
                 target: NodeSpec | None = None) -> torch.Tensor:
    """The term ``f_e(h_u)`` that the edge adds to its target's pre-activation (a placement
    needs the ``target``; an operand is its source's value, passed to the target's program)."""
    if isinstance(block, OperandBlock):
        return h
    if block.kind in ("identity", "pool", "flatten", "place"):
        if isinstance(block, IdentityBlock) and block.scale == 1.0:
            return h
        fn, args, kwargs = parameter_free_function(block, source, target)
        out = fn(h, *args, **kwargs)
        return out * block.scale if isinstance(block, PlaceBlock) and block.scale != 1.0 else out
    if flattens_source(block, source):
        h = torch.flatten(h, 1)
    return module(h)
