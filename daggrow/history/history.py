"""The growth history of a run: events, saved as a run folder.

``History.save(run_dir, graph=g)`` writes::

    run_dir/history.json      every event (versioned)
    run_dir/step_NNN.dot      the architecture after each growth step, new parts highlighted
    run_dir/step_NNN.svg      the same, rendered, when Graphviz `dot` is installed
    run_dir/report.html       a self-contained page (see report.py)
    run_dir/graph/            the final graph (Graph.save)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import PersistenceError, RenderError
from ..graph.dot import render, to_dot
from .events import GrowthEvent

if TYPE_CHECKING:
    from ..graph import Graph

HISTORY_VERSION = 1


class _HistoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = "daggrow-history"
    format_version: int = HISTORY_VERSION
    events: list[GrowthEvent]


def step_file(event: GrowthEvent, index: int) -> str:
    return f"step_{index:03d}"


class History:
    """An ordered list of :class:`GrowthEvent`."""

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

    def architecture_events(self) -> list[GrowthEvent]:
        """Events that carry a graph and changed it (start and growth steps), in order."""
        return [e for e in self.events if e.graph is not None and (e.is_growth or e.action == "start")]

    def to_json(self) -> str:
        return _HistoryFile(events=self.events).model_dump_json(indent=1)

    def save(self, run_dir: str | Path, *, graph: "Graph | None" = None, render_svg: bool = True,
             report: bool = True) -> Path:
        """Write the run folder (see module docstring); returns it."""
        folder = Path(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "history.json").write_text(self.to_json())
        can_render = render_svg and shutil.which("dot") is not None
        for i, event in enumerate(self.architecture_events()):
            title = f"step {event.step}: {event.action} {' '.join(event.where)}".strip()
            highlight = event.step if event.is_growth else None
            (folder / f"{step_file(event, i)}.dot").write_text(to_dot(event.graph, highlight_step=highlight, title=title))
            if can_render:
                try:
                    render(event.graph, folder / f"{step_file(event, i)}.svg", highlight_step=highlight, title=title)
                except RenderError:
                    can_render = False
        if graph is not None:
            graph.save(folder / "graph")
        if report:
            from .report import write_report

            write_report(self, folder)
        return folder

    @classmethod
    def load(cls, run_dir: str | Path) -> "History":
        file = Path(run_dir) / "history.json"
        try:
            raw = json.loads(file.read_text())
        except FileNotFoundError:
            raise PersistenceError(f"{file}: missing (is {run_dir} a daggrow run folder?)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PersistenceError(f"{file}: not valid JSON ({err})") from None
        if not isinstance(raw, dict) or raw.get("format_version") != HISTORY_VERSION:
            raise PersistenceError(f"{file}: not a daggrow history of version {HISTORY_VERSION}")
        try:
            return cls(_HistoryFile.model_validate(raw).events)
        except ValidationError as err:
            raise PersistenceError(f"{file}: invalid content:\n{err}") from None

    def summary_table(self) -> str:
        """A text table: one row per growth or best-update event."""
        rows = [("step", "action", "where", "+neurons", "params", "γ*", "Δloss pred", "Δloss meas", "val acc")]

        def num(x: float | None, fmt: str) -> str:
            return "-" if x is None else format(x, fmt)

        for e in self.events:
            if e.action in ("train",):
                continue
            rows.append((str(e.step), e.action, ",".join(e.where)[:24] or "-", str(e.neurons_added),
                         f"{e.params_after:,}", num(e.amplitude, ".3g"), num(e.predicted_loss_change, ".3g"),
                         num(e.measured_loss_change, ".3g"), num(e.val_accuracy, ".3f")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(w) if i not in (1, 2) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)
