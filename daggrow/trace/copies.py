"""Copies of the user's weights for the graph: the graph never aliases the traced model."""

from __future__ import annotations

import torch
from torch import nn


def linear_copy(module: nn.Linear, scale: float = 1.0) -> nn.Linear:
    """A plain ``nn.Linear`` holding ``scale ×`` the weight and bias of ``module``.

    Same dtype, device and ``requires_grad``; hooks and subclasses are not carried over.
    ``c · (W h + b) = (cW) h + cb``, so a scalar multiple of a Linear folds into its copy.
    """
    weight = module.weight
    result = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        for name, param in result.named_parameters():
            source = getattr(module, name)
            param.copy_(source * scale if scale != 1.0 else source)
            param.requires_grad_(source.requires_grad)
    return result


def copy_norm_state(source: nn.Module, target: nn.Module) -> None:
    """Copy a BatchNorm1d/LayerNorm's affine parameters and running statistics into ``target``."""
    reference = next((t for t in [*source.parameters(), *source.buffers()] if t.is_floating_point()), None)
    if reference is not None:
        target.to(device=reference.device, dtype=reference.dtype)
    target.load_state_dict(source.state_dict())
    for name, param in target.named_parameters():
        param.requires_grad_(source.get_parameter(name).requires_grad)
