"""The README's Python examples run as written (paths moved into a temporary folder), without a
flood of warnings, and its first screen states the default job the CLI runs."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest

from daggrow.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _run(code: str, tmp_path: Path, monkeypatch) -> tuple[dict, list[warnings.WarningMessage]]:
    if shutil.which("dot") is None:
        code = code.replace('g.render("net", format="svg")', "pass")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, str(README), "exec"), namespace)
    return namespace, caught


def test_readme_example_runs(tmp_path, monkeypatch):
    namespace, caught = _run(BLOCKS[0], tmp_path, monkeypatch)
    assert (tmp_path / "runs" / "traced" / "report.html").exists()
    assert namespace["grower"].graph.num_parameters() > namespace["g"].num_parameters()
    assert len(caught) <= 2, [str(w.message)[:120] for w in caught]  # no flood of solver warnings


@pytest.mark.parametrize("index", range(1, len(BLOCKS)))
def test_the_other_readme_examples_run(tmp_path, monkeypatch, index):
    namespace, caught = _run(BLOCKS[index], tmp_path, monkeypatch)
    assert "grower" in namespace and namespace["grower"].history.events
    assert len(caught) <= 2, [str(w.message)[:120] for w in caught]


def test_the_first_command_is_the_default_job():
    first = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)[0]
    command = first.strip().splitlines()[-1].split("&&")[-1].split()
    assert command == ["daggrow", "grow", "--out", "runs/demo"] and "apt-get install" in first
    args = build_parser().parse_args(command[1:])
    assert args.dataset == "digits"  # what the README's first screen describes
    stated = [float(a) for a in re.findall(r"test accuracy (0\.\d+)", README.read_text()[:3000])]
    assert stated and min(stated) >= 0.9
