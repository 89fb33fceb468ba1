"""Which convolutions and poolings the tracer recognises, and the edge blocks they become.

Shapes are the traced ones, ``(batch, channels, *spatial)`` with one spatial dimension for a
sequence and two for an image:

>>> conv_block(nn.Conv1d(1, 8, 5, stride=2, padding=1), (4, 1, 40), (4, 8, 19), "nn.Conv1d")
ConvBlock(kind='conv', dim=1, kernel_size=(5,), stride=(2,), padding=(1,), dilation=(1,), groups=1, bias=True)
>>> pool_block("max", 2, call_pool_options("max", (None, 3, 2, 1), {}), (4, 8, 9, 9), (4, 8, 5, 5), "F.max_pool2d")
PoolBlock(kind='pool', op='max', dim=2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), output_size=(), ceil_mode=False, count_include_pad=True)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..graph import ConvBlock, PoolBlock
from .ops import Unsupported

CONVS = (nn.Conv1d, nn.Conv2d)
LEAF_HINT = "or keep it as a frozen edge with leaf_modules=[...] (growth never touches it)"

POOL_MODULES: dict[type, tuple[str, int]] = {
    nn.MaxPool1d: ("max", 1), nn.MaxPool2d: ("max", 2), nn.AvgPool1d: ("avg", 1), nn.AvgPool2d: ("avg", 2),
    nn.AdaptiveAvgPool1d: ("adaptive_avg", 1), nn.AdaptiveAvgPool2d: ("adaptive_avg", 2),
}
POOL_FUNCTIONS: dict[Any, tuple[str, int]] = {
    F.max_pool1d: ("max", 1), F.max_pool2d: ("max", 2), torch.max_pool1d: ("max", 1), torch.max_pool2d: ("max", 2),
    F.max_pool1d_with_indices: ("max", 1), F.max_pool2d_with_indices: ("max", 2),
    F.avg_pool1d: ("avg", 1), F.avg_pool2d: ("avg", 2),
    F.adaptive_avg_pool1d: ("adaptive_avg", 1), F.adaptive_avg_pool2d: ("adaptive_avg", 2),
}
_WITH_INDICES = {F.max_pool1d_with_indices, F.max_pool2d_with_indices}

# the options after the input tensor, in positional order, and their defaults
_POOL_OPTIONS: dict[str, tuple[str, ...]] = {
    "max": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "adaptive_avg": ("output_size",),
}
_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False,
             "count_include_pad": True, "divisor_override": None, "output_size": None}


# ----------------------------------------------------------------------------- convolutions
def conv_block(module: nn.Conv1d | nn.Conv2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
               label: str) -> ConvBlock:
    """The :class:`ConvBlock` of a conv module applied to a tensor of shape ``in_shape``."""
    dim = 1 if isinstance(module, nn.Conv1d) else 2
    _check_batched(in_shape, dim, label, "convolution")
    if module.padding_mode != "zeros":
        raise Unsupported(f"{label} with padding_mode={module.padding_mode!r}",
                          f"use padding_mode='zeros' (a conv edge pads with zeros), {LEAF_HINT}")
    block = ConvBlock(dim=dim, kernel_size=module.kernel_size, stride=module.stride,
                      padding=_conv_padding(module, label), dilation=module.dilation, groups=module.groups,
                      bias=module.bias is not None)
    if block.output_shape(in_shape[2:]) != tuple(out_shape[2:]):
        raise Unsupported(f"{label}, whose output shape {out_shape} daggrow cannot reproduce",
                          f"report this model as a daggrow bug, {LEAF_HINT}")
    return block


def _conv_padding(module: nn.Conv1d | nn.Conv2d, label: str) -> tuple[int, ...]:
    """The padding as numbers: ``"valid"`` is none, ``"same"`` the symmetric padding it adds."""
    if not isinstance(module.padding, str):
        return tuple(module.padding)
    if module.padding == "valid":
        return (0,) * len(module.kernel_size)
    total = [d * (k - 1) for k, d in zip(module.kernel_size, module.dilation)]
    if any(t % 2 for t in total):
        raise Unsupported(f"{label} with padding='same' and kernel_size={module.kernel_size}, "
                          f"dilation={module.dilation} (it pads one side more than the other)",
                          f"use an odd kernel size (or explicit padding=...), {LEAF_HINT}")
    return tuple(t // 2 for t in total)


# ----------------------------------------------------------------------------- pooling
def module_pool_options(module: nn.Module, op: str) -> dict[str, Any]:
    """The options of a pooling module, by name."""
    return {name: getattr(module, name, _DEFAULTS.get(name)) for name in _POOL_OPTIONS[op]}


def call_pool_options(op: str, args: tuple, kwargs: dict, fn: Any = None) -> dict[str, Any]:
    """The options of a pooling function call (``args`` start with the input), by name."""
    names = _POOL_OPTIONS[op]
    positional = args[1:] if args else ()
    options = {name: _DEFAULTS.get(name) for name in names}
    options.update(zip(names, positional))
    options.update({k: v for k, v in kwargs.items() if k in options})
    if fn in _WITH_INDICES:
        options["return_indices"] = True
    return options


def pool_block(op: str, dim: int, options: dict[str, Any], in_shape: tuple[int, ...],
               out_shape: tuple[int, ...], label: str) -> PoolBlock:
    """The :class:`PoolBlock` of a pooling with these options, or :class:`Unsupported`."""
    if not isinstance(options.get("ceil_mode", False), bool) or not isinstance(
            options.get("count_include_pad", True), bool):
        raise Unsupported(f"{label} with ceil_mode={options.get('ceil_mode')!r}, count_include_pad="
                          f"{options.get('count_include_pad')!r}", "pass them as Python bools")
    if options.get("return_indices") is True:
        raise Unsupported(f"{label} with return_indices=True",
                          "a daggrow edge carries one tensor: pool without the indices, or keep the code that "
                          "uses them (e.g. max_unpool) in a module passed with leaf_modules=[...]")
    for name, value in options.items():
        if _has_node(value):
            raise Unsupported(f"{label} with {name} computed while tracing (e.g. from a shape)",
                              f"write {name} as Python numbers (the graph's shapes are fixed)")
    _check_batched(in_shape, dim, label, "pooling")
    if op == "adaptive_avg":
        return PoolBlock(op=op, dim=dim, output_size=tuple(out_shape[2:]))
    _check_pool_options(op, options, label)
    try:
        block = PoolBlock(op=op, dim=dim, kernel_size=options["kernel_size"], stride=options["stride"],
                          padding=options["padding"], ceil_mode=bool(options["ceil_mode"]),
                          count_include_pad=options.get("count_include_pad", True) is not False)
    except ValueError as err:
        raise Unsupported(f"{label} with kernel_size={options['kernel_size']!r}, stride={options['stride']!r}, "
                          f"padding={options['padding']!r} ({err})", "give one size, or one per spatial "
                          "dimension, as Python numbers") from None
    computed = block.output_shape(in_shape[2:])
    if computed != tuple(out_shape[2:]):  # the shape torch measured is the truth
        raise Unsupported(f"{label}, which gives the spatial shape {tuple(out_shape[2:])} where daggrow computes "
                          f"{computed}", f"report this model as a daggrow bug, {LEAF_HINT}")
    return block


def _check_pool_options(op: str, options: dict[str, Any], label: str) -> None:
    """Refuse what a :class:`PoolBlock` does not compute: dilation, divisor override."""
    if op == "max" and any(d != 1 for d in _sizes(options["dilation"])):
        raise Unsupported(f"{label} with dilation={options['dilation']!r}", "use dilation=1, " + LEAF_HINT)
    if op != "avg":
        return
    if options["divisor_override"] is not None:
        raise Unsupported(f"{label} with divisor_override={options['divisor_override']!r}",
                          "drop divisor_override (or scale the result by a Python number), " + LEAF_HINT)


def is_spatial_mean(dims: Any, keepdim: Any, ndim: int) -> bool:
    """True when ``mean(dim=dims, keepdim=keepdim)`` of an ``ndim``-d tensor averages exactly its spatial dimensions."""
    dims = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (tuple, list)) else None
    if ndim < 3 or dims is None or not isinstance(keepdim, bool) or not all(isinstance(d, int) for d in dims):
        return False
    return sorted(d % ndim for d in dims) == list(range(2, ndim))


def _check_batched(in_shape: tuple[int, ...], dim: int, label: str, what: str) -> None:
    if len(in_shape) != dim + 2:
        spatial = "length" if dim == 1 else "height, width"
        raise Unsupported(f"{label} applied to a tensor of shape {tuple(in_shape)}",
                          f"a {dim}-d {what} reads a (batch, channels, {spatial}) tensor: keep the batch dimension")


def _sizes(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _has_node(value: Any) -> bool:
    if isinstance(value, fx.Node):
        return True
    return isinstance(value, (tuple, list)) and any(_has_node(v) for v in value)
