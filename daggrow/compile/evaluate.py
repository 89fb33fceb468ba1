"""Evaluate a graph node by node, reusing cached values of the nodes a change cannot affect.

The amplitude line search calls this many times per candidate: only the part of the graph
downstream of the change is recomputed (``reuse`` names the nodes taken from ``cache``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from ..graph.activations import get_activation
from ..graph.spec import IdentityBlock

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
                reuse: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Every node's value h_v for ``inputs``, with evaluation semantics for dropout (inactive);
    norms follow their modules' train/eval flags (use :func:`eval_mode`).

    Nodes in ``reuse`` take their value from ``cache`` instead of being recomputed.
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
        z = None
        for e in graph.in_edges(name):
            h = values[e.source]
            term = h * e.block.scale if isinstance(e.block, IdentityBlock) else graph.module(e.name)(h)
            z = term if z is None else z + term
        norm = graph.norm_module(name)
        if norm is not None:
            z = norm(z)
        h = get_activation(spec.activation).function(z, **spec.activation_params) if spec.activation != "identity" else z
        values[name] = h
    return values
