"""Carry an optimizer across a rewrite: moments of existing weights kept, new entries zero.

Parameters are matched by their graph names (``edge:<name>.weight``). A grown tensor keeps
its old values in its leading block (rewrites append rows/columns), so the optimizer state is
copied there and the new rows/columns start at zero; where a widening through a concatenation
inserted them inside a tensor (``daggrow.grow.widening.inserted_entries``), the state moves
around them. Nothing is reset silently: a state that
cannot be carried (a pruned tensor) is dropped with a warning.
"""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Iterable

import torch

from .widening import inserted_entries

if TYPE_CHECKING:
    from ..graph import Graph


def default_optimizer(params: Iterable[torch.nn.Parameter], lr: float = 1e-3) -> torch.optim.Optimizer:
    """Adam over ``params`` with torch's fused kernel (one kernel for all parameters) where it
    supports them (floating point, CPU or CUDA), else its multi-tensor (foreach) form; both
    compute the same update as the per-tensor loop, in fewer, larger operations."""
    params = list(params)
    devices = {p.device.type for p in params}
    if params and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch, or a dtype it does not fuse
            pass
    return torch.optim.Adam(params, lr=lr, foreach=bool(params))


def _grown(old: torch.Tensor, new_shape: torch.Size) -> torch.Tensor | None:
    if old.shape == new_shape:
        return old.clone()
    if old.ndim != len(new_shape) or any(o > n for o, n in zip(old.shape, new_shape)):
        return None
    out = old.new_zeros(new_shape)
    out[tuple(slice(0, o) for o in old.shape)] = old
    return out


def _inserted(old: torch.Tensor, new_shape: torch.Size, dim: int, at: int, count: int) -> torch.Tensor | None:
    """``old`` with ``count`` zero slices inserted before ``at`` along ``dim`` (a widening through a
    concatenation inserts its new columns inside the readers' weights)."""
    zeros = old.new_zeros(*old.shape[:dim], count, *old.shape[dim + 1:])
    out = torch.cat([old.narrow(dim, 0, at), zeros, old.narrow(dim, at, old.shape[dim] - at)], dim)
    return out if out.shape == new_shape else None


def _constructor_defaults(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's defaults that its constructor accepts (AdamW, for one, records a
    ``decoupled_weight_decay`` default its ``__init__`` does not take); the param groups carry
    every hyper-parameter anyway."""
    params = inspect.signature(type(optimizer).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(optimizer.defaults)
    return {k: v for k, v in optimizer.defaults.items() if k in params}


def carry_optimizer(optimizer: torch.optim.Optimizer, old: "Graph", new: "Graph") -> torch.optim.Optimizer:
    """A new optimizer of the same class and hyper-parameters over ``new``'s parameters,
    with the state of ``optimizer`` (built over ``old``'s parameters) carried by name."""
    old_names = {id(p): name for name, p in old.named_parameters()}
    new_params = dict(new.named_parameters())
    groups, placed = [], set()
    for group in optimizer.param_groups:
        names = [old_names[id(p)] for p in group["params"] if id(p) in old_names]
        params = [new_params[n] for n in names if n in new_params]
        placed.update(n for n in names if n in new_params)
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
    fresh = [p for n, p in new_params.items() if n not in placed and p.requires_grad]
    if fresh:
        groups[0]["params"] = groups[0]["params"] + fresh
    groups = [g for g in groups if g["params"]]
    carried = type(optimizer)(groups, **_constructor_defaults(optimizer))
    moved = inserted_entries(old, new)
    for p_old, state in optimizer.state.items():
        name = old_names.get(id(p_old))
        if name is None or name not in new_params or not state:
            continue
        p_new = new_params[name]
        new_state = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == p_old.shape:
                grown = _inserted(value, p_new.shape, *moved[name]) if name in moved else _grown(value, p_new.shape)
                if grown is None:
                    warnings.warn(f"optimizer state {key!r} of {name} could not follow the rewrite "
                                  f"({tuple(value.shape)} -> {tuple(p_new.shape)}); it restarts from zero",
                                  stacklevel=2)
                    new_state = {}
                    break
                new_state[key] = grown
            else:
                new_state[key] = value.clone() if torch.is_tensor(value) else value
        if new_state:
            carried.state[p_new] = new_state
    return carried
