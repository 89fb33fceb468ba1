"""Graphviz drawings of a graph (or of a saved :class:`GraphSpec`, as the history keeps).

Nodes show name, width and activation; inputs are green, outputs blue; edges show the block
kind and its parameter count. With ``highlight_step=k`` the parts born at step k, and nodes
that gained neurons at step k, are drawn in orange with a "+K" label.

>>> print(g.to_dot())            # doctest: +SKIP
digraph daggrow { ... }
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Union

import graphviz

from ..errors import RenderError
from .spec import FrozenBlock, GraphSpec, IdentityBlock, LinearBlock

if TYPE_CHECKING:
    from .graph import Graph

HIGHLIGHT = "#e8590c"
INSTALL_HINT = "install Graphviz: `apt-get install graphviz` (Debian/Ubuntu) or `brew install graphviz` (macOS)"


def _spec_and_counts(graph: Union["Graph", GraphSpec]) -> tuple[GraphSpec, dict[str, str]]:
    if isinstance(graph, GraphSpec):
        spec = graph
        widths = {n.name: n.width for n in spec.nodes}
        counts = {}
        for e in spec.edges:
            if isinstance(e.block, LinearBlock):
                counts[e.name] = str(widths[e.target] * widths[e.source] + (widths[e.target] if e.block.bias else 0))
            elif isinstance(e.block, IdentityBlock):
                counts[e.name] = "0"
            else:
                counts[e.name] = "?"
        return spec, counts
    spec = graph.spec()
    return spec, {e: str(sum(p.numel() for p in graph.module(e).parameters())) for e in graph.edges}


def to_dot(graph: Union["Graph", GraphSpec], *, highlight_step: int | None = None, title: str | None = None) -> str:
    """DOT source text for ``graph`` (a :class:`Graph` or a :class:`GraphSpec`)."""
    spec, counts = _spec_and_counts(graph)
    grown = {}
    for record in spec.growth_log:
        if record.step == highlight_step:
            for node, (start, stop) in record.neurons.items():
                grown[node] = grown.get(node, 0) + (stop - start)
    dot = graphviz.Digraph("daggrow", graph_attr={"rankdir": "LR", "fontname": "Helvetica", "fontsize": "12",
                                                  **({"label": title, "labelloc": "t"} if title else {})},
                           node_attr={"fontname": "Helvetica", "fontsize": "11", "style": "filled,rounded",
                                      "shape": "box", "fillcolor": "#f8f9fa", "color": "#495057"},
                           edge_attr={"fontname": "Helvetica", "fontsize": "9", "color": "#495057"})
    for node in spec.nodes:
        lines = [node.name, f"width {node.width}"]
        attrs = {}
        if node.name in spec.inputs:
            attrs.update(shape="invhouse", fillcolor="#d3f9d8", color="#2b8a3e")
            lines[1] = f"input, width {node.width}"
        else:
            act = node.activation + (f" + {node.norm.kind}" if node.norm else "")
            lines.append(act)
            if node.name in spec.outputs:
                attrs.update(shape="house", fillcolor="#d0ebff", color="#1864ab")
                lines[0] = f"{node.name} (output)"
        new_node = highlight_step is not None and node.born == highlight_step and node.name not in spec.inputs
        if new_node or node.name in grown:
            attrs.update(color=HIGHLIGHT, penwidth="2.5", fillcolor="#fff4e6")
            lines.append("new node" if new_node else f"+{grown[node.name]} neurons")
        dot.node(node.name, "\n".join(lines), **attrs)
    for e in spec.edges:
        kind = e.block.kind
        if isinstance(e.block, IdentityBlock):
            label = "identity" if e.block.scale == 1.0 else f"× {e.block.scale:g}"
        elif isinstance(e.block, FrozenBlock):
            label = f"frozen {e.block.module_type}\n{counts[e.name]} params"
        else:
            label = f"{kind}\n{counts[e.name]} params"
        attrs = {"style": "dashed"} if kind in ("identity", "frozen") else {}
        if highlight_step is not None and e.born == highlight_step:
            attrs.update(color=HIGHLIGHT, penwidth="2.5", fontcolor=HIGHLIGHT)
        dot.edge(e.source, e.target, label=label, **attrs)
    return dot.source


def render(graph: Union["Graph", GraphSpec], path: str | Path, format: str = "svg", **options) -> Path:
    """Render with Graphviz's ``dot`` into ``path`` (the format suffix is added when missing)."""
    exe = shutil.which("dot")
    if exe is None:
        raise RenderError(f"cannot render {path}: the Graphviz `dot` program is not on PATH; {INSTALL_HINT}")
    out = Path(path)
    if out.suffix != f".{format}":
        out = out.with_name(out.name + f".{format}")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([exe, f"-T{format}", "-o", str(out)], input=to_dot(graph, **options).encode(),
                            capture_output=True)
    if result.returncode != 0:
        raise RenderError(f"dot failed for {out}: {result.stderr.decode(errors='replace').strip()}")
    return out
