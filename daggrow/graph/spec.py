"""Serialisable descriptions of nodes and edges (pydantic, frozen).

A node is a tensor: ``z_v = Σ_{e=(u→v)} f_e(h_u)``, then ``h_v = dropout(σ_v(norm(z_v)))``.
An edge is a block ``f_e`` from its source's value to its target's pre-activation.
The specs hold no tensors; the graph keeps each edge's ``nn.Module`` beside its spec.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

FORMAT_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LinearBlock(_Frozen):
    """``f(h) = W h + b``; W has shape (width of target, width of source). Growable."""

    kind: Literal["linear"] = "linear"
    bias: bool = True


class IdentityBlock(_Frozen):
    """``f(h) = scale · h`` (a skip connection); source and target widths must agree."""

    kind: Literal["identity"] = "identity"
    scale: float = 1.0


class FrozenBlock(_Frozen):
    """An opaque module kept as it was traced (``leaf_modules=``); growth never touches it."""

    kind: Literal["frozen"] = "frozen"
    module_type: str = "Module"


Block = Annotated[Union[LinearBlock, IdentityBlock, FrozenBlock], Field(discriminator="kind")]
GROWABLE_KINDS = frozenset({"linear"})


class NormSpec(_Frozen):
    """A normalisation applied to the node's pre-activation sum, before the activation."""

    kind: Literal["batchnorm", "layernorm"]
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True


class NodeSpec(_Frozen):
    name: str
    width: int = Field(ge=1)
    activation: str = "identity"
    activation_params: dict[str, float] = Field(default_factory=dict)
    norm: NormSpec | None = None
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    born: int = 0  # growth step that created the node (0: the starting graph)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not name or not name.strip() or any(c in name for c in "\n\r\"'"):
            raise ValueError(f"invalid node name {name!r}: use a non-empty name without quotes or newlines")
        return name


class EdgeSpec(_Frozen):
    name: str
    source: str
    target: str
    block: Block
    born: int = 0  # growth step that created the edge


class GrowthRecord(_Frozen):
    """Which parts of the graph a growth step created: kept on the graph and saved with it.

    ``neurons`` maps a node to the ``[start, stop)`` range of the neurons the step appended.
    """

    step: int
    action: str
    nodes: list[str] = Field(default_factory=list)
    edges: list[str] = Field(default_factory=list)
    neurons: dict[str, tuple[int, int]] = Field(default_factory=dict)


class GraphSpec(_Frozen):
    """Everything about a graph except its tensors: what ``Graph.save`` writes as JSON."""

    format: Literal["daggrow-graph"] = "daggrow-graph"
    format_version: int = FORMAT_VERSION
    nodes: list[NodeSpec]
    edges: list[EdgeSpec]
    inputs: list[str]
    outputs: list[str]
    step: int = 0
    growth_log: list[GrowthRecord] = Field(default_factory=list)

