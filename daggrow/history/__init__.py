"""Growth history: events (pydantic), JSON, Graphviz per step and the HTML report."""

from .events import GrowthEvent
from .history import History
from .report import svg_plot, write_report

__all__ = ["GrowthEvent", "History", "svg_plot", "write_report"]
