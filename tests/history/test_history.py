"""History: the run folder round trip, clear errors on damaged files, the summary table."""

from __future__ import annotations

import json
import math

import pytest

import daggrow as dg
from daggrow.history import GrowthEvent, History

from .fakes import fake_history


def test_run_folder_round_trip(tmp_path):
    history, graph = fake_history()
    assert history.save(tmp_path, graph=graph) == tmp_path
    assert History.load(tmp_path) == history
    assert dg.Graph.load(tmp_path / "graph").spec() == graph.spec()
    assert {p.name for p in tmp_path.iterdir()} >= {"history.json", "report.html", "graph", "step_000.dot"}


def test_non_finite_values_survive_the_folder(tmp_path):
    History([GrowthEvent(step=0, action="train", train_loss=float("nan"), val_loss=float("inf"))]).save(tmp_path)
    (event,) = History.load(tmp_path).events
    assert math.isnan(event.train_loss) and event.val_loss == math.inf


def test_saving_again_overwrites(tmp_path):
    history, _ = fake_history(3)
    history.save(tmp_path)
    history.append(GrowthEvent(step=9, action="train", note="later"))
    history.save(tmp_path)
    assert History.load(tmp_path).events[-1].note == "later"


@pytest.mark.parametrize("content, message", [
    ('{"format": "daggrow-history", "format_version": 1, "events": [', "not valid JSON"),
    ("[1, 2]", "not a daggrow history"),
    ('{"format": "daggrow-graph", "format_version": 1}', "not a daggrow history"),
    ('{"format": "daggrow-history", "format_version": 2, "events": []}', "format version 2"),
    ('{"format": "daggrow-history", "format_version": 1, "events": [{"step": 1, "action": "grow"}]}',
     r"invalid content(.|\n)*action"),
    ('{"format": "daggrow-history", "format_version": 1, "events": [{"step": "one", "action": "train"}]}',
     r"invalid content(.|\n)*step"),
])
def test_damaged_history_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "history.json").write_text(content)
    with pytest.raises(dg.PersistenceError, match=message) as err:
        History.load(tmp_path)
    assert str(tmp_path / "history.json") in str(err.value)


def test_missing_history_says_what_writes_one(tmp_path):
    with pytest.raises(dg.PersistenceError, match="missing(.|\n)*daggrow grow"):
        History.load(tmp_path / "nope")


def test_binary_garbage_is_a_clear_error(tmp_path):
    (tmp_path / "history.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(dg.PersistenceError, match="not valid JSON"):
        History.load(tmp_path)


def test_history_json_is_versioned():
    raw = json.loads(fake_history(1)[0].to_json())
    assert raw["format"] == "daggrow-history" and raw["format_version"] == 1 and len(raw["events"]) == 3


def test_summary_table_rows_and_columns():
    history = History([
        GrowthEvent(step=0, action="start", params_after=15, val_accuracy=0.28),
        GrowthEvent(step=1, action="expand_node", where=["h"], neurons_added=2, params_after=39, amplitude=0.5,
                    predicted_loss_change=-0.1, measured_loss_change=-0.08, val_accuracy=0.38125),
        GrowthEvent(step=1, action="train", params_after=39),
        GrowthEvent(step=2, action="new_node", where=["a_very_long_node_name_indeed"], neurons_added=2,
                    params_after=12345, amplitude=float("nan")),
    ])
    lines = history.summary_table().splitlines()
    assert lines[0].split() == ["step", "action", "where", "+neurons", "params", "γ*", "Δloss", "pred", "Δloss",
                                "meas", "val", "acc"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 5  # header, rule, three events (training epochs are left out)
    assert lines[2].split() == ["0", "start", "-", "0", "15", "-", "-", "-", "0.280"]
    assert lines[3].split() == ["1", "expand_node", "h", "2", "39", "0.5", "-0.1", "-0.08", "0.381"]
    assert lines[4].split() == ["2", "new_node", "a_very_long_node_name_i…", "2", "12,345", "nan", "-", "-", "-"]
    # numbers are right-aligned under their header
    assert lines[3].index("39") + 2 == lines[0].index("params") + len("params")


def test_a_history_written_before_directions_and_test_metrics_still_reads(tmp_path):
    """history.json of an earlier daggrow: no directions_added, test_loss, test_accuracy; no declined events."""
    old_event = {"step": 1, "action": "expand_node", "where": ["h"], "sources": ["x"], "targets": ["y"],
                 "neurons_added": 4, "eigenvalues": [0.5, 0.25], "amplitude": 0.5, "params_before": 10,
                 "params_after": 30, "val_accuracy": 0.5, "wall_time": 1.0, "duration": 0.5, "note": ""}
    (tmp_path / "history.json").write_text(json.dumps({"format": "daggrow-history", "format_version": 1,
                                                       "events": [old_event]}))
    (event,) = History.load(tmp_path).events
    assert event.neurons_added == 4 and event.directions_added is None
    assert event.test_loss is None and event.test_accuracy is None
    table = History.load(tmp_path).summary_table()
    assert "test accuracy" not in table and " 4 " in table


def test_declined_steps_and_test_metrics_are_in_the_table(tmp_path):
    history = History([GrowthEvent(step=0, action="start", params_after=10),
                       GrowthEvent(step=0, action="declined", params_before=10, params_after=10,
                                   note="no proposal: nothing to gain"),
                       GrowthEvent(step=0, action="train", params_after=10, test_loss=0.25, test_accuracy=0.9375)])
    history.save(tmp_path)
    assert History.load(tmp_path) == history
    table = history.summary_table()
    assert "step 0 declined: no proposal: nothing to gain" in table
    assert table.endswith("test accuracy 0.9375, test loss 0.2500")
    page = (tmp_path / "report.html").read_text()
    assert "<td>declined</td><td>no proposal: nothing to gain</td>" in page
    assert "test accuracy<b>0.9375</b>" in page and "declined steps<b>1</b>" in page
