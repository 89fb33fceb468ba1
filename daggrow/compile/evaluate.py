"""Evaluate a graph node by node, reusing cached values of the nodes a change cannot affect.

The amplitude line search calls this many times per candidate: only the part of the graph
downstream of the change is recomputed (``reuse`` names the nodes taken from ``cache``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator

import torch
from torch.nn import functional as F

from ..graph.activations import get_activation
from ..graph.blocks import edge_forward
from ..graph.spec import is_growable

if TYPE_CHECKING:
    from ..graph import Graph


@contextmanager
def eval_mode(graph: "Graph") -> Iterator[None]:
    """Put every module of the graph in eval mode, and restore each one's flag afterwards."""
    modules = [graph.module(e) for e in graph.edges] + [m for n in graph.nodes if (m := graph.norm_module(n))]
    modules += [m for n in graph.nodes if (m := graph.op_module(n))]
    flags = [(m, m.training) for mod in modules for m in mod.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def node_values(graph: "Graph", inputs: tuple[torch.Tensor, ...], *, cache: dict[str, torch.Tensor] | None = None,
                reuse: Iterable[str] = (), grown: dict[str, int] | None = None,
                added: dict[str, torch.Tensor] | None = None, old_edges: Iterable[str] = (),
                pre: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every node's value h_v for ``inputs``, with evaluation semantics for dropout (inactive);
    norms follow their modules' train/eval flags (use :func:`eval_mode`).

    Nodes in ``reuse`` take their value from ``cache`` instead of being recomputed. A node in
    ``grown`` (name → number of old neurons k) whose in-edges kept their first k rows computes
    only its new neurons and appends them to its cached value (eval-mode norms only).

    A node in ``added`` (name → its old pre-activation z, before its norm) whose in-edges only
    *gained* terms — edges not in ``old_edges``, and the new input channels of a ``grown``
    source — computes z = z_old + those terms: O(n·K·d) instead of O(n·d²) for K new neurons.
    ``pre``: a dict that receives the pre-activation z of every node computed in full.
    """
    reuse, old_edges = set(reuse), set(old_edges)
    values: dict[str, torch.Tensor] = dict(zip(graph.inputs, inputs))
    for name in graph.topological_order():
        if name in values:
            continue
        if name in reuse:
            values[name] = cache[name]
            continue
        spec = graph.node(name)
        if grown and name in grown and _can_append(graph, name, cache):
            values[name] = torch.cat([cache[name], _new_neurons(graph, name, grown[name], values)],
                                     _feature_dim(graph, name))
            continue
        z = _with_added_terms(graph, name, added[name], values, grown or {}, old_edges) if added and name in added else None
        if z is None:
            z = pre_activation(graph, name, values)
            if pre is not None:
                pre[name] = z
        norm = graph.norm_module(name)
        if norm is not None:
            z = norm(z)
        h = get_activation(spec.activation).function(z, **spec.activation_params) if spec.activation != "identity" else z
        values[name] = h
    return values


def pre_activation(graph: "Graph", name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """z_v: the sum of the node's in-edge terms, or an op node's program on its operands."""
    op = graph.op_module(name)
    if op is not None:
        return op(*(values[s] for s in graph.operands(name)))
    z, target = None, graph.node(name)
    for e in graph.in_edges(name):
        term = edge_forward(e.block, graph.module(e.name), graph.node(e.source), values[e.source], target)
        z = term if z is None else z + term
    return z


def _eval_norm(graph: "Graph", name: str) -> bool:
    """The node's norm (if any) is a fixed per-channel map: a BatchNorm in eval mode."""
    norm = graph.norm_module(name)
    return norm is None or (isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) and not norm.training
                            and norm.running_mean is not None)


def _can_append(graph: "Graph", name: str, cache: dict[str, torch.Tensor] | None) -> bool:
    return (cache is not None and name in cache and _eval_norm(graph, name)
            and all(is_growable(e.block) for e in graph.in_edges(name)))


def _feature_dim(graph: "Graph", name: str) -> int:
    return graph.node(name).feature_dim


def _with_added_terms(graph: "Graph", name: str, z_old: torch.Tensor, values: dict[str, torch.Tensor],
                      grown: dict[str, int], old_edges: set[str]) -> torch.Tensor | None:
    """z_old plus the terms of new edges and of grown sources' new channels; ``None`` when a
    changed in-edge cannot be split that way (then the caller computes z in full)."""
    z = z_old
    for e in graph.in_edges(name):
        h = values[e.source]
        if e.name not in old_edges:
            z = z + edge_forward(e.block, graph.module(e.name), graph.node(e.source), h, graph.node(name))
        elif e.source in grown:
            if not is_growable(e.block):
                return None
            z = z + _new_channel_term(graph.module(e.name), h, grown[e.source], graph.node(e.source).layout == "tokens")
    return z


def _new_channel_term(m: torch.nn.Module, h: torch.Tensor, start: int, tokens: bool = False) -> torch.Tensor:
    """What an edge adds through its source's channels ``start:`` (weight columns only, no bias)."""
    if isinstance(m, torch.nn.Linear) and not tokens:
        per_channel = h[0].numel() // h.shape[1]           # positions of a flattened image source
        return columns_term(m, h[:, start:], m.weight[:, start * per_channel:])
    return columns_term(m, h[..., start:] if tokens else h[:, start:], m.weight[:, start:], tokens)


def columns_term(m: torch.nn.Module, h: torch.Tensor, weight: torch.Tensor, tokens: bool = False) -> torch.Tensor:
    """What edge module ``m`` adds through some source channels ``h`` read with ``weight`` (those
    channels' columns of m's weight, no bias): W h for a linear edge (flattening an image
    source channel-major), the convolution of ``h`` for a conv edge."""
    if tokens:  # a per-token linear edge from a tokens node
        return F.linear(h, weight)
    if isinstance(m, torch.nn.Linear):
        return F.linear(torch.flatten(h, 1), weight)
    conv = F.conv1d if isinstance(m, torch.nn.Conv1d) else F.conv2d
    return conv(h, weight, None, m.stride, m.padding, m.dilation)


def rows_term(m: torch.nn.Module, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              flatten: bool) -> torch.Tensor:
    """What an in-edge with module ``m`` gives to output rows (neurons, channels) with ``weight``
    (those rows of m's weight) and ``bias``: a linear map of ``h`` (flattened first when the edge
    flattens an image source) or a convolution with m's geometry."""
    if isinstance(m, torch.nn.Linear):
        return F.linear(torch.flatten(h, 1) if flatten else h, weight, bias)
    conv = F.conv1d if isinstance(m, torch.nn.Conv1d) else F.conv2d
    return conv(h, weight, bias, m.stride, m.padding, m.dilation)


def new_entries_norm(norm: torch.nn.Module | None, z: torch.Tensor) -> torch.Tensor:
    """An eval-mode BatchNorm's map on channels it gained in a rewrite (running mean 0, running
    variance 1, weight 1, bias 0): z / √(1 + eps). Identity without a norm."""
    return z if norm is None else z / (1.0 + norm.eps) ** 0.5


def _new_neurons(graph: "Graph", name: str, start: int, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """The values of neurons ``start:`` of a widened node (its other neurons are unchanged)."""
    z = None
    for e in graph.in_edges(name):
        m, h = graph.module(e.name), values[e.source]
        bias = None if m.bias is None else m.bias[start:]
        term = rows_term(m, h, m.weight[start:], bias, graph.node(e.source).spatial)
        z = term if z is None else z + term
    norm = graph.norm_module(name)
    if norm is not None:
        z = F.batch_norm(
            z, norm.running_mean[start:], norm.running_var[start:],
            None if norm.weight is None else norm.weight[start:], None if norm.bias is None else norm.bias[start:],
            False, 0.0, norm.eps)
    spec = graph.node(name)
    return get_activation(spec.activation).function(z, **spec.activation_params) if spec.activation != "identity" else z
