"""The graph IR (nodes are tensors, edges are blocks), its validation, persistence and drawing."""

from .activations import ACTIVATIONS, Activation, get_activation
from .graph import Graph, make_norm_module
from .spec import (
    FORMAT_VERSION,
    Block,
    EdgeSpec,
    FrozenBlock,
    GraphSpec,
    GrowthRecord,
    IdentityBlock,
    LinearBlock,
    NodeSpec,
    NormSpec,
)

__all__ = [
    "ACTIVATIONS", "Activation", "Block", "EdgeSpec", "FORMAT_VERSION", "FrozenBlock", "Graph",
    "GraphSpec", "GrowthRecord", "IdentityBlock", "LinearBlock", "NodeSpec", "NormSpec",
    "get_activation", "make_norm_module",
]
