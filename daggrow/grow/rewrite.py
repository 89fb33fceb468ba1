"""Graph rewrites: pure and atomic. Each takes a graph and tensors, returns a new validated graph.

The input graph is never modified: every rewrite works on ``graph.copy()`` and validates it
before returning, so an error leaves the caller with exactly what it had. No linear algebra
here: the tensors to write come from the solver; rewrites only place them.

One rewrite widens a node (``add_neurons``), whatever the node: an MLP layer or a DAG node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from ..errors import GraphError
from ..graph.spec import ConvBlock, GrowthRecord, is_growable
from .conv_dag import one_by_one
from .widening import widening

if TYPE_CHECKING:
    from ..graph import Graph


def _rebuilt(old: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A module of ``old``'s kind (Linear or ConvNd, same geometry) holding ``weight`` and ``bias``."""
    if isinstance(old, nn.Linear):
        return _linear(weight, bias)
    layer = type(old)(weight.shape[1] * old.groups, weight.shape[0], old.kernel_size, stride=old.stride,
                      padding=old.padding, dilation=old.dilation, groups=old.groups, bias=bias is not None,
                      device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _by_channel(weight: torch.Tensor, width: int) -> torch.Tensor:
    """An out-edge weight as (rows, channels of the source, rest): rest is 1 for a linear edge from
    a vector node, the kernel offsets of a conv, the flattened positions of a linear from an image."""
    return weight.reshape(weight.shape[0], width, -1)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device=ref.device, dtype=ref.dtype)


def _finish(new: "Graph", record: GrowthRecord) -> "Graph":
    new.growth_log.append(record)
    new.validate(complete=True)
    return new


def add_neurons(
    graph: "Graph",
    node: str,
    fan_in: dict[str, torch.Tensor],
    fan_out: dict[str, torch.Tensor],
    bias: dict[str, torch.Tensor] | None = None,
    *,
    step: int | None = None,
    action: str = "expand_node",
) -> "Graph":
    """Append K neurons (channels, for an image/sequence node) to ``node``: rows ``fan_in[e]``
    (K × the rest of e's weight shape: K × d_u for a linear edge, K × C_u × k for a conv) on every
    in-edge e, columns ``fan_out[e]`` on every reader e of the new features (d_v × K for a linear
    edge, C_v × K × k for a conv, d_v × K·P channel-major for a linear edge that flattens its
    source), and new bias entries ``bias[e]`` (K,) (zero where not given). Edges left out of
    ``fan_in``/``fan_out`` get zeros.

    The readers are ``node``'s out-edges and, when ``node`` is concatenated into c, c's readers
    (``daggrow.grow.widening``): c gains the K features at index offset + d_node, the placements
    after them shift by K, c's readers take their columns there, growable edges into c get zero
    rows. A BatchNorm of a widened node gains identity entries (weight 1, bias 0, running mean 0,
    running variance 1).
    """
    plan = widening(graph, node)
    if isinstance(plan, str):
        raise GraphError(f"node {node!r} cannot gain neurons: {plan}")
    names_in = set(plan.in_edges)
    stray = (set(fan_in) - names_in) | (set(fan_out) - set(plan.out_edges)) | (set(bias or {}) - names_in)
    if stray:
        raise GraphError(f"edges {sorted(stray)} are not in-edges of {node!r} or readers of its new neurons "
                         f"({sorted(plan.out_edges)})")
    rests = {e: _rest(graph, e) for e in fan_out}
    sizes = {t.shape[0] for t in fan_in.values()} | {t[0].numel() // rests[e] for e, t in fan_out.items()}
    if len(sizes) != 1:
        raise GraphError(f"fan-in and fan-out disagree on the number of new neurons: {sorted(sizes)}")
    k = sizes.pop()
    new = graph.copy()
    new.step = graph.step if step is None else step
    for e in plan.in_edges:
        old = graph.module(e)
        shape = (k, *old.weight.shape[1:])
        rows = _like(fan_in[e], old.weight) if e in fan_in else old.weight.new_zeros(shape)
        if tuple(rows.shape) != shape:
            raise GraphError(f"fan-in of edge {e!r} has shape {tuple(rows.shape)}, expected {shape}")
        b = None
        if old.bias is not None:
            b = _like(bias[e], old.bias) if bias and e in bias else old.bias.new_zeros(k)
        elif bias and e in bias:
            raise GraphError(f"edge {e!r} has no bias; cannot give the new neurons a bias through it")
        new._replace_edge_module(e, _with_rows(old, rows, b, old.weight.shape[0]))
    for e in plan.zero_rows:  # growable edges into a concatenation: zero rows at the new features
        old, (at, mult) = graph.module(e), plan.inserts[graph.edge(e).target]
        rows = old.weight.new_zeros(k * mult, *old.weight.shape[1:])
        new._replace_edge_module(e, _with_rows(old, rows, None if old.bias is None else old.bias.new_zeros(k * mult), at))
    for e in plan.depthwise:  # a unit filter (1 at the centre tap) per new channel: its value passes on
        old, (at, mult) = graph.module(e), plan.inserts[graph.edge(e).target]
        unit = old.weight.new_zeros(k * mult, *old.weight.shape[1:])
        unit[(slice(None), 0, *(s // 2 for s in old.weight.shape[2:]))] = 1.0
        spec = graph.edge(e)
        block = spec.block.model_copy(update={"groups": spec.block.groups + k * mult})
        new._replace_edge_spec(spec.model_copy(update={"block": block}))
        w = old.weight.detach()
        b = None if old.bias is None else torch.cat([old.bias.detach()[:at], old.bias.new_zeros(k * mult),
                                                     old.bias.detach()[at:]])
        new._replace_edge_module(e, _conv(block, torch.cat([w[:at], unit, w[at:]]), block.groups, b))
    for e in plan.out_edges + plan.zero_edges:
        old, source = graph.module(e), graph.edge(e).source
        (at, mult), width = plan.inserts[source], graph.node(source).width
        grouped = _by_channel(old.weight.detach(), width)
        if e in fan_out:
            cols = _like(fan_out[e], old.weight)
            if cols.numel() != grouped.shape[0] * k * grouped.shape[2]:
                raise GraphError(f"fan-out of edge {e!r} has shape {tuple(cols.shape)}: expected "
                                 f"{grouped.shape[0]} × {k} × {grouped.shape[2]} values")
            cols = cols.reshape(grouped.shape[0], k, grouped.shape[2])
        else:
            cols = grouped.new_zeros(grouped.shape[0], k * mult, grouped.shape[2])
        weight = torch.cat([grouped[:, :at], cols, grouped[:, at:]], 1).reshape(old.weight.shape[0], -1,
                                                                                 *old.weight.shape[2:])
        new._replace_edge_module(e, _rebuilt(old, weight, None if old.bias is None else old.bias.detach().clone()))
    for e in plan.shifted:
        spec = graph.edge(e)
        block = spec.block.model_copy(update={"offset": spec.block.offset + k * plan.inserts[spec.target][1]})
        new._replace_edge_spec(spec.model_copy(update={"block": block}))
    for x, (at, mult) in plan.inserts.items():
        spec = graph.node(x)
        new._replace_node(spec.model_copy(update={"width": spec.width + k * mult}),
                          _widen_norm(graph.norm_module(x), k * mult, at))
    width = graph.node(node).width
    return _finish(new, GrowthRecord(step=new.step, action=action, nodes=[node], neurons={node: (width, width + k)}))


def _rest(graph: "Graph", edge: str) -> int:
    """Weight entries per source channel of a reader edge: 1 (linear from a vector), the kernel
    offsets (conv), the flattened positions (linear from an image)."""
    return graph.module(edge).weight[0].numel() // graph.node(graph.edge(edge).source).width


def _with_rows(old: nn.Module, rows: torch.Tensor, bias_rows: torch.Tensor | None, at: int) -> nn.Module:
    """``old`` with ``rows`` (and bias entries) inserted before output row ``at``."""
    w = old.weight.detach()
    weight = torch.cat([w[:at], rows, w[at:]])
    b = None
    if old.bias is not None:
        ob = old.bias.detach()
        b = torch.cat([ob[:at], bias_rows, ob[at:]])
    return _rebuilt(old, weight, b)


def _norm_like(norm: nn.Module, features: int) -> nn.Module:
    """A fresh BatchNorm of ``norm``'s kind, options, device and dtype with ``features`` features."""
    ref = next(iter(norm.parameters()), next(iter(norm.buffers()), torch.zeros(())))
    return type(norm)(features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                      track_running_stats=norm.track_running_stats, device=ref.device, dtype=ref.dtype)


def _widen_norm(norm: nn.Module | None, k: int, at: int | None = None) -> nn.Module | None:
    """``norm`` with k identity entries inserted at feature ``at`` (default: appended)."""
    if norm is None:
        return None
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        raise GraphError(f"cannot widen a {type(norm).__name__}")
    new = _norm_like(norm, norm.num_features + k)
    at = norm.num_features if at is None else at
    state = norm.state_dict()
    with torch.no_grad():
        for key, value in new.state_dict().items():
            if key == "num_batches_tracked":
                value.copy_(state[key])
            elif value.ndim == 1:
                value[:at].copy_(state[key][:at])
                value[at + k:].copy_(state[key][at:])
    new.train(norm.training)
    return new


def new_node(
    graph: "Graph",
    source: str,
    target: str,
    name: str,
    fan_in: torch.Tensor,
    fan_out: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str = "relu",
    activation_params: dict[str, float] | None = None,
    step: int | None = None,
    block: ConvBlock | None = None,
) -> "Graph":
    """Insert ``source → name → target``: a node of width K with fan-in (K × d_source) plus an
    optional bias (K,), and a bias-free fan-out (d_target × K). With a conv ``block`` (image
    nodes, ``daggrow.grow.conv_dag``) the node has the target's shape, the fan-in is that conv
    (K × C_source·Πk, channel-major) and the fan-out a bias-free 1×1 conv (C_target × K)."""
    if graph.is_ancestor(target, source):
        raise GraphError(f"a node from {source!r} to {target!r} would create a cycle")
    new = graph.copy()
    new.step = graph.step if step is None else step
    k = fan_in.shape[0]
    if fan_out.shape[1] != k:
        raise GraphError(f"fan-in has {k} neurons but fan-out has {fan_out.shape[1]}")
    ref = _reference_tensor(graph)
    shape = graph.node(target).shape if block is not None else ()
    new.add_node(name, width=k, activation=activation, activation_params=activation_params, shape=shape)
    b = None if bias is None else _like(bias, ref)
    if block is None:
        e_in = new.add_edge(source, name, module=_linear(_like(fan_in, ref), b), bias=bias is not None)
        e_out = new.add_edge(name, target, module=_linear(_like(fan_out, ref), None), bias=False)
    else:
        block = block.model_copy(update={"bias": bias is not None})
        e_in = new.add_edge(source, name, block, module=_conv(block, _like(fan_in, ref), graph.node(source).width, b))
        out = one_by_one(block.dim)
        e_out = new.add_edge(name, target, out, module=_conv(out, _like(fan_out, ref), k, None))
    return _finish(new, GrowthRecord(step=new.step, action="new_node", nodes=[name], edges=[e_in, e_out],
                                     neurons={name: (0, k)}))


def new_edge(graph: "Graph", source: str, target: str, weight: torch.Tensor, bias: torch.Tensor | None = None,
             *, step: int | None = None, block: ConvBlock | None = None) -> "Graph":
    """Add a linear block ``source → target`` with the given weight (d_target × d_source), or the
    conv ``block`` between two image nodes (weight C_target × C_source·Πk, channel-major)."""
    new = graph.copy()
    new.step = graph.step if step is None else step
    ref = _reference_tensor(graph)
    b = None if bias is None else _like(bias, ref)
    if block is None:
        name = new.add_edge(source, target, module=_linear(_like(weight, ref), b), bias=bias is not None)
    else:
        block = block.model_copy(update={"bias": bias is not None})
        name = new.add_edge(source, target, block, module=_conv(block, _like(weight, ref), graph.node(source).width, b))
    return _finish(new, GrowthRecord(step=new.step, action="new_edge", edges=[name]))


def _conv(block: ConvBlock, weight: torch.Tensor, in_channels: int, bias: torch.Tensor | None) -> nn.Module:
    """An ``nn.Conv{dim}d`` of ``block``'s geometry holding ``weight`` (C_out × C_in·Πk) and ``bias``."""
    layer = (nn.Conv1d if block.dim == 1 else nn.Conv2d)(
        in_channels, weight.shape[0], block.kernel_size, stride=block.stride, padding=block.padding,
        dilation=block.dilation, groups=block.groups, bias=bias is not None, device=weight.device,
        dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(layer.weight.shape))
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def update_weights(graph: "Graph", deltas: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
                   *, step: int | None = None, record: bool = True) -> "Graph":
    """Add ``(δW, δb)`` to the weights of linear or conv edges (the best update of docs/math.md §4; a
    conv's δW may be given as a (C_v × C_u·Πk) matrix over unfolded patches).

    ``record=False`` when the update is part of a growth step that already has its record."""
    new = graph.copy()
    new.step = graph.step if step is None else step
    for name, (dw, db) in deltas.items():
        if not is_growable(graph.edge(name).block):
            raise GraphError(f"edge {name!r} is a {graph.edge(name).block.kind} block; only linear and conv "
                             "(groups=1) edges take a best update")
        old = graph.module(name)
        if tuple(dw.shape) != tuple(old.weight.shape) and tuple(dw.shape) != (old.weight.shape[0], old.weight[0].numel()):
            raise GraphError(f"update of edge {name!r} has shape {tuple(dw.shape)}, weight is {tuple(old.weight.shape)}")
        dw = dw.reshape(old.weight.shape)
        if db is not None and old.bias is None:
            raise GraphError(f"edge {name!r} has no bias to update")
        b = None if old.bias is None else old.bias.detach() + (_like(db, old.bias) if db is not None else 0)
        new._replace_edge_module(name, _rebuilt(old, old.weight.detach() + _like(dw, old.weight), b))
    if not record:
        new.validate(complete=True)
        return new
    return _finish(new, GrowthRecord(step=new.step, action="best_update", edges=sorted(deltas)))


def remove_neurons(graph: "Graph", node: str, indices: Sequence[int], *, step: int | None = None) -> "Graph":
    """Prune neurons of a node: their rows in every in-edge and columns in every out-edge go."""
    plan = widening(graph, node)
    if isinstance(plan, str) or plan.carriers:
        why = plan if isinstance(plan, str) else f"its features pass on to {plan.carriers}"
        raise GraphError(f"node {node!r} cannot lose neurons: {why}")
    width = graph.node(node).width
    drop = sorted(set(int(i) for i in indices))
    if not drop or drop[0] < 0 or drop[-1] >= width:
        raise GraphError(f"neuron indices must be in [0, {width}); got {list(indices)}")
    if len(drop) == width:
        raise GraphError(f"cannot remove all {width} neurons of {node!r}; remove the node instead")
    keep = torch.tensor([i for i in range(width) if i not in set(drop)])
    new = graph.copy()
    new.step = graph.step if step is None else step
    for e in graph.in_edges(node):
        old = graph.module(e.name)
        k = keep.to(old.weight.device)
        new._replace_edge_module(e.name, _rebuilt(old, old.weight.detach()[k], None if old.bias is None else old.bias.detach()[k]))
    for e in graph.out_edges(node):
        old = graph.module(e.name)
        k = keep.to(old.weight.device)
        weight = _by_channel(old.weight.detach(), width)[:, k].reshape(old.weight.shape[0], -1, *old.weight.shape[2:])
        new._replace_edge_module(e.name, _rebuilt(old, weight, None if old.bias is None else old.bias.detach().clone()))
    norm = graph.norm_module(node)
    if norm is not None:
        norm = _select_norm(norm, keep)
    new._replace_node(graph.node(node).model_copy(update={"width": len(keep)}), norm)
    return _finish(new, GrowthRecord(step=new.step, action="prune", nodes=[node]))


def _select_norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = _norm_like(norm, len(keep))
    state = norm.state_dict()
    new.load_state_dict({k: (v if v.ndim == 0 else v[keep.to(v.device)]) for k, v in state.items()})
    new.train(norm.training)
    return new


def remove_edge(graph: "Graph", name: str, *, step: int | None = None) -> "Graph":
    """Remove one edge; refused if the graph would become incomplete (an unreachable node)."""
    new = graph.copy()
    new.step = graph.step if step is None else step
    new.remove_edge(name)
    return _finish(new, GrowthRecord(step=new.step, action="prune", edges=[name]))


def remove_node(graph: "Graph", name: str, *, step: int | None = None) -> "Graph":
    """Remove a hidden node and its edges; refused if the graph would become incomplete."""
    if name in graph.inputs or name in graph.outputs:
        raise GraphError(f"cannot remove {name!r}: it is an input or output")
    new = graph.copy()
    new.step = graph.step if step is None else step
    new.remove_node(name)
    return _finish(new, GrowthRecord(step=new.step, action="prune", nodes=[name]))


def _reference_tensor(graph: "Graph") -> torch.Tensor:
    for p in graph.parameters():
        return p
    return torch.zeros(())
