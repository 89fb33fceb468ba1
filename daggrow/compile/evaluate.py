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
    flags = [(m, m.training) for mod in modules for m in mod.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def node_values(graph: "Graph", inputs: tuple[torch.Tensor, ...], *, cache: dict[str, torch.Tensor] | None = None,
                reuse: Iterable[str] = (), grown: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Every node's value h_v for ``inputs``, with evaluation semantics for dropout (inactive);
    norms follow their modules' train/eval flags (use :func:`eval_mode`).

    Nodes in ``reuse`` take their value from ``cache`` instead of being recomputed. A node in
    ``grown`` (name → number of old neurons k) whose in-edges kept their first k rows computes
    only its new neurons and appends them to its cached value (eval-mode norms only).
    """
    reuse = set(reuse)
    values: dict[str, torch.Tensor] = dict(zip(graph.inputs, inputs))
    for name in graph.topological_order():
        if name in values:
            continue
        if name in reuse:
            values[name] = cache[name]
            continue
        spec = graph.node(name)
        if grown and name in grown and _can_append(graph, name, cache):
            values[name] = torch.cat([cache[name], _new_neurons(graph, name, grown[name], values)], 1)
            continue
        z = None
        for e in graph.in_edges(name):
            term = edge_forward(e.block, graph.module(e.name), graph.node(e.source), values[e.source])
            z = term if z is None else z + term
        norm = graph.norm_module(name)
        if norm is not None:
            z = norm(z)
        h = get_activation(spec.activation).function(z, **spec.activation_params) if spec.activation != "identity" else z
        values[name] = h
    return values


def _can_append(graph: "Graph", name: str, cache: dict[str, torch.Tensor] | None) -> bool:
    norm = graph.norm_module(name)
    eval_norm = norm is None or (isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) and not norm.training
                                 and norm.running_mean is not None)
    return (cache is not None and name in cache and eval_norm
            and all(is_growable(e.block) for e in graph.in_edges(name)))


def _new_neurons(graph: "Graph", name: str, start: int, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """The values of neurons ``start:`` of a widened node (its other neurons are unchanged)."""
    z = None
    for e in graph.in_edges(name):
        m, h = graph.module(e.name), values[e.source]
        bias = None if m.bias is None else m.bias[start:]
        if isinstance(m, torch.nn.Linear):
            term = F.linear(torch.flatten(h, 1) if h.ndim > 2 else h, m.weight[start:], bias)
        else:  # a conv: the new output channels only
            conv = F.conv1d if isinstance(m, torch.nn.Conv1d) else F.conv2d
            term = conv(h, m.weight[start:], bias, m.stride, m.padding, m.dilation)
        z = term if z is None else z + term
    norm = graph.norm_module(name)
    if norm is not None:
        z = F.batch_norm(
            z, norm.running_mean[start:], norm.running_var[start:],
            None if norm.weight is None else norm.weight[start:], None if norm.bias is None else norm.bias[start:],
            False, 0.0, norm.eps)
    spec = graph.node(name)
    return get_activation(spec.activation).function(z, **spec.activation_params) if spec.activation != "identity" else z
