"""History: JSON round trip, DOT/SVG per step, and the report page in a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch

import daggrow as dg
from daggrow.grow import rewrite
from daggrow.history import GrowthEvent, History, write_report


def fake_history(steps: int = 6) -> History:
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 8)
    g.add_node("h", 1, "relu")
    g.add_node("y", 3)
    g.add_edge("x", "h"); g.add_edge("h", "y")
    g.set_output("y")
    h = History([GrowthEvent(step=0, action="start", params_after=g.num_parameters(), train_loss=1.1, val_loss=1.2,
                             train_accuracy=0.3, val_accuracy=0.28, graph=g.spec(), strategy="amplitude", init="tiny")])
    for s in range(1, steps + 1):
        if s % 3 == 0:
            g = rewrite.new_node(g, "x", "y", f"n{s}", torch.zeros(2, 8), torch.zeros(3, 2), torch.zeros(2), step=s)
            action, where = "new_node", [f"n{s}"]
        else:
            g = rewrite.add_neurons(g, "h", {"x_to_h": torch.zeros(2, 8)}, {"h_to_y": torch.zeros(3, 2)}, step=s)
            action, where = "expand_node", ["h"]
        h.append(GrowthEvent(step=s, action=action, where=where, neurons_added=2, eigenvalues=[0.5 / s, 0.1 / s],
                             amplitude=0.5, predicted_loss_change=-0.1 / s, measured_loss_change=-0.08 / s,
                             params_before=0, params_after=g.num_parameters(), train_loss=1.0 / s, val_loss=1.1 / s,
                             train_accuracy=0.3 + 0.1 * s, val_accuracy=0.28 + 0.1 * s, wall_time=0.7 * s,
                             graph=g.spec(), strategy="amplitude", init="tiny"))
        h.append(GrowthEvent(step=s, action="train", params_after=g.num_parameters(), train_loss=0.9 / s,
                             val_loss=1.0 / s, wall_time=0.7 * s + 0.3, graph=g.spec()))
    return h, g


def test_round_trip(tmp_path):
    h, g = fake_history()
    h.save(tmp_path, graph=g)
    assert History.load(tmp_path) == h
    assert dg.Graph.load(tmp_path / "graph").spec() == g.spec()
    table = h.summary_table()
    assert "expand_node" in table and "new_node" in table


def test_corrupt_history_is_a_clear_error(tmp_path):
    (tmp_path / "history.json").write_text("{}")
    with pytest.raises(dg.PersistenceError, match="not a daggrow history"):
        History.load(tmp_path)
    with pytest.raises(dg.PersistenceError, match="missing"):
        History.load(tmp_path / "nope")


def test_dot_per_step_highlights_that_steps_parts(tmp_path):
    h, g = fake_history()
    h.save(tmp_path, graph=g, render_svg=shutil.which("dot") is not None)
    dots = sorted(tmp_path.glob("step_*.dot"))
    assert len(dots) == 7  # start + 6 growth steps
    assert "+2 neurons" in dots[1].read_text()
    assert "new node" in dots[3].read_text()
    if shutil.which("dot"):
        assert len(list(tmp_path.glob("step_*.svg"))) == 7


def test_report_is_self_contained(tmp_path):
    h, g = fake_history()
    h.save(tmp_path, graph=g)
    page = (tmp_path / "report.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']https?://", page)
    assert "<link" not in page and "<script src" not in page
    assert page.count('class="step"') == 7 and page.count('class="plot"') == 4


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium is not installed")
def test_report_runs_in_a_headless_browser(tmp_path):
    h, g = fake_history()
    h.save(tmp_path, graph=g)
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=2000", "--dump-dom", (tmp_path / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert 'data-ready="1"' in dom, result.stderr[-2000:]  # the page's script ran to its end
    assert dom.count("<svg") >= 4 + 1
    assert "7 / 7" in dom  # the step viewer shows the last step
