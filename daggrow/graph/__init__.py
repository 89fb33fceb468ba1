"""The graph IR (nodes are tensors, edges are blocks), its validation, persistence and drawing."""

from .activations import ACTIVATIONS, Activation, get_activation
from .graph import Graph, make_norm_module
from .spec import (
    FORMAT_VERSION,
    Block,
    ConvBlock,
    EdgeSpec,
    FlattenBlock,
    FrozenBlock,
    GraphSpec,
    GrowthRecord,
    IdentityBlock,
    LinearBlock,
    NodeSpec,
    NormSpec,
    OperandBlock,
    OpSpec,
    OpStep,
    PlaceBlock,
    PoolBlock,
)
from .opaque import OpaqueOp

__all__ = [
    "ACTIVATIONS", "Activation", "Block", "ConvBlock", "EdgeSpec", "FlattenBlock", "FORMAT_VERSION", "FrozenBlock", "Graph",
    "GraphSpec", "GrowthRecord", "IdentityBlock", "LinearBlock", "NodeSpec", "NormSpec", "OpaqueOp", "OperandBlock",
    "OpSpec", "OpStep", "PlaceBlock", "PoolBlock",
    "get_activation", "make_norm_module",
]
