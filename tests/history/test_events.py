"""GrowthEvent: JSON round trip (graph spec included), non-finite floats, refusals."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from daggrow.history import GrowthEvent

from .fakes import fake_history, grown_graph


def test_every_field_survives_json():
    _, spec = grown_graph(4)
    event = GrowthEvent(step=4, action="expand_node", where=["h"], sources=["x"], targets=["y"], neurons_added=2,
                        eigenvalues=[0.3, 1e-12], amplitude=0.125, predicted_loss_change=-0.1,
                        measured_loss_change=-0.0625, params_before=90, params_after=114, train_loss=0.5,
                        val_loss=0.75, train_accuracy=0.875, val_accuracy=0.8125, wall_time=12.5, duration=0.25,
                        seed=7, strategy="amplitude", init="tiny", note="3 proposals", graph=spec)
    back = GrowthEvent.model_validate_json(event.model_dump_json())
    assert back == event
    assert back.graph.growth_log[-1].neurons == {"h": (5, 7)}  # the third widening of h; tuples come back as tuples


def test_every_event_of_a_fake_run_survives_json():
    history, _ = fake_history()
    for event in history:
        assert GrowthEvent.model_validate_json(event.model_dump_json()) == event


def test_diverged_losses_stay_nan_and_infinite():
    event = GrowthEvent(step=2, action="train", train_loss=float("nan"), val_loss=float("inf"),
                        eigenvalues=[float("-inf")])
    text = event.model_dump_json()
    assert "NaN" in text and "Infinity" in text
    back = GrowthEvent.model_validate_json(text)
    assert math.isnan(back.train_loss) and back.val_loss == math.inf and back.eigenvalues == [-math.inf]


def test_unknown_action_and_unknown_field_are_refused():
    with pytest.raises(ValidationError, match="action"):
        GrowthEvent(step=1, action="grow")
    with pytest.raises(ValidationError, match="gamma"):
        GrowthEvent(step=1, action="train", gamma=0.5)


def test_growth_actions():
    assert [GrowthEvent(step=0, action=a).is_growth for a in ("expand_node", "new_node", "new_edge", "prune")] == [
        True] * 4
    assert not any(GrowthEvent(step=0, action=a).is_growth for a in ("start", "train", "best_update"))
