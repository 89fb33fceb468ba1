"""The command line: version, grow (a short real run), show, report, and clean errors."""

from __future__ import annotations

import subprocess
import sys

import daggrow as dg
from daggrow.cli import main


def test_version():
    out = subprocess.run([sys.executable, "-m", "daggrow.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"daggrow {dg.__version__}"


def test_grow_show_report(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["grow", "--dataset", "digits", "--steps", "2", "--quiet", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "digits: " in out and "test accuracy" in out
    for name in ("history.json", "report.html", "config.json", "graph/graph.json", "step_000.dot"):
        assert (run / name).exists(), name
    assert main(["show", str(run)]) == 0
    assert "parameters" in capsys.readouterr().out
    assert main(["show", str(run / "graph")]) == 0
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").exists()


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["show", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daggrow: error:") and "Traceback" not in err
