"""The text summary of a graph: one row per node (size, activation or op, in-edges)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx
from torch import nn

from .spec import NodeSpec

if TYPE_CHECKING:
    from .graph import Graph


def summary(graph: "Graph") -> str:
    """A table of nodes (width, activation, in-edges) and the parameter count."""
    rows = [("node", "width", "activation", "in-edges (block, params)")]
    order = graph.topological_order() if nx.is_directed_acyclic_graph(graph._nx) else list(graph.nodes)
    for n in order:
        spec = graph.node(n)
        role = " (input)" if n in graph.inputs else " (output)" if n in graph.outputs else ""
        act = spec.activation + (f"+{spec.norm.kind}" if spec.norm else "")
        if spec.op is not None:
            act = f"op {spec.op.label or '?'} ({_count(graph.op_module(n))} params)" + (
                f", {act}" if act != "identity" else "")
        ins = ", ".join(f"{e.source}[{e.block.kind},{_count(graph.module(e.name))}]" for e in graph.in_edges(n))
        rows.append((n + role, _size(spec), "-" if n in graph.inputs else act, ins or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{len(graph.nodes)} nodes, {len(graph.edges)} edges, "
                 f"{graph.num_parameters():,} parameters, growth step {graph.step}")
    return "\n".join(lines)


def _size(spec: NodeSpec) -> str:
    """``8``, ``8×19`` (channels × length), ``16t×32`` (16 tokens of 32 features), ``-`` (opaque)."""
    if spec.layout == "opaque":
        return "-"
    if spec.layout == "tokens":
        return "×".join(map(str, spec.shape)) + f"t×{spec.width}"
    return str(spec.width) + "".join(f"×{s}" for s in spec.shape)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
