"""daggrow: grow neural networks where their expressivity bottleneck is.

Trace a plain PyTorch model into a graph IR (nodes are tensors, edges are blocks), measure
where the network cannot follow the loss gradient, add the best new neurons, nodes or edges
by graph rewriting, and keep training.
"""

from .errors import (
    CycleError,
    DaggrowError,
    DuplicateNameError,
    GraphError,
    IncompleteGraphError,
    PersistenceError,
    RenderError,
    StatisticsError,
    TraceError,
    UnknownNameError,
    WidthMismatchError,
)
from .graph import EdgeSpec, FrozenBlock, Graph, IdentityBlock, LinearBlock, NodeSpec, NormSpec

__version__ = "0.1.0"

__all__ = [
    "CycleError", "DaggrowError", "DuplicateNameError", "EdgeSpec", "FrozenBlock", "Graph",
    "GraphError", "IdentityBlock", "IncompleteGraphError", "LinearBlock", "NodeSpec", "NormSpec",
    "PersistenceError", "RenderError", "StatisticsError", "TraceError", "UnknownNameError",
    "WidthMismatchError", "__version__",
]
