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
    assert r'x -> y [label="linear\n15 params"]' in dot  # the 4 → 3 skip: 3·4 + 3
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


def test_counts_from_a_spec_follow_the_widths():
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("y", 4, "tanh", norm="layernorm", dropout=0.25)
    g.add_edge("x", "y")                                   # 4·4 + 4
    g.add_edge("x", "y", bias=False, name="nob")           # 4·4
    g.add_edge("x", "y", "identity")                       # 0
    g.add_edge("x", "y", dg.IdentityBlock(scale=0.5), name="half")
    g.add_edge("x", "y", dg.FrozenBlock(module_type="Linear"), module=torch.nn.Linear(4, 4), name="fz")
    g.set_output("y")
    assert dg.graph.dot.parameter_counts(g.spec()) == {
        "x_to_y": "20", "nob": "16", "x_to_y_2": "0", "half": "0", "fz": "?"}
    assert dg.graph.dot.parameter_counts(g) == {"x_to_y": "20", "nob": "16", "x_to_y_2": "0", "half": "0", "fz": "20"}
    text = dg.graph.dot.to_dot(g.spec(), title="a title")
    for piece in (r'label="linear\n20 params"', r'label="linear\n16 params"', 'label=identity',
                  'label="identity × 0.5"', r'label="frozen Linear\n? params"', "tanh + layernorm",
                  "dropout 0.25", 'label="a title"', "style=dashed"):
        assert piece in text, (piece, text)
    assert "#e8590c" not in text  # nothing highlighted without highlight_step


ODD_NAMES = ["a:b", "<x>", "back\\", "node", "two words", "é", "-3", "q\\n"]


def odd_graph() -> dg.Graph:
    g = dg.Graph()
    g.add_input("in:put", 2)
    prev = "in:put"
    for name in ODD_NAMES:
        g.add_node(name, 2, "relu")
        g.add_edge(prev, name)
        prev = name
    g.set_output(prev)
    return g


def test_odd_names_are_quoted_as_whole_literal_ids():
    text = odd_graph().to_dot(title="<b>not html</b>")
    assert '"a:b" -> "<x>"' in text and '"<x>" -> "back\\\\"' in text and '"in:put" -> "a:b"' in text
    assert 'label="<b>not html</b>"' in text


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_odd_names_parse_as_the_right_nodes_and_edges():
    import subprocess

    plain = subprocess.run(["dot", "-Tplain"], input=odd_graph().to_dot().encode(), capture_output=True, check=True)
    lines = plain.stdout.decode().splitlines()
    assert sum(line.startswith("node ") for line in lines) == len(ODD_NAMES) + 1
    assert sum(line.startswith("edge ") for line in lines) == len(ODD_NAMES)
    assert plain.stderr == b""


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_render_adds_the_suffix_and_reports_dot_failures(tmp_path):
    g = grown_graph()
    assert g.render(tmp_path / "out" / "g.png", format="png").read_bytes()[:4] == b"\x89PNG"
    assert g.render(tmp_path / "h", format="dot", highlight_step=2).name == "h.dot"
    assert "new node" in (tmp_path / "h.dot").read_text()  # options reach to_dot
    with pytest.raises(dg.RenderError, match="dot -Tnope` failed"):
        g.render(tmp_path / "bad", format="nope")
