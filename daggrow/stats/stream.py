"""One pass over a loader: hooks on the compiled graph, per-sample losses, desired moves.

Per batch: forward through the compiled module (eval mode by default), per-sample losses ℓ_i,
then ``torch.autograd.grad(Σ ℓ_i, [z_v …])`` gives ∂ℓ_i/∂z_v for every sample at once (no
weight gradients are computed); v_goal = −∂ℓ_i/∂z_v (docs/math.md §2). The statistics passes
(:mod:`.collect`, :mod:`.residual`) consume the values and moves batch by batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from ..errors import StatisticsError
from .losses import LossLike, per_sample_loss

if TYPE_CHECKING:
    from ..graph import Graph


def split_batch(batch: Any, graph: "Graph | None" = None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """``(x, y)`` or ``((x1, x2), y)`` → (inputs tuple, targets); with ``graph``, the inputs are
    checked against its input nodes (:func:`check_inputs`)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise StatisticsError("each batch must be a pair (x, y), with x a tensor or a tuple of tensors")
    x, y = batch
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if graph is not None:
        check_inputs(graph, xs)
    if not isinstance(y, torch.Tensor):
        raise StatisticsError(f"the targets y must be a tensor, got {type(y).__name__}")
    return xs, y


def check_inputs(graph: "Graph", xs: tuple[torch.Tensor, ...]) -> None:
    """One tensor per input node, shaped (batch, *value shape) and of the parameters' dtype;
    a :class:`StatisticsError` that names the input and the fix otherwise (before anything runs)."""
    names = graph.inputs
    if len(xs) != len(names):
        raise StatisticsError(f"the graph has {len(names)} input(s) {names} but the batch gives {len(xs)} tensor(s)")
    dtype = next((p.dtype for p in graph.parameters()), None)
    for name, x in zip(names, xs):
        spec = graph.node(name)
        want = spec.value_shape
        if not isinstance(x, torch.Tensor):
            raise StatisticsError(f"input {name!r} must be a tensor, got {type(x).__name__}")
        if want is not None and tuple(x.shape[1:]) != want:
            raise StatisticsError(f"input {name!r}: got a batch of shape {tuple(x.shape)}, the graph expects "
                                  f"(batch, {', '.join(map(str, want))})")
        if dtype is not None and x.dtype != dtype:
            raise StatisticsError(f"input {name!r} is {x.dtype} but the graph's parameters are {dtype}: convert the "
                                  f"data (e.g. x.to({dtype})) or the parameters")


def graph_device(graph: "Graph") -> torch.device:
    for p in graph.parameters():
        return p.device
    return torch.device("cpu")


def stream(graph: "Graph", module: torch.nn.Module, loader: Iterable, loss: LossLike, device: torch.device,
            value_nodes: set[str], grads_order: list[str], max_batches: int | None, desc: str, progress: bool,
            consume: Callable[[int, dict[str, torch.Tensor], dict[str, torch.Tensor]], None]) -> tuple[int, tuple]:
    """One pass over ``loader``: per batch a forward with hooks on the values of ``value_nodes`` and
    on the pre-activations z_t of ``grads_order``, per-sample losses, one ``autograd.grad`` for the
    desired moves −∂ℓ_i/∂z_t, then ``consume(samples, values, moves)``. Returns the number of
    samples seen and a fingerprint of them that does not depend on their order (float64 sums of
    the inputs, their squares and the targets): two passes over the same samples agree on it
    to round-off, two passes over different samples almost never do."""
    values: dict[str, torch.Tensor] = {}
    pre: dict[str, torch.Tensor] = {}

    def value_hook(node: str):
        def hook(_m, _inp, out):
            values[node] = out.detach()
        return hook

    def pre_hook(node: str):
        def hook(_m, _inp, out):
            if not out.requires_grad:  # nothing upstream is trainable: make z a leaf
                out = out.detach().requires_grad_()
            pre[node] = out
            return out
        return hook

    taps = module.daggrow_tap_attrs
    handles = [module.get_submodule(taps[(node, "value")]).register_forward_hook(value_hook(node))
               for node in value_nodes]
    handles += [module.get_submodule(taps[(node, "pre")]).register_forward_hook(pre_hook(node))
                for node in grads_order]
    batches = loader
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(loader, desc=desc, unit="batch", leave=False)
    seen, fingerprint = 0, torch.zeros(3, dtype=torch.float64, device=device)
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            xs, y = split_batch(batch, graph)
            xs = tuple(x.to(device) for x in xs)
            y = y.to(device)
            for x in xs:
                if not _finite(x):
                    raise StatisticsError(f"batch {index}: the inputs contain NaN or infinite values")
            if not _finite(y):
                raise StatisticsError(f"batch {index}: the targets contain NaN or infinite values")
            values.clear(), pre.clear()
            with torch.enable_grad():
                out = module(*xs)
                losses = per_sample_loss(loss, out, y)
                if not torch.isfinite(losses).all():
                    raise StatisticsError(f"batch {index}: the loss is NaN or infinite")
                zs = [pre[t] for t in grads_order]
                grads = torch.autograd.grad(losses.sum(), zs, allow_unused=True) if zs else []
            moves = {t: (-g if g is not None else torch.zeros_like(z)).detach()
                     for t, z, g in zip(grads_order, zs, grads)}
            n = xs[0].shape[0]
            consume(n, values, moves)
            seen += n
            for x in xs:
                fingerprint[0] += x.sum(dtype=torch.float64)
                fingerprint[1] += x.to(torch.float64).square().sum()
            fingerprint[2] += y.sum(dtype=torch.float64)
    finally:
        for h in handles:
            h.remove()
    return seen, tuple(fingerprint.tolist())


def _finite(t: torch.Tensor) -> bool:
    """No NaN or ±inf in ``t``: a NaN or inf makes the sum non-finite, so one reduction (no
    boolean mask) settles the common case; only a non-finite sum (maybe an overflow) is checked
    element-wise."""
    return not t.is_floating_point() or bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())
