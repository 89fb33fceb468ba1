"""Name an fx node's operation and find the user's source line behind it, for error messages.

>>> # node made by `h = torch.cat([x, y], 1)` on line 12 of model.py
>>> op_name(node), source_line(node)                                   # doctest: +SKIP
('torch.cat', ' at /home/me/model.py:12: `h = torch.cat([x, y], 1)`')
"""

from __future__ import annotations

import os
import re
import traceback

import torch
from torch import fx

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_DAGGROW_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_FRAME = re.compile(r'^File "(?P<file>.+)", line (?P<line>\d+), in (?P<func>.+)$')


def _is_internal(filename: str) -> bool:
    path = os.path.abspath(filename) if not filename.startswith("<") else filename
    return path.startswith(_TORCH_DIR) or path.startswith(_DAGGROW_DIR)


def _format(filename: str, line: int | str, code: str) -> str:
    return f" at {filename}:{line}" + (f": `{code}`" if code else "")


def source_line(node: fx.Node) -> str:
    """`` at file.py:LINE: `code` `` for the innermost user frame that created ``node``, or ``""``.

    Uses the stack trace torch.fx records when ``record_stack_traces`` is on; frames inside
    torch and daggrow are skipped, so the line is the one the user wrote.
    """
    lines = [ln.strip() for ln in (node.meta.get("stack_trace") or "").splitlines()]
    found = ""
    for i, line in enumerate(lines):
        frame = _FRAME.match(line)
        if frame is None or _is_internal(frame["file"]):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        code = "" if _FRAME.match(following) else following
        found = _format(frame["file"], frame["line"], code)
    return found


def frame_line(frame, lineno: int) -> str:
    """`` at file.py:LINE: `code` `` for one frame of a traceback."""
    import linecache

    code = linecache.getline(frame.f_code.co_filename, lineno).strip()
    return _format(frame.f_code.co_filename, lineno, code)


def exception_line(err: BaseException) -> str:
    """`` at file.py:LINE: `code` `` for the innermost user frame in ``err``'s traceback, or ``""``."""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if not _is_internal(frame.filename):
            return _format(frame.filename, frame.lineno, (frame.line or "").strip())
    return ""


def op_name(node: fx.Node) -> str:
    """A readable name for the operation of an fx node: ``torch.cat``, ``operator.mul``, …"""
    target = node.target
    if node.op == "call_function":
        module = getattr(target, "__module__", None) or ""
        name = getattr(target, "__name__", repr(target))
        if module in ("_operator", "operator"):
            return f"operator.{name}"
        if module.startswith("torch.nn.functional") or module == "torch._C._nn":
            return f"torch.nn.functional.{name}"
        if module.startswith("torch"):
            return f"torch.{name}"
        if module == "builtins":
            return name
        return f"{module}.{name}" if module else name
    if node.op == "call_method":
        return f"the tensor method .{target}() (call_method {target})"
    if node.op == "call_module":
        kind = node.meta.get("module_type")
        return f"the module `{target}`" + (f" ({kind})" if kind else "")
    return f"{node.op} {target}"


LEAF_FIX = ("keep the module that does this whole with leaf_modules=[...] (or trace without strict=True: it becomes "
            "an op node); growth never touches it")


def trace_error(node: fx.Node, what: str, fix: str) -> "TraceError":
    """``cannot trace <what> at file:line: `code`.`` followed by ``fix: <fix>``."""
    from ..errors import TraceError

    return TraceError(f"cannot trace {what}{source_line(node)}.\n  fix: {fix}")
