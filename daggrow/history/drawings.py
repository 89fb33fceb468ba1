"""The architecture after each step as Graphviz: file names, DOT text, SVG, and SVG fit to inline.

A run folder holds one drawing per event that changed the architecture (the start and every
growth step), named after the event's step: ``step_000.dot`` is the starting graph,
``step_005.dot`` the graph after step 5 with step 5's new parts highlighted. Two such events
with the same step number (only in hand-made histories) get ``step_005.dot``, ``step_005_2.dot``.
"""

from __future__ import annotations

import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import graphviz

from ..graph.dot import to_dot
from .events import GrowthEvent

STEP_FILE = re.compile(r"step_\d{3,}(_\d+)?\.(dot|svg)")


@dataclass(frozen=True)
class StepDrawing:
    """The drawing of one event's architecture: ``stem`` names its files, without suffix."""

    stem: str
    event: GrowthEvent

    @property
    def title(self) -> str:
        """``"step 5: expand_node h"``: the caption drawn above the graph."""
        return f"step {self.event.step}: {self.event.action} {', '.join(self.event.where)}".strip()

    @property
    def highlight_step(self) -> int | None:
        """The step whose new parts are highlighted: this one, unless it is the start."""
        return self.event.step if self.event.is_growth else None

    def dot(self) -> str:
        """DOT source text of the event's graph with this step's new parts highlighted."""
        assert self.event.graph is not None
        return to_dot(self.event.graph, highlight_step=self.highlight_step, title=self.title)


def step_drawings(events: Iterable[GrowthEvent]) -> list[StepDrawing]:
    """One :class:`StepDrawing` per event that carries a graph and changed it (start and growth)."""
    drawings, taken = [], set()
    for event in events:
        if event.graph is None or not (event.is_growth or event.action == "start"):
            continue
        stem, k = f"step_{event.step:03d}", 1
        while stem in taken:
            k += 1
            stem = f"step_{event.step:03d}_{k}"
        taken.add(stem)
        drawings.append(StepDrawing(stem, event))
    return drawings


def can_render() -> bool:
    """Whether Graphviz's ``dot`` program is on PATH."""
    return shutil.which("dot") is not None


MISSING_DOT = ("Graphviz `dot` is not on PATH: no step_NNN.svg files, and the report draws each step with its "
               "built-in layout; install Graphviz (`apt-get install graphviz`, `brew install graphviz` or "
               "`conda install graphviz`) for the Graphviz drawings")
_warned = False


def warn_if_no_dot() -> bool:
    """Warn once per process (a :class:`RuntimeWarning`) when ``dot`` is missing; returns whether it is there."""
    global _warned
    if can_render():
        return True
    if not _warned:
        _warned = True
        warnings.warn(MISSING_DOT, RuntimeWarning, stacklevel=2)
    return False


def dot_to_svg(dot_text: str) -> str | None:
    """SVG text rendered by Graphviz ``dot``; ``None`` (with a warning if ``dot`` failed) when it cannot."""
    if not can_render():
        return None
    try:
        return graphviz.pipe("dot", "svg", dot_text.encode("utf-8"), quiet=True).decode("utf-8")
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError) as err:
        warnings.warn(f"Graphviz `dot` could not render a step drawing ({err}); the report draws it with its built-in layout",
                      RuntimeWarning, stacklevel=2)
        return None


def write_step_files(drawings: list[StepDrawing], folder: Path, *, render_svg: bool = True) -> None:
    """Write ``stem.dot`` (and ``stem.svg`` when ``render_svg`` and ``dot`` is installed) for each drawing.

    Step files of an earlier save into the same folder that this history no longer has are
    removed, and so is an SVG that would no longer match its DOT file.
    """
    keep = {f"{d.stem}.{suffix}" for d in drawings for suffix in ("dot", "svg")}
    for old in folder.iterdir():
        if old.is_file() and STEP_FILE.fullmatch(old.name) and old.name not in keep:
            old.unlink()
    rendering = render_svg and can_render()
    for drawing in drawings:
        text = drawing.dot()
        (folder / f"{drawing.stem}.dot").write_text(text, encoding="utf-8")
        svg_file = folder / f"{drawing.stem}.svg"
        svg = dot_to_svg(text) if rendering else None
        if svg is not None:
            svg_file.write_text(svg, encoding="utf-8")
        else:
            svg_file.unlink(missing_ok=True)
            rendering = False  # dot failed once: it would fail for the rest too


_PROLOG = re.compile(r"\A.*?(?=<svg\b)", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')
_ID = re.compile(r'(?<=\s)(id|href|xlink:href)="(#?)([^"]*)"')
_URL_REF = re.compile(r"url\(#([^)]*)\)")


def inline_svg(svg_text: str, id_prefix: str) -> str:
    """``svg_text`` made fit to sit inside an HTML page beside others.

    Drops the XML prolog, doctype and comments and the namespace declarations (HTML needs
    none), and prefixes every ``id`` (and the ``#`` references to them) with ``id_prefix`` so
    that drawings of different steps do not share ids.

    >>> inline_svg('<?xml version="1.0"?><!-- x --><svg xmlns="http://www.w3.org/2000/svg"><g id="a"/></svg>', "s1-")
    '<svg><g id="s1-a"/></svg>'
    """
    body = _COMMENT.sub("", _PROLOG.sub("", svg_text, count=1))
    body = _XMLNS.sub("", body)
    body = _ID.sub(lambda m: f'{m[1]}="{m[2]}{id_prefix}{m[3]}"' if m[1] == "id" or m[2] else m[0], body)
    return _URL_REF.sub(lambda m: f"url(#{id_prefix}{m[1]})", body).strip()
