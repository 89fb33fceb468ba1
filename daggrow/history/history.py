"""The growth history of a run: events, saved as a run folder.

``History.save(run_dir, graph=g)`` writes::

    run_dir/history.json      every event (versioned JSON)
    run_dir/step_NNN.dot      the architecture after step NNN (start and growth steps), its new parts highlighted
    run_dir/step_NNN.svg      the same, rendered, when Graphviz `dot` is installed
    run_dir/report.html       a self-contained page (see report.py)
    run_dir/graph/            the final graph (Graph.save), when ``graph`` is given

>>> h = History([GrowthEvent(step=0, action="start", params_after=15)])
>>> h.save("runs/demo")                 # doctest: +SKIP
>>> History.load("runs/demo") == h      # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from ..atomic import readable, replace_folder, write_file
from ..errors import PersistenceError
from .drawings import STEP_FILE, StepDrawing, step_drawings, warn_if_no_dot, write_step_files
from .events import GrowthEvent

if TYPE_CHECKING:
    from ..graph import Graph

HISTORY_FORMAT = "daggrow-history"
HISTORY_FILE, REPORT_FILE = "history.json", "report.html"
RUN_FILES = (HISTORY_FILE, "config.json", "checkpoint", "graph", REPORT_FILE)
HISTORY_VERSION = 1


class _HistoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = HISTORY_FORMAT
    format_version: int = HISTORY_VERSION
    events: list[GrowthEvent]


class History:
    """An ordered list of :class:`GrowthEvent`, as a run records them."""

    def __init__(self, events: list[GrowthEvent] | None = None) -> None:
        self.events: list[GrowthEvent] = list(events or [])

    def append(self, event: GrowthEvent) -> None:
        self.events.append(event)

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[GrowthEvent]:
        return iter(self.events)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self.events == other.events

    def __repr__(self) -> str:
        return f"History({len(self.events)} events)"

    def architecture_events(self) -> list[GrowthEvent]:
        """Events that carry a graph and changed it (start and growth steps), in order."""
        return [d.event for d in self.step_drawings()]

    def step_drawings(self) -> list[StepDrawing]:
        """The per-step drawings :meth:`save` writes (``step_NNN.dot``/``.svg``), in order."""
        return step_drawings(self.events)

    def to_json(self) -> str:
        """The content of ``history.json``."""
        return _HistoryFile(events=self.events).model_dump_json(indent=1)

    def save(self, run_dir: str | Path, *, graph: "Graph | None" = None, render_svg: bool = True,
             report: bool = True) -> Path:
        """Write the run folder (see the module docstring) and return its path.

        ``render_svg=False`` (or no Graphviz ``dot`` on PATH, said once by a warning) writes the DOT
        files only; the report then draws each step with its built-in layout.

        The folder is written as a temporary sibling and swapped in whole
        (:func:`daggrow.atomic.replace_folder`), so a kill at any instant leaves the earlier
        save or the new one. What this save does not write is carried over from the earlier
        folder: ``config.json``, a run's ``checkpoint/``, a ``graph/`` when ``graph`` is not
        given, a report when ``report=False``, and files of your own. ``report.html`` is
        written last, atomically, once the folder is in place.
        """
        folder = Path(run_dir)
        drawings = self.step_drawings()
        owned = {HISTORY_FILE} | {f"{d.stem}.{s}" for d in drawings for s in ("dot", "svg")}
        if report:
            owned.add(REPORT_FILE)
        if graph is not None:
            owned.add("graph")

        def keep(entry: Path) -> bool:  # stale step drawings of an earlier history are dropped
            return entry.name not in owned and not STEP_FILE.fullmatch(entry.name)

        from ..graph.io import save_graph

        if render_svg:
            warn_if_no_dot()

        with replace_folder(folder, replaceable=_is_run_folder, keep=keep, what="run folder") as tmp:
            (tmp / HISTORY_FILE).write_text(self.to_json(), encoding="utf-8")
            write_step_files(drawings, tmp, render_svg=render_svg)
            if graph is not None:
                save_graph(graph, tmp / "graph", atomic=False)
        if report:
            from .report import write_report

            write_report(self, folder, render_svg=render_svg)
        return folder

    def write_json(self, run_dir: str | Path) -> Path:
        """Write only ``run_dir/history.json``, atomically (a running growth updates it each step)."""
        return write_file(Path(run_dir) / HISTORY_FILE, self.to_json())

    @classmethod
    def load(cls, run_dir: str | Path) -> "History":
        """Read ``run_dir/history.json``; a :class:`PersistenceError` says what is wrong with it."""
        file = readable(run_dir) / HISTORY_FILE
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PersistenceError(f"{file}: missing (is {run_dir} a daggrow run folder? "
                                   f"`daggrow grow --out {run_dir}` writes one)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PersistenceError(f"{file}: not valid JSON ({err}); the file is damaged or truncated") from None
        if not isinstance(raw, dict) or raw.get("format") != HISTORY_FORMAT:
            raise PersistenceError(f"{file}: not a daggrow history (expected \"format\": \"{HISTORY_FORMAT}\")")
        version = raw.get("format_version")
        if version != HISTORY_VERSION:
            raise PersistenceError(f"{file}: a daggrow history of format version {version!r}, but this daggrow "
                                   f"reads version {HISTORY_VERSION}; use the daggrow version that wrote it")
        try:
            return cls(_HistoryFile.model_validate(raw).events)
        except ValidationError as err:
            raise PersistenceError(f"{file}: invalid content ({err.error_count()} problems):\n{err}") from None

    def summary_table(self) -> str:
        """A text table, one row per event except training epochs.

        Columns: step, action, where, +neurons, params, γ*, Δloss pred, Δloss meas, val acc; then
        the reason of each declined step and, for a finished ``daggrow grow`` run, the test metrics.
        """
        header = ("step", "action", "where", "+neurons", "params", "γ*", "Δloss pred", "Δloss meas", "val acc")
        rows = [header]
        for e in self.events:
            if e.action == "train":
                continue
            where = ",".join(e.where)
            rows.append((str(e.step), e.action, (where[:23] + "…" if len(where) > 24 else where) or "-",
                         str(e.neurons_added), f"{e.params_after:,}", _num(e.amplitude, ".3g"),
                         _num(e.predicted_loss_change, ".3g"), _num(e.measured_loss_change, ".3g"),
                         _num(e.val_accuracy, ".3f")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        left_aligned = (1, 2)
        lines = ["  ".join(c.ljust(w) if i in left_aligned else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines += [f"step {e.step} declined: {e.note}" for e in self.events if e.action == "declined"]
        test = [e for e in self.events if e.test_loss is not None]
        if test:
            acc = test[-1].test_accuracy
            lines.append(f"test accuracy {'-' if acc is None else f'{acc:.4f}'}, test loss {test[-1].test_loss:.4f}")
        return "\n".join(line.rstrip() for line in lines)


def _is_run_folder(folder: Path) -> bool:
    """An empty folder or a run folder (it holds a history, a run's config or checkpoint, or a graph)."""
    return any((folder / name).exists() for name in RUN_FILES) or not any(folder.iterdir())


def _num(x: float | None, fmt: str) -> str:
    if x is None:
        return "-"
    return format(x, fmt) if math.isfinite(x) else str(x)
