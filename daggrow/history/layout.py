"""A built-in drawing of a graph as SVG, in pure Python: the report's drawing when Graphviz is missing.

Layers by longest path from the inputs (left to right, like ``dot``'s ``rankdir=LR``), nodes
ordered inside a layer by a few barycentre sweeps to cut crossings, nodes as rounded boxes
with the same label lines as the Graphviz drawing, edges as curves with an arrowhead and a
small label. Every text is escaped; the result holds no script, link or external reference.

>>> from daggrow.graph import Graph
>>> g = Graph(); g.add_input("x", 4); g.add_node("y", 2); _ = g.add_edge("x", "y"); g.set_output("y")
>>> svg = layered_svg(g.spec(), title="a <b> & c")
>>> svg.startswith('<svg class="graph"') and "a &lt;b&gt; &amp; c" in svg
True
"""

from __future__ import annotations

import html

from ..graph.dot import HIGHLIGHT, OPAQUE, _node_look, parameter_counts
from ..graph.spec import GraphSpec

CHAR_W, LINE_H, PAD, GAP_X, GAP_Y, TITLE_H = 6.6, 14, 8, 70, 18, 26
DEFAULT_LOOK = {"fillcolor": "#f8f9fa", "color": "#495057"}


def layers(spec: GraphSpec) -> dict[str, int]:
    """Node → layer: 0 for nodes without in-edges, else 1 + the largest layer of a source."""
    preds: dict[str, list[str]] = {n.name: [] for n in spec.nodes}
    for e in spec.edges:
        preds[e.target].append(e.source)
    layer: dict[str, int] = {}

    def depth(v: str) -> int:
        stack = [v]
        while stack:  # iterative: deep chains must not hit Python's recursion limit
            u = stack[-1]
            todo = [p for p in preds[u] if p not in layer]
            if todo:
                stack.extend(todo)
                continue
            layer[u] = 1 + max((layer[p] for p in preds[u]), default=-1)
            stack.pop()
        return layer[v]

    for n in spec.nodes:
        depth(n.name)
    return layer


def _order(spec: GraphSpec, layer: dict[str, int]) -> list[list[str]]:
    """Nodes of each layer, ordered by the mean position of their neighbours (two sweeps)."""
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for n in spec.nodes:
        columns[layer[n.name]].append(n.name)
    preds: dict[str, list[str]] = {n: [] for n in layer}
    succs: dict[str, list[str]] = {n: [] for n in layer}
    for e in spec.edges:
        preds[e.target].append(e.source)
        succs[e.source].append(e.target)

    def sweep(cols: list[list[str]], neighbours: dict[str, list[str]]) -> None:
        for col in cols:
            pos = {n: i / max(len(c) - 1, 1) for c in columns for i, n in enumerate(c)}
            keyed = {n: (sum(pos[m] for m in neighbours[n]) / len(neighbours[n]) if neighbours[n] else pos[n])
                     for n in col}
            col.sort(key=lambda n: keyed[n])

    for _ in range(2):
        sweep(columns[1:], preds)
        sweep(columns[-2::-1], succs)
    return columns


def _highlights(spec: GraphSpec, step: int | None) -> tuple[set[str], dict[str, int], set[str]]:
    """(new nodes, node → neurons added, new edges) of ``step``, as the Graphviz drawing marks them."""
    if step is None:
        return set(), {}, set()
    grown: dict[str, int] = {}
    for record in spec.growth_log:
        if record.step == step:
            for node, (start, stop) in record.neurons.items():
                grown[node] = grown.get(node, 0) + (stop - start)
    return ({n.name for n in spec.nodes if n.born == step and n.name not in spec.inputs}, grown,
            {e.name for e in spec.edges if e.born == step})


def layered_svg(spec: GraphSpec, *, highlight_step: int | None = None, title: str | None = None) -> str:
    """The SVG text of ``spec`` drawn in layers (see the module docstring); ``highlight_step``
    draws what that step added in orange, ``title`` goes above the graph."""
    e_ = html.escape
    layer = layers(spec)
    columns = _order(spec, layer)
    nodes = {n.name: n for n in spec.nodes}
    new_nodes, grown, new_edges = _highlights(spec, highlight_step)
    looks, sizes = {}, {}
    for name, node in nodes.items():
        lines, attrs = _node_look(node, spec)
        if name in new_nodes or name in grown:
            lines.append("new node" if name in new_nodes else f"+{grown[name]} neurons")
        looks[name] = (lines, {**DEFAULT_LOOK, **attrs})
        sizes[name] = (max(len(line) for line in lines) * CHAR_W + 2 * PAD, len(lines) * LINE_H + PAD)
    top = TITLE_H if title else PAD
    pos: dict[str, tuple[float, float]] = {}  # centre of each box
    x, height = PAD, 0.0
    col_heights = [sum(sizes[n][1] for n in col) + GAP_Y * (len(col) - 1) for col in columns]
    tallest = max(col_heights, default=0.0)
    for col, col_h in zip(columns, col_heights):
        col_w = max(sizes[n][0] for n in col)
        y = top + (tallest - col_h) / 2
        for n in col:
            w, h = sizes[n]
            pos[n] = (x + col_w / 2, y + h / 2)
            y += h + GAP_Y
        x += col_w + GAP_X
    width = max(x - GAP_X + PAD, 120.0 if not title else len(title) * CHAR_W + 2 * PAD)
    height = top + tallest + PAD
    out = []
    counts = parameter_counts(spec)
    for e in spec.edges:
        (x1, y1), (x2, y2) = pos[e.source], pos[e.target]
        x1 += sizes[e.source][0] / 2
        x2 -= sizes[e.target][0] / 2
        color = HIGHLIGHT if e.name in new_edges else OPAQUE if e.block.kind == "operand" else "#868e96"
        mid = (x1 + x2) / 2
        dash = ' stroke-dasharray="5 3"' if e.block.kind not in ("linear", "conv") else ""
        out.append(f'<path d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2 - 6:.1f},{y2:.1f}" '
                   f'fill="none" stroke="{color}" stroke-width="{2.2 if e.name in new_edges else 1.2}"{dash}/>'
                   f'<polygon points="{x2:.1f},{y2:.1f} {x2 - 7:.1f},{y2 - 3.5:.1f} {x2 - 7:.1f},{y2 + 3.5:.1f}" '
                   f'fill="{color}"/>')
        label = e.block.kind if counts[e.name] in ("0", "?") else f"{e.block.kind} {counts[e.name]}"
        out.append(f'<text x="{mid:.1f}" y="{(y1 + y2) / 2 - 3:.1f}" text-anchor="middle" font-size="9" '
                   f'fill="{color}">{e_(label)}</text>')
    for name, (cx, cy) in pos.items():
        lines, attrs = looks[name]
        w, h = sizes[name]
        hot = name in new_nodes or name in grown
        stroke, fill = (HIGHLIGHT, "#fff4e6") if hot else (attrs["color"], attrs["fillcolor"])
        out.append(f'<g class="node"><title>{e_(name)}</title>'
                   f'<rect x="{cx - w / 2:.1f}" y="{cy - h / 2:.1f}" width="{w:.1f}" height="{h:.1f}" rx="5" '
                   f'fill="{fill}" stroke="{stroke}" stroke-width="{2.5 if hot else 1}"/>')
        for i, line in enumerate(lines):
            ty = cy - h / 2 + PAD / 2 + LINE_H * (i + 0.8)
            weight = ' font-weight="600"' if i == 0 else ""
            out.append(f'<text x="{cx:.1f}" y="{ty:.1f}" text-anchor="middle" font-size="11"{weight}>{e_(line)}</text>')
        out.append("</g>")
    head = (f'<svg class="graph" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
            f'role="img" aria-label="{e_(title or "graph")}" font-family="Helvetica, Arial, sans-serif">')
    caption = (f'<text x="{width / 2:.1f}" y="17" text-anchor="middle" font-size="12">{e_(title)}</text>'
               if title else "")
    return head + caption + "".join(out) + "</svg>"
