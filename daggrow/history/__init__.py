"""Growth history: events (pydantic), JSON, Graphviz per step and the HTML report."""

from .drawings import StepDrawing, step_drawings
from .events import GrowthEvent
from .history import History
from .plots import svg_plot
from .report import write_report

__all__ = ["GrowthEvent", "History", "StepDrawing", "step_drawings", "svg_plot", "write_report"]
