"""Growth: candidates, rewrites, amplitude line search, strategies and the Grower loop."""

from .candidates import KINDS, Candidate, enumerate_candidates, expandable, growth_blockers
from .grower import Grower, evaluate
from .line_search import LineSearchResult, line_search
from .optim import carry_optimizer
from .propose import NodeUpdate, Proposal, apply, bottleneck, node_update, propose
from .strategies import (
    STRATEGIES,
    Amplitude,
    BottleneckNode,
    Choice,
    Efficiency,
    InformationCriterion,
    MaxEigenvalue,
    Naive,
    SelectionContext,
    Strategy,
    get_strategy,
)

__all__ = [
    "KINDS", "STRATEGIES", "Amplitude", "BottleneckNode", "Candidate", "Choice", "Efficiency", "Grower",
    "InformationCriterion", "LineSearchResult", "MaxEigenvalue", "Naive", "NodeUpdate", "Proposal",
    "SelectionContext", "Strategy", "apply", "bottleneck", "carry_optimizer", "enumerate_candidates",
    "evaluate", "expandable", "get_strategy", "growth_blockers", "line_search", "node_update", "propose",
]
