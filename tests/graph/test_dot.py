"""Graphviz: DOT text content, rendering with `dot`, and a clear error without it."""

from __future__ import annotations

import shutil

import pytest
import torch

import daggrow as dg
from daggrow.grow import rewrite


def grown_graph() -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("h", 2, "relu")
    g.add_node("y", 3)
    g.add_edge("x", "h"); g.add_edge("h", "y"); g.add_edge("x", "y", "linear", name="skip")
    g.set_output("y")
    g = rewrite.add_neurons(g, "h", {"x_to_h": torch.zeros(3, 4)}, {"h_to_y": torch.zeros(3, 3)}, step=1)
    return rewrite.new_node(g, "x", "y", "n2", torch.zeros(2, 4), torch.zeros(3, 2), torch.zeros(2), step=2)


def test_dot_text_shows_nodes_edges_and_roles():
    dot = grown_graph().to_dot()
    assert dot.startswith("digraph daggrow")
    assert "width 5" in dot and "relu" in dot and "input, width 4" in dot and "y (output)" in dot
    assert "linear\n15 params" in dot.replace("\\n", "\n") or "linear" in dot
    assert "invhouse" in dot and "house" in dot


def test_highlight_step_marks_new_parts_from_a_spec():
    spec = grown_graph().spec()
    step1 = dg.graph.dot.to_dot(spec, highlight_step=1)
    assert "+3 neurons" in step1 and "new node" not in step1
    step2 = dg.graph.dot.to_dot(spec, highlight_step=2)
    assert "new node" in step2 and step2.count("#e8590c") >= 3  # the node and its two edges


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_renders_svg_with_dot(tmp_path):
    path = grown_graph().render(tmp_path / "g", format="svg")
    assert path.suffix == ".svg" and "<svg" in path.read_text()


def test_render_without_dot_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(dg.RenderError, match="apt-get install graphviz"):
        grown_graph().render(tmp_path / "g")
