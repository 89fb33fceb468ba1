"""The README's Python example runs as written (paths moved into a temporary folder)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    if shutil.which("dot") is None:
        code = code.replace('g.render("net", format="svg")', "pass")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "traced" / "report.html").exists()
    assert namespace["grower"].graph.num_parameters() > namespace["g"].num_parameters()
