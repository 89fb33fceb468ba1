"""One :class:`GrowthEvent` per step of a run (pydantic, JSON round trip).

>>> e = GrowthEvent(step=3, action="expand_node", where=["h"], neurons_added=2, amplitude=0.5)
>>> GrowthEvent.model_validate_json(e.model_dump_json()) == e
True
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..graph.spec import GraphSpec

Action = Literal["start", "expand_node", "new_node", "new_edge", "best_update", "prune", "train", "declined"]
GROWTH_ACTIONS = frozenset({"expand_node", "new_node", "new_edge", "prune"})


class GrowthEvent(BaseModel):
    """What one step did and measured.

    ``where`` names the nodes/edges involved; ``neurons_added`` counts the new units and
    ``directions_added`` the solved directions they come from (one neuron each, or a ±pair under
    ReLU-like activations: docs/math.md §8); ``amplitude`` is γ* (or η* for a best update);
    loss changes are ``L(after) − L(before)`` on the held-out batch, the prediction being the
    first-order one ``−γ*·first_order_gain``; metrics are measured after the step; ``wall_time``
    counts seconds since the run started, ``duration`` those the step took; ``graph`` is the
    architecture after the step. A ``"declined"`` event is a growth step that added nothing,
    its reason in ``note``. NaN and infinite floats (a diverged loss) survive JSON.
    """

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    step: int
    action: Action
    where: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    neurons_added: int = 0  # neurons (units) the step added: directions × 2 under ReLU-like activations
    directions_added: int | None = None  # solved directions (α, ω) the step added (None in older histories)
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
    test_loss: float | None = None  # measured at the end of a run (``daggrow grow``): on its last event
    test_accuracy: float | None = None
    wall_time: float = 0.0
    duration: float = 0.0
    seed: int | None = None
    strategy: str | None = None
    init: str | None = None
    note: str = ""
    graph: GraphSpec | None = None

    @property
    def is_growth(self) -> bool:
        """True for steps that change the architecture (expand_node, new_node, new_edge, prune)."""
        return self.action in GROWTH_ACTIONS
