"""The report can't be weaponised: payloads in node names, notes, paths and SVG files stay inert.

Every text of the history is escaped, an SVG read from the run folder is sanitised before it is
inlined, and a Content-Security-Policy lets only the page's own style and script run (by hash).
The headless-browser test checks that the page's script runs and no payload does.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import daggrow as dg
from daggrow.history import GrowthEvent, History, write_report

from .fakes import fake_history

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PWN = "document.body.dataset.pwned=1"  # sets data-pwned="1" on <body> if it ever runs
NAME = f"<script>{PWN}</script><img src=x onerror={PWN}>"
EVIL_SVG = (f'<svg xmlns="http://www.w3.org/2000/svg" onload="{PWN}"><script>{PWN}</script>'
            f'<foreignObject><body xmlns="http://www.w3.org/1999/xhtml"><img src="x" onerror="{PWN}"/></body>'
            f'</foreignObject><a href="javascript:{PWN}"><text>click</text></a>'
            f'<g class="step" onclick="{PWN}"><rect width="5" height="5" fill="url(javascript:x)" '
            f'style="background:url(http://evil)"/><text>EVIL-BUT-HARMLESS</text></g>'
            f'<animate attributeName="href" to="javascript:{PWN}"/><use href="http://evil/x.svg#a"/></svg>')


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _evil_run(tmp_path: Path) -> Path:
    """A run folder whose name, node names, notes and step_001.svg all carry payloads."""
    run = tmp_path / NAME.replace("/", "_")
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node(NAME, 2, "relu")
    g.add_node("y", 2)
    g.add_edge("x", NAME)
    g.add_edge(NAME, "y")
    g.set_output("y")
    spec = g.spec()
    history = History([GrowthEvent(step=0, action="start", graph=spec, note=NAME, strategy=NAME),
                       GrowthEvent(step=1, action="expand_node", where=[NAME], graph=spec, note=NAME),
                       GrowthEvent(step=1, action="declined", note=NAME)])
    history.save(run, render_svg=False)
    (run / "step_001.svg").write_text(EVIL_SVG)  # beside a .dot that matches: the report reads it
    write_report(History.load(run), run, render_svg=False)
    return run


def test_payloads_are_inert_text(tmp_path):
    page = (_evil_run(tmp_path) / "report.html").read_text()
    body = page[page.index("<body"):page.rindex("<script>")]
    assert "<script" not in body and "<img" not in body and "<foreignobject" not in body.lower()
    tags = re.findall(r"<[a-zA-Z][^>]*>", body)  # real tags only: escaped text reads &lt;...
    assert tags and not [t for t in tags if re.search(r"\son\w+\s*=", t)]  # no event handler attribute
    assert "javascript:" not in body and "http://evil" not in body and "<a " not in body and "<use" not in body
    assert 'class="step" onclick' not in body and body.count('class="step"') == 2  # the viewer's own, only
    assert "EVIL-BUT-HARMLESS" in body  # the drawing itself is kept, as text
    assert page.count("<script>") == 1


def test_a_content_security_policy_allows_only_the_pages_own_style_and_script(tmp_path):
    page = (_evil_run(tmp_path) / "report.html").read_text()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)[1]
    style = re.search(r"<style>(.*?)</style>", page, re.S)[1]
    script = re.search(r"<script>(.*?)</script>", page, re.S)[1]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["img-src"] == "'none'"
    assert directives["style-src"] == _hash(style) and directives["script-src"] == _hash(script)
    assert page.index("Content-Security-Policy") < page.index("<style>")  # in force before anything else


def test_an_svg_that_is_not_plain_svg_is_redrawn(tmp_path):
    history, _ = fake_history(1)
    history.save(tmp_path, render_svg=False)
    for bad in ('<!DOCTYPE svg [<!ENTITY x "EXPANDED">]><svg><text>&x;</text></svg>', "<svg><g>", "<html/>"):
        (tmp_path / "step_001.svg").write_text(bad)
        page = write_report(history, tmp_path, render_svg=False).read_text()
        assert "EXPANDED" not in page and page.count('<svg class="graph"') == 2  # both steps drawn afresh


@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium is not installed (Debian: apt-get install chromium)")
def test_no_payload_runs_in_a_headless_browser(tmp_path):
    run = _evil_run(tmp_path)
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000", "--dump-dom",
         (run / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert 'data-ready="1"' in dom, result.stderr[-2000:]  # the page's own script ran under the CSP
    assert 'data-pwned="1"' not in dom


def test_a_failing_dot_falls_back_to_the_built_in_drawing(tmp_path, monkeypatch):
    import graphviz

    from daggrow.history import drawings

    def broken(*args, **kwargs):
        raise graphviz.CalledProcessError(1, ["dot"], "", "dot: crashed")

    from daggrow.history import report

    monkeypatch.setattr(drawings, "can_render", lambda: True)
    monkeypatch.setattr(report, "can_render", lambda: True)
    monkeypatch.setattr(graphviz, "pipe", broken)
    history, _ = fake_history(1)
    with pytest.warns(RuntimeWarning, match="could not render a step drawing"):
        page = write_report(history, tmp_path).read_text()
    assert page.count('<div class="drawing"><svg class="graph"') == 2
