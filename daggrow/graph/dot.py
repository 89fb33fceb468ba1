"""Graphviz drawings of a graph (or of a saved :class:`GraphSpec`, as the history keeps).

Nodes show name, width, activation (+ norm, dropout); inputs are green "invhouse" shapes,
outputs blue "house" shapes, op nodes (opaque programs) violet "component" shapes labelled
with what they run; edges show the block kind and its parameter count (from the
modules for a :class:`Graph`; from the widths for a :class:`GraphSpec`: a linear edge
``u → v`` has ``d_v·d_u + d_v·bias``, an identity 0, a frozen block "?"); an op node's
operands are dotted violet arrows, a concatenation's placements say which features they fill. With
``highlight_step=k`` the parts born at step k, and nodes that gained neurons at step k
(``GrowthRecord.neurons``), are drawn in orange with "new node" / "+K neurons" labels.

Any node name is safe: each is a double-quoted DOT ID with backslashes and quotes escaped, and
``:`` is never read as a port.

>>> print(g.to_dot())            # doctest: +SKIP
digraph daggrow { ... }
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import graphviz

from ..errors import RenderError
from .blocks import linear_in_features
from .spec import (
    PARAMETER_FREE_KINDS,
    ConvBlock,
    FlattenBlock,
    FrozenBlock,
    GraphSpec,
    IdentityBlock,
    LinearBlock,
    NodeSpec,
    OperandBlock,
    PlaceBlock,
    PoolBlock,
)

OPAQUE = "#5f3dc4"

if TYPE_CHECKING:
    from .graph import Graph

HIGHLIGHT = "#e8590c"
INSTALL_HINT = "install Graphviz: `apt-get install graphviz` (Debian/Ubuntu) or `brew install graphviz` (macOS)"


def _node_id(name: str) -> str:
    """A node name as a literal DOT ID: backslashes and ``<...>`` lose their special meaning."""
    return graphviz.escape(name)


class _Digraph(graphviz.Digraph):
    """A ``graphviz.Digraph`` whose edge ends are whole node IDs (``"a:b"`` is a node, not a port)."""

    _quote_edge = staticmethod(graphviz.quoting.quote)


def _label(*lines: str) -> str:
    """A DOT label of text lines (centred), each shown literally."""
    return graphviz.nohtml("\\n".join(graphviz.escape(line) for line in lines))


def parameter_counts(graph: Union["Graph", GraphSpec]) -> dict[str, str]:
    """Edge name → parameter count as text ("?" for a frozen block known only by its spec)."""
    if not isinstance(graph, GraphSpec):
        return {e: str(sum(p.numel() for p in graph.module(e).parameters())) for e in graph.edges}
    nodes = {n.name: n for n in graph.nodes}
    counts = {}
    for e in graph.edges:
        u, v = nodes[e.source], nodes[e.target]
        if isinstance(e.block, LinearBlock):
            counts[e.name] = str(v.width * linear_in_features(u, v) + (v.width if e.block.bias else 0))
        elif isinstance(e.block, ConvBlock):
            kernel = math.prod(e.block.kernel_size)
            counts[e.name] = str(v.width * (u.width // e.block.groups) * kernel + (v.width if e.block.bias else 0))
        elif e.block.kind in PARAMETER_FREE_KINDS:
            counts[e.name] = "0"
        else:
            counts[e.name] = "?"
    return counts


def to_dot(graph: Union["Graph", GraphSpec], *, highlight_step: int | None = None, title: str | None = None) -> str:
    """DOT source text for ``graph`` (a :class:`Graph` or a :class:`GraphSpec`).

    ``highlight_step=k`` marks what step k created; ``title`` is drawn above the graph.
    """
    spec = graph if isinstance(graph, GraphSpec) else graph.spec()
    counts = parameter_counts(graph)
    op_params = {} if isinstance(graph, GraphSpec) else {
        n: str(sum(p.numel() for p in graph.op_module(n).parameters())) for n in graph.nodes if graph.op_module(n)}
    widths = {n.name: n.width for n in spec.nodes}
    grown: dict[str, int] = {}
    new_nodes: set[str] = set()
    new_edges: set[str] = set()
    if highlight_step is not None:
        new_nodes = {n.name for n in spec.nodes if n.born == highlight_step and n.name not in spec.inputs}
        new_edges = {e.name for e in spec.edges if e.born == highlight_step}
        for record in spec.growth_log:
            if record.step == highlight_step:
                for node, (start, stop) in record.neurons.items():
                    grown[node] = grown.get(node, 0) + (stop - start)

    graph_attr = {"rankdir": "LR", "fontname": "Helvetica", "fontsize": "12"}
    if title:
        graph_attr.update(label=_label(title), labelloc="t")
    dot = _Digraph("daggrow", graph_attr=graph_attr,
                   node_attr=dict(fontname="Helvetica", fontsize="11", style="filled,rounded", shape="box",
                                  fillcolor="#f8f9fa", color="#495057"),
                   edge_attr=dict(fontname="Helvetica", fontsize="9", color="#495057"))
    for node in spec.nodes:
        lines, attrs = _node_look(node, spec, op_params.get(node.name))
        if node.name in new_nodes or node.name in grown:
            attrs.update(color=HIGHLIGHT, penwidth="2.5", fillcolor="#fff4e6")
            lines.append("new node" if node.name in new_nodes else f"+{grown[node.name]} neurons")
        dot.node(_node_id(node.name), _label(*lines), **attrs)
    for e in spec.edges:
        if isinstance(e.block, IdentityBlock):
            lines = ["identity" if e.block.scale == 1.0 else f"identity × {e.block.scale:g}"]
        elif isinstance(e.block, ConvBlock):
            lines = [f"conv{e.block.dim}d k{_size(e.block.kernel_size)} s{_size(e.block.stride)} "
                     f"p{_size(e.block.padding)}", f"{counts[e.name]} params"]
        elif isinstance(e.block, PoolBlock):
            lines = [f"{e.block.op} pool " + (f"→ {_size(e.block.output_size)}" if e.block.op == "adaptive_avg"
                                              else f"k{_size(e.block.kernel_size)} s{_size(e.block.stride)}")]
        elif isinstance(e.block, FlattenBlock):
            lines = ["flatten"]
        elif isinstance(e.block, FrozenBlock):
            lines = [f"frozen {e.block.module_type}", f"{counts[e.name]} params"]
        elif isinstance(e.block, PlaceBlock):
            end = e.block.offset + widths[e.source]
            lines = [f"place → [{e.block.offset}:{end})" + (f" × {e.block.scale:g}" if e.block.scale != 1 else "")]
        elif isinstance(e.block, OperandBlock):
            lines = [f"arg {e.block.position}"]
        else:
            lines = [e.block.kind, f"{counts[e.name]} params"]
        attrs = {"style": "dashed"} if e.block.kind in PARAMETER_FREE_KINDS | {"frozen"} else {}
        if isinstance(e.block, OperandBlock):
            attrs = {"style": "dotted", "color": OPAQUE, "fontcolor": OPAQUE, "arrowhead": "empty"}
        if e.name in new_edges:
            attrs.update(color=HIGHLIGHT, penwidth="2.5", fontcolor=HIGHLIGHT)
        dot.edge(_node_id(e.source), _node_id(e.target), _label(*lines), **attrs)
    return dot.source


def _node_look(node: NodeSpec, spec: GraphSpec, params: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """Label lines and attributes of a node by its role (input, op node, hidden, output)."""
    if node.name in spec.inputs:
        return [node.name, f"input, {_size_of(node)}"], dict(shape="invhouse", fillcolor="#d3f9d8",
                                                                color="#2b8a3e")
    act = node.activation + (f" + {node.norm.kind}" if node.norm else "")
    lines = [node.name, _size_of(node), act]
    attrs: dict[str, Any] = {}
    if node.op is not None:
        modules = ", ".join(dict.fromkeys(node.op.modules.values()))
        lines[2:] = [f"op: {node.op.label}"[:60]] + ([modules[:60]] if modules else []) + (
            [f"{params} params"] if params not in (None, "0") else []) + ([act] if act != "identity" else [])
        attrs = dict(shape="component", fillcolor="#f3f0ff", color=OPAQUE)
    if node.dropout:
        lines.append(f"dropout {node.dropout:g}" if node.dropout_mode == "element" else
                     f"drop path {node.dropout:g} ({node.dropout_mode})")
    if node.name in spec.outputs:
        lines[0] = f"{node.name} (output)"
        return lines, dict(shape="house", fillcolor="#d0ebff", color="#1864ab")
    return lines, attrs


def _size(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "×".join(map(str, values))


def _size_of(node: NodeSpec) -> str:
    """``width 8`` for a vector node, ``8 ch × 19`` / ``16 ch × 32×32`` for sequences/images,
    ``5 tokens × 16`` for tokens, ``opaque value`` for a value only op nodes read."""
    if node.layout == "opaque":
        return "opaque value"
    if node.layout == "tokens":
        return f"{'×'.join(map(str, node.shape))} tokens × {node.width}"
    return f"width {node.width}" if not node.shape else f"{node.width} ch × {'×'.join(map(str, node.shape))}"


def render(graph: Union["Graph", GraphSpec], path: str | Path, format: str = "svg", **options: Any) -> Path:
    """Render with Graphviz's ``dot`` into ``path`` (the format suffix is added when missing).

    ``options`` go to :func:`to_dot`. Returns the written file; raises :class:`RenderError` when
    ``dot`` is missing or fails.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise RenderError(f"cannot render {path}: the Graphviz `dot` program is not on PATH; {INSTALL_HINT}")
    out = Path(path)
    if out.suffix != f".{format}":
        out = out.with_name(out.name + f".{format}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run([exe, f"-T{format}", "-o", str(out)], input=to_dot(graph, **options).encode(),
                                capture_output=True)
    except OSError as err:
        raise RenderError(f"cannot run Graphviz `dot` ({exe}) for {out}: {err}; {INSTALL_HINT}") from None
    if result.returncode != 0:
        raise RenderError(f"Graphviz `dot -T{format}` failed for {out}: "
                          f"{result.stderr.decode(errors='replace').strip()}")
    return out
