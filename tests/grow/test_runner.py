"""The runner behind `daggrow grow`: its checks, run folders, resuming, CNN starts."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg
from daggrow import atomic
from daggrow.grow.runner import RunConfig, check_out, load_config, run_growth


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("settings, message", [
    (dict(activation="swishy"), "activation: unknown activation 'swishy'"),
    (dict(hidden=[3, 0]), "hidden widths must be ≥ 1, got \\[3, 0\\]"),
    (dict(model="cnn", channels=[]), "a CNN needs at least one conv layer"),
    (dict(kinds=[]), "kinds must be a non-empty list"),
    (dict(kinds=["grow"]), "kinds must be a non-empty list of expand_node, new_node, new_edge"),
    (dict(device="banana"), "unknown device 'banana'"),
    (dict(dataset="imagenet"), "dataset must be one of 'synthetic', 'digits', 'mnist1d'"),
    (dict(strategy="best"), "strategy must be one of"),
])
def test_a_bad_config_is_refused_before_the_folder_is_touched(tmp_path, settings, message):
    with pytest.raises(dg.ConfigError, match=message):
        run_growth(RunConfig(out=str(tmp_path / "run"), **settings), progress=False)
    assert not (tmp_path / "run").exists()


def test_field_constraints_of_the_config():
    for bad in (dict(lr=float("nan")), dict(lr=0), dict(steps=-1), dict(batch_size=0), dict(max_width=0),
                dict(seed=-1), dict(weight_decay=float("inf")), dict(unknown=1)):
        with pytest.raises(ValueError):
            RunConfig(**bad)


def test_check_out(tmp_path):
    with pytest.raises(dg.ConfigError, match="exclude each other"):
        check_out(tmp_path, resume=True, force=True)
    check_out(tmp_path / "new", resume=False, force=False)
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", resume=False, force=False)


def test_load_config_errors(tmp_path):
    with pytest.raises(dg.PersistenceError, match="config.json: missing"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text('{"steps": -3}')
    with pytest.raises(dg.PersistenceError, match="config.json: not a valid run configuration"):
        load_config(tmp_path)


def test_resuming_a_run_killed_before_its_first_checkpoint_runs_it_whole(tmp_path, capsys):
    config = RunConfig(dataset="digits", steps=1, out=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(config.model_dump_json())
    result = run_growth(RunConfig(out=str(tmp_path / "run")), resume=True, progress=True)
    assert not result["resumed"] and result["dataset"] == "digits"
    assert "growing on digits" in capsys.readouterr().err  # the progress bar
    whole = run_growth(config.model_copy(update={"out": str(tmp_path / "whole")}), progress=False)
    assert whole["test_loss"] == result["test_loss"]


def test_a_run_folder_left_between_two_renames_is_recovered_by_resume(tmp_path):
    out = tmp_path / "run"
    config = RunConfig(dataset="digits", steps=1, out=str(out))
    first = run_growth(config, progress=False)
    out.rename(atomic.backup_path(out))  # a kill between the two renames of the final save
    assert dg.History.load(out).events[-1].params_after == first["parameters"]
    assert dg.Graph.load(out).num_parameters() == first["parameters"]
    again = run_growth(RunConfig(out=str(out)), resume=True, progress=False)
    assert again["test_loss"] == first["test_loss"] and out.is_dir()
    assert not atomic.backup_path(out).exists()


def test_a_cnn_run_on_images(tmp_path):
    result = run_growth(RunConfig(dataset="digits", model="cnn", channels=[2], steps=1, out=str(tmp_path / "r")),
                        progress=False)
    graph = dg.Graph.load(tmp_path / "r")
    assert graph.node("x").shape == (8, 8) and graph.node("c1").shape == (8, 8)
    assert result["parameters"] == graph.num_parameters()


def test_an_unfinished_run_names_its_checkpoint(tmp_path):
    out = tmp_path / "run"

    def stop(position):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_growth(RunConfig(dataset="digits", steps=2, out=str(out)), progress=False, on_checkpoint=stop)
    with pytest.raises(dg.PersistenceError, match="a run folder whose run has not finished.*checkpoint/graph.*--resume"):
        dg.Graph.load(out)
    assert dg.Graph.load(out / "checkpoint").num_parameters() == dg.History.load(out).events[0].params_after


def test_devices_are_checked_against_this_machine(monkeypatch):
    from daggrow.grow import inputs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert inputs.device("cuda") == torch.device("cuda") and inputs.device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(dg.ConfigError, match="'cuda:3' does not exist: this machine has 1 CUDA device"):
        inputs.device("cuda:3")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(dg.ConfigError, match="'mps' is not available here"):
        inputs.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert inputs.device("mps").type == "mps"


def test_finite_data_with_a_non_finite_loss_blames_the_weights():
    g = dg.Graph()
    g.add_input("x", 2)
    g.add_node("y", 2)
    g.add_edge("x", "y")
    g.set_output("y")
    with torch.no_grad():
        g.module("x_to_y").weight.fill_(float("inf"))
    with pytest.raises(dg.TrainingError, match="training loss is NaN or infinite although the data is finite: the "
                                               "weights are not finite"):
        dg.Grower(g).fit([(torch.ones(4, 2), torch.zeros(4, dtype=torch.long))], growth_steps=0)
