"""The tracing example of docs/ir.md runs as written, and so do the docstring examples."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

IR_DOC = Path(__file__).resolve().parents[2] / "docs" / "ir.md"


def test_ir_doc_example_runs():
    code = re.findall(r"```python\n(.*?)```", IR_DOC.read_text(), re.S)[-1]
    namespace: dict = {}
    exec(compile(code, str(IR_DOC), "exec"), namespace)
    assert "relu" in namespace["g"].nodes


@pytest.mark.parametrize("module", ["tracer", "ops", "values", "spatial"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"daggrow.trace.{module}"))
    assert result.attempted > 0 and result.failed == 0
