"""The HTML report: one self-contained file, escaped text, drawings per step, plots; and a real headless browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daggrow.history import GrowthEvent, History, write_report

from .fakes import fake_history

HAS_DOT = shutil.which("dot") is not None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NASTY = "<script>alert('x')</script> & \"co\""


def _report(tmp_path: Path, steps: int = 6, **save) -> str:
    history, graph = fake_history(steps, note=NASTY)
    history.save(tmp_path, graph=graph, **save)
    return (tmp_path / "report.html").read_text(encoding="utf-8")


def test_the_report_is_one_file_that_loads_nothing_from_anywhere(tmp_path):
    history, _ = fake_history()
    (tmp_path / "history.json").write_text(history.to_json())
    path = write_report(History.load(tmp_path), tmp_path)
    assert path == tmp_path / "report.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "report.html"]
    page = path.read_text(encoding="utf-8")
    assert "://" not in page  # no URL at all, not even an SVG namespace
    for reference in ("src=", "href=", "<link", "url(", "@import", "<iframe", "<img"):
        assert reference not in page, reference
    assert page.count("<script>") == 1 and page.count("<style>") == 1


def test_page_has_the_summary_step_viewer_plots_and_events(tmp_path):
    page = _report(tmp_path)
    assert page.count('class="step"') == 7
    assert re.findall(r'class="step" data-index="\d+" data-step="(\d+)"', page) == [str(s) for s in range(7)]
    assert page.count('<svg class="plot"') == 4 and page.count('class="cursor"') == 4
    for title in ("loss vs parameters", "accuracy vs parameters", "loss vs wall time", "accuracy vs wall time"):
        assert f">{title}</text>" in page
    assert 'id="step-slider"' in page and 'max="6"' in page and 'id="prev"' in page and 'id="next"' in page
    assert "<b>15 → 165</b>" in page  # parameters, first → last
    assert "final val accuracy<b>0.9</b>" in page  # from the last event that measured it
    assert "strategy<b>amplitude</b>" in page
    assert page.count('<tr data-step="') == 7  # the events table leaves out training epochs


def test_every_text_is_escaped(tmp_path):
    page = _report(tmp_path)
    assert NASTY not in page and "<script>alert" not in page
    assert html.escape(NASTY, quote=True) in page


def test_ids_are_unique_across_the_inlined_drawings(tmp_path):
    page = _report(tmp_path, render_svg=HAS_DOT)
    ids = re.findall(r'\sid="([^"]*)"', page)
    assert len(ids) == len(set(ids))


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")
def test_drawings_are_inline_svg_with_the_step_highlighted(tmp_path):
    page = _report(tmp_path)
    panels = re.findall(r'<div class="drawing">(.*?)</div><table', page, re.S)
    assert len(panels) == 7 and all(p.startswith("<svg") for p in panels)
    assert "+2 neurons" in panels[1] and "new node" in panels[3] and "#e8590c" not in panels[0]


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")
def test_report_renders_drawings_even_without_step_files(tmp_path):
    history, _ = fake_history(2)
    page = write_report(history, tmp_path).read_text()
    assert len(re.findall(r'<div class="drawing"><svg', page)) == 3


def test_without_rendering_the_drawings_are_the_built_in_layout(tmp_path):
    page = _report(tmp_path, 2, render_svg=False)
    panels = re.findall(r'<div class="drawing">(.*?)</div><table', page, re.S)
    assert len(panels) == 3 and all(p.startswith('<svg class="graph"') for p in panels)
    assert "step 2: expand_node h" in panels[2] and "<pre" not in page


def test_a_stale_svg_is_not_trusted(tmp_path):
    history, _ = fake_history(1)
    history.save(tmp_path, render_svg=False)
    (tmp_path / "step_001.svg").write_text("<svg><text>OLD-DRAWING</text></svg>")
    (tmp_path / "step_001.dot").write_text("digraph other {}")
    page = write_report(history, tmp_path, render_svg=False).read_text()
    assert "OLD-DRAWING" not in page


def test_dataset_comes_from_the_run_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "digits", "strategy": "amplitude"}))
    page = _report(tmp_path, 1)
    assert "dataset<b>digits</b>" in page and "<title>daggrow report: digits</title>" in page
    (tmp_path / "config.json").write_text("{broken")
    assert "dataset<b>" not in _report(tmp_path, 1)


def test_empty_and_metric_free_histories_still_make_a_page(tmp_path):
    page = write_report(History(), tmp_path / "empty").read_text()
    assert "none recorded" in page and "no architecture recorded" in page and page.count("no data") == 2
    only_train = History([GrowthEvent(step=0, action="train", params_after=10, train_loss=float("nan"))])
    page = write_report(only_train, tmp_path / "nan").read_text()
    assert page.count("no data") == 2 and "accuracy vs" not in page  # no accuracy measured: no accuracy panels


def _chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000", *args, url],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium is not installed (Debian: apt-get install chromium)")
def test_report_runs_in_a_headless_browser(tmp_path):
    _report(tmp_path)
    url = (tmp_path / "report.html").as_uri()
    result = _chromium(tmp_path, url, "--dump-dom")
    dom = result.stdout
    assert 'data-ready="1"' in dom, result.stderr[-2000:]  # the page's script ran to its end
    assert "step 6 (7 / 7)" in dom  # the viewer starts at the last step
    visible = re.findall(r'<div class="step" data-index="\d+" data-step="(\d+)"(?! hidden)', dom)
    assert visible == ["6"]
    assert dom.count('<tr data-step="6" class="current">') == 1
    # the zoom-and-pan script took over every drawing: fit to width, sized by its viewBox alone
    drawings = re.findall(r'<div class="drawing"><svg([^>]*)>', dom)
    assert len(drawings) == 7 and all("viewbox=" in d.lower() and " width=" not in d for d in drawings)

    result = _chromium(tmp_path, url + "#step=3", "--dump-dom")
    dom = result.stdout
    assert 'data-ready="1"' in dom, result.stderr[-2000:]
    assert "step 3 (4 / 7)" in dom
    assert re.findall(r'<div class="step" data-index="\d+" data-step="(\d+)"(?! hidden)', dom) == ["3"]
    cursors = re.findall(r'data-cursor="([^"]*)".*?<line class="cursor" x1="([^"]*)"', dom, re.S)
    assert len(cursors) == 4 and all(float(x) == float(xs.split()[3]) for xs, x in cursors)


@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium is not installed (Debian: apt-get install chromium)")
def test_report_screenshot_is_drawn(tmp_path):
    _report(tmp_path)
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, (tmp_path / "report.html").as_uri(), "--window-size=1280,1600", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank page compresses to a few kB


@pytest.mark.parametrize("render_svg", [True, False])
def test_odd_node_names_are_escaped_in_drawings_too(tmp_path, render_svg):
    import daggrow as dg

    g = dg.Graph()
    g.add_input("x<1>", 2)
    g.add_node("h<i>&amp", 3, "relu")
    g.add_edge("x<1>", "h<i>&amp")
    g.set_output("h<i>&amp")
    history = History([GrowthEvent(step=0, action="start", graph=g.spec(), where=["h<i>&amp"])])
    page = write_report(history, tmp_path, render_svg=render_svg).read_text()
    assert "<i>" not in page and "x<1>" not in page
    assert page.count("h&lt;i&gt;&amp;amp") >= 3  # the drawing, its details and the events table
