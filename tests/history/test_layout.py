"""The built-in layered drawing: layers by longest path, boxes that do not overlap, escaped text."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import daggrow as dg
from daggrow.history.layout import layered_svg, layers


def _wide_graph(n: int = 36) -> dg.Graph:
    """x → a_i → y for n nodes a_i, plus a chain x → c1 → c2 → c3 → y and a skip x → y."""
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("y", 3)
    for i in range(n):
        g.add_node(f"a{i}", 2, "relu")
        g.add_edge("x", f"a{i}")
        g.add_edge(f"a{i}", "y")
    for i in (1, 2, 3):
        g.add_node(f"c{i}", 2, "tanh")
        g.add_edge("x" if i == 1 else f"c{i - 1}", f"c{i}")
    g.add_edge("c3", "y")
    g.add_edge("x", "y")
    g.set_output("y")
    return g


def test_layers_are_longest_paths_from_the_inputs():
    assert layers(_wide_graph(3).spec()) == {"x": 0, "y": 4, "a0": 1, "a1": 1, "a2": 1, "c1": 1, "c2": 2, "c3": 3}


def test_a_large_graph_draws_every_node_and_edge_without_overlap():
    g = _wide_graph()
    svg = layered_svg(g.spec(), title="step 3")
    root = ET.fromstring(svg)  # well-formed
    boxes = [tuple(float(r.get(k)) for k in ("x", "y", "width", "height")) for r in root.iter("rect")]
    assert len(boxes) == len(g.nodes) == 41
    for i, (x1, y1, w1, h1) in enumerate(boxes):
        for x2, y2, w2, h2 in boxes[i + 1:]:
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1
    assert len(list(root.iter("path"))) == len(g.edges)
    width, height = (float(v) for v in root.get("viewBox").split()[2:])
    assert all(0 <= x and x + w <= width and 0 <= y and y + h <= height for x, y, w, h in boxes)


def test_text_is_escaped_and_new_parts_highlighted():
    g = dg.Graph()
    g.add_input("x<&>", 2)
    g.add_node("h", 3, "relu")
    g.add_node("y", 2)
    g.add_edge("x<&>", "h")
    g.add_edge("h", "y")
    g.set_output("y")
    spec = g.spec()
    spec = spec.model_copy(update={"nodes": [n.model_copy(update={"born": 2 if n.name == "h" else 0})
                                             for n in spec.nodes]})
    svg = layered_svg(spec, highlight_step=2, title="<script>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "x&lt;&amp;&gt;" in svg
    assert re.search(r'<rect [^>]*stroke="#e8590c"', svg) and ">new node<" in svg
    assert "#e8590c" not in layered_svg(spec)
