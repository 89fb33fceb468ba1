"""daggrow: grow neural networks where their expressivity bottleneck is.

Trace a plain PyTorch model into a graph IR (nodes are tensors, edges are blocks), measure
where the network cannot follow the loss gradient, add the best new neurons, nodes or edges
by graph rewriting, and keep training.
"""

from .errors import (
    CandidateSkippedWarning,
    ConfigError,
    CycleError,
    DaggrowError,
    DistributedError,
    DuplicateNameError,
    GraphError,
    MemoryBudgetWarning,
    IncompleteGraphError,
    OpaqueOpWarning,
    PersistenceError,
    RenderError,
    SolverError,
    StatisticsError,
    TraceError,
    TrainingError,
    UnknownNameError,
    WidthMismatchError,
)
from .graph import (
    ConvBlock,
    EdgeSpec,
    FlattenBlock,
    FrozenBlock,
    Graph,
    IdentityBlock,
    LinearBlock,
    NodeSpec,
    NormSpec,
    OpaqueOp,
    OperandBlock,
    PlaceBlock,
    PoolBlock,
)
from .api import collect_statistics
from .grow import (
    Candidate,
    Choice,
    Grower,
    LineSearchResult,
    Proposal,
    Strategy,
    apply,
    bottleneck,
    enumerate_candidates,
    growth_blockers,
    line_search,
    propose,
)
from .history import GrowthEvent, History
from .stats import Statistics
from .trace import trace
from . import data

__version__ = "0.1.0"

__all__ = [
    "Candidate", "Choice", "GrowthEvent", "Grower", "History", "LineSearchResult", "Proposal", "Statistics", "Strategy", "apply",
    "bottleneck", "collect_statistics", "enumerate_candidates", "growth_blockers", "line_search", "propose", "trace",
    "ConfigError", "ConvBlock", "CycleError", "DaggrowError", "DistributedError", "DuplicateNameError", "EdgeSpec", "FlattenBlock", "FrozenBlock", "Graph",
    "GraphError", "IdentityBlock", "IncompleteGraphError", "LinearBlock", "NodeSpec", "NormSpec", "OpaqueOp",
    "OpaqueOpWarning", "OperandBlock", "PlaceBlock", "PoolBlock",
    "CandidateSkippedWarning", "MemoryBudgetWarning", "SolverError",
    "PersistenceError", "RenderError", "StatisticsError", "TraceError", "TrainingError", "UnknownNameError",
    "WidthMismatchError", "__version__",
]
