"""Copies of the user's weights for the graph: the graph never aliases the traced model."""

from __future__ import annotations

import torch
from torch import nn

from ..graph import ConvBlock


def linear_copy(module: nn.Linear, scale: float = 1.0) -> nn.Linear:
    """A plain ``nn.Linear`` holding ``scale ×`` the weight and bias of ``module``.

    Same dtype, device and ``requires_grad``; hooks and subclasses are not carried over.
    ``c · (W h + b) = (cW) h + cb``, so a scalar multiple of a Linear folds into its copy.
    """
    weight = module.weight
    result = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    _copy_parameters(module, result, scale)
    return result


def conv_copy(module: nn.Conv1d | nn.Conv2d, block: ConvBlock, scale: float = 1.0) -> nn.Module:
    """A plain ``nn.Conv1d``/``nn.Conv2d`` as ``block`` describes it, holding ``scale ×`` the
    weight and bias of ``module`` (a convolution is linear, so the scale folds in as for a Linear).

    The padding is written out as numbers (``padding="same"`` becomes the symmetric padding it means).
    """
    weight = module.weight
    kind = nn.Conv1d if block.dim == 1 else nn.Conv2d
    result = kind(module.in_channels, module.out_channels, block.kernel_size, stride=block.stride,
                  padding=block.padding, dilation=block.dilation, groups=block.groups, bias=block.bias,
                  device=weight.device, dtype=weight.dtype)
    _copy_parameters(module, result, scale)
    return result


def _copy_parameters(source: nn.Module, target: nn.Module, scale: float) -> None:
    with torch.no_grad():
        for name, param in target.named_parameters():
            value = getattr(source, name)
            param.copy_(value * scale if scale != 1.0 else value)
            param.requires_grad_(value.requires_grad)


def copy_norm_state(source: nn.Module, target: nn.Module) -> None:
    """Copy a BatchNorm1d/2d or LayerNorm's affine parameters and running statistics into ``target``."""
    reference = next((t for t in [*source.parameters(), *source.buffers()] if t.is_floating_point()), None)
    if reference is not None:
        target.to(device=reference.device, dtype=reference.dtype)
    target.load_state_dict(source.state_dict())
    for name, param in target.named_parameters():
        param.requires_grad_(source.get_parameter(name).requires_grad)
