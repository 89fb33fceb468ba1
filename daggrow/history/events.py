"""One :class:`GrowthEvent` per step of a run (pydantic, JSON round trip)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..graph.spec import GraphSpec

Action = Literal["start", "expand_node", "new_node", "new_edge", "best_update", "prune", "train"]


class GrowthEvent(BaseModel):
    """What one step did and measured. Loss changes are L(after) − L(before) on the held-out batch."""

    model_config = ConfigDict(extra="forbid")

    step: int
    action: Action
    where: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    neurons_added: int = 0
    eigenvalues: list[float] = Field(default_factory=list)
    amplitude: float | None = None
    predicted_loss_change: float | None = None
    measured_loss_change: float | None = None
    params_before: int = 0
    params_after: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    wall_time: float = 0.0
    duration: float = 0.0
    seed: int | None = None
    strategy: str | None = None
    init: str | None = None
    note: str = ""
    graph: GraphSpec | None = None

    @property
    def is_growth(self) -> bool:
        return self.action in ("expand_node", "new_node", "new_edge", "prune")
