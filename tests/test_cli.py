"""The command line: version, grow (a short real run), show, report, option checks and clean errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import daggrow as dg
from daggrow.cli import build_parser, main
from daggrow.grow import evaluate
from daggrow.history import History


@pytest.fixture(autouse=True)
def one_thread():
    """Small runs: one thread is as fast, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_version():
    out = subprocess.run([sys.executable, "-m", "daggrow.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"daggrow {dg.__version__}"


def test_grow_show_report(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["grow", "--dataset", "digits", "--steps", "2", "--quiet", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    history = History.load(run)
    growth = [e for e in history if e.is_growth]
    graph = dg.Graph.load(run)  # a run folder loads as its final graph
    # the printed line is the saved run: its growth steps, parameters and the test accuracy of its graph
    data = dg.data.load_dataset("digits")
    _, _, test = data.loaders(256)
    test_loss, test_acc = evaluate(graph, test, "cross_entropy")
    assert f"digits: {len(growth)} growth steps, {graph.num_parameters():,} parameters, " \
           f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f}" in out
    assert 1 <= len(growth) <= 2 and graph.num_parameters() == history.events[-1].params_after
    assert graph.num_parameters() > history.events[0].params_after  # it grew
    assert test_acc > 0.5  # and learned (chance is 0.1)
    assert json.loads((run / "config.json").read_text())["dataset"] == "digits"
    # one step drawing per architecture change, each in the report with its step number
    stems = sorted(p.stem for p in run.glob("step_*.dot"))
    assert stems == [f"step_{e.step:03d}" for e in history if e.action == "start" or e.is_growth]
    report = (run / "report.html").read_text()
    assert [int(s) for s in re.findall(r'<div class="step" data-index="\d+" data-step="(\d+)"', report)] == \
        [int(s[5:]) for s in stems]
    assert main(["show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert history.summary_table() in shown and shown.rstrip().endswith(graph.summary())
    assert main(["show", str(run / "graph")]) == 0
    assert capsys.readouterr().out.strip() == graph.summary()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html") and (run / "report.html").read_text() == report


def test_library_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["show", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("daggrow show: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(dg.PersistenceError):
        main(["show", "--debug", str(tmp_path / "missing")])
    with pytest.raises(dg.PersistenceError):
        main(["--debug", "report", str(tmp_path / "missing")])


def small_graph() -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node("h", 2, "relu")
    g.add_node("y", 1)
    g.add_edge("x", "h"); g.add_edge("h", "y")
    g.set_output("y")
    return g


def test_show_a_graph_folder_and_a_folder_holding_graph(tmp_path, capsys):
    g = small_graph()
    g.save(tmp_path / "net.dg")
    g.save(tmp_path / "run" / "graph")
    assert main(["show", str(tmp_path / "net.dg")]) == 0
    assert capsys.readouterr().out.strip() == g.summary()
    assert main(["show", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip() == g.summary()
    assert dg.Graph.load(tmp_path / "run").spec() == g.spec()


def test_show_says_which_nodes_cannot_grow_and_why(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6), torch.nn.ReLU(), torch.nn.Linear(6, 5),
                                torch.nn.ReLU(), torch.nn.Linear(5, 2))
    g = dg.trace(model, torch.randn(3, 4))
    g.save(tmp_path / "g")
    assert main(["show", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    blockers = dg.growth_blockers(g)
    assert len(blockers) == 1 and "LayerNorm" in next(iter(blockers.values()))  # the ReLU node after it can grow
    assert out.startswith(g.summary()) and "1 hidden node(s) cannot gain neurons:" in out
    node, reason = next(iter(blockers.items()))
    assert f"  {node}: {reason}" in out


def test_a_damaged_graph_is_one_line_on_stderr_and_exit_1(tmp_path, capsys):
    small_graph().save(tmp_path / "g")
    (tmp_path / "g" / "weights.pt").write_bytes(b"broken")
    assert main(["show", str(tmp_path / "g")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "weights.pt: checksum mismatch" in captured.err


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and "grow" in capsys.readouterr().err


def test_console_script(tmp_path):
    exe = Path(sys.executable).with_name("daggrow")
    if not exe.exists():
        exe = shutil.which("daggrow")
        if exe is None:
            pytest.skip("the `daggrow` console script is not installed (pip install -e .)")
    small_graph().save(tmp_path / "g")
    out = subprocess.run([str(exe), "show", str(tmp_path / "g")], capture_output=True, text=True)
    assert out.returncode == 0 and "2 edges" in out.stdout
    out = subprocess.run([str(exe), "show", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("daggrow show: error:") and "Traceback" not in out.stderr


# ------------------------------------------------------------------------------------ option checks
BAD_OPTIONS = [
    (["--steps", "-1"], "argument --steps: must be ≥ 0, got -1"),
    (["--steps", "two"], "argument --steps: expected an integer, got 'two'"),
    (["--neurons-per-step", "0"], "argument --directions-per-step/--neurons-per-step: must be ≥ 1, got 0"),
    (["--directions-per-step", "0"], "argument --directions-per-step/--neurons-per-step: must be ≥ 1, got 0"),
    (["--epochs-between", "-1"], "argument --epochs-between: must be ≥ 0"),
    (["--final-epochs", "-2"], "argument --final-epochs: must be ≥ 0"),
    (["--batch-size", "0"], "argument --batch-size: must be ≥ 1"),
    (["--hidden", "4", "0"], "argument --hidden: must be ≥ 1"),
    (["--max-parameters", "0"], "argument --max-parameters: must be ≥ 1"),
    (["--seed", "-1"], "argument --seed: must be ≥ 0"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0"),
    (["--lr", "-1"], "argument --lr: must be a finite number > 0, got -1"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0"),
    (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["--weight-decay", "-0.1"], "argument --weight-decay: must be a finite number ≥ 0"),
    (["--device", "banana"], "argument --device: unknown device 'banana'"),
    (["--device", "meta"], "argument --device: device 'meta' is not supported"),
    (["--activation", "swishy"], "argument --activation: unknown activation 'swishy'"),
    (["--kinds", "x"], "argument --kinds: invalid choice: 'x'"),
    (["--dataset", "imagenet"], "argument --dataset: invalid choice"),
    (["--memory-budget", "lots"], "argument --memory-budget: memory budget must be a size such as 4GB"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[" ".join(o) for o, _ in BAD_OPTIONS])
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, options, message):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["grow", *options, "--out", str(run)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("daggrow grow: error: ") and err.count("\n") == 1
    assert message in err and "Traceback" not in err
    assert not run.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["grow", "--device", "cuda", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --device: device 'cuda' is not available" in err
    assert not (tmp_path / "run").exists()


def test_out_must_be_a_folder_and_a_run_is_not_clobbered(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["grow", "--out", str(tmp_path / "file")])
    assert exit_.value.code == 2 and "argument --out: the run folder" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["grow", "--dataset", "digits", "--steps", "1", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(SystemExit) as exit_:
        main(["grow", "--dataset", "synthetic", "--steps", "1", "--quiet", "--out", str(run)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "is not empty: pass --force" in err and err.count("\n") == 1
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    # --force replaces the whole run: nothing of the digits run is left beside the new config
    assert main(["grow", "--dataset", "mnist1d", "--steps", "0", "--quiet", "--force", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["dataset"] == "mnist1d"
    assert History.load(run).events[0].graph.nodes[0].width == 40  # mnist1d's 40 inputs, not digits' 64
    assert not (run / "step_001.dot").exists()


def test_force_only_replaces_a_run_folder(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    with pytest.raises(SystemExit) as exit_:
        main(["grow", "--force", "--out", str(mine)])
    assert exit_.value.code == 2 and "not a daggrow run" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


def test_resume_refuses_other_options_and_non_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["grow", "--resume", str(tmp_path)])
    assert exit_.value.code == 2 and "argument --resume: cannot resume" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    for options in (["--steps", "3"], ["--data", "digits"], ["--force"]):
        with pytest.raises(SystemExit) as exit_:
            main(["grow", "--resume", str(tmp_path), *options])
        assert exit_.value.code == 2 and "argument --resume:" in capsys.readouterr().err


def test_help_texts_are_filled_and_defaults_said_once():
    grow = build_parser()._subparsers._group_actions[0].choices["grow"]
    for action in grow._actions:
        assert action.help, f"{action.option_strings} has no help text"
    text = grow.format_help()
    kinds = text[text.index("\n  --kinds KIND"):text.index("\n  --lr LR")]
    assert kinds.count("default") == 1 and "None" not in kinds
    assert "(default: None)" not in text and "(default: False)" not in text


def test_grow_with_weight_decay_keeps_the_best_validation_weights(tmp_path, capsys):
    from daggrow.grow.runner import RunConfig, run_growth

    config = RunConfig(dataset="digits", steps=2, final_epochs=3, weight_decay=0.1, keep_best=True, lr=1e-2,
                       out=str(tmp_path / "run"))
    result = run_growth(config, progress=False)
    assert result["best_epoch"] in range(0, 4)
    # the kept weights are those of the best validation epoch: no later epoch beat them
    data = dg.data.load_dataset("digits")
    _, val, _ = data.loaders(config.batch_size, seed=config.seed)
    assert evaluate(result["graph"], val, "cross_entropy")[1] == pytest.approx(result["val_accuracy"])
    assert main(["grow", "--dataset", "digits", "--steps", "1", "--final-epochs", "2", "--weight-decay", "0.1",
                 "--keep-best", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    assert '"weight_decay": 0.1' in (tmp_path / "cli" / "config.json").read_text()


def test_grow_prints_the_tables_and_the_kept_epoch(tmp_path, capsys):
    assert main(["grow", "--dataset", "digits", "--steps", "1", "--final-epochs", "1", "--keep-best",
                 "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    history = History.load(tmp_path / "run")
    assert history.summary_table() in out and dg.Graph.load(tmp_path / "run").summary() in out
    assert "kept the weights of the final epoch with the best validation accuracy (epoch" in out


def test_an_interrupted_grow_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("daggrow.grow.runner.run_growth", interrupted)
    assert main(["grow", "--quiet", "--out", str(tmp_path / "run")]) == 130
    assert f"`daggrow grow --resume {tmp_path / 'run'}` goes on" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        main(["grow", "--quiet", "--debug", "--out", str(tmp_path / "run")])
    monkeypatch.setattr("daggrow.cli._cmd_show", interrupted)
    assert main(["show", "x"]) == 130 and "daggrow show: interrupted" in capsys.readouterr().err


def test_show_an_unfinished_run_and_resume_it(tmp_path, capsys):
    from daggrow.grow.runner import RunConfig, run_growth

    def stop(position):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_growth(RunConfig(dataset="digits", steps=1, out=str(run)), progress=False, on_checkpoint=stop)
    assert main(["show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "the run has not finished" in shown and f"daggrow grow --resume {run}" in shown
    assert main(["grow", "--resume", str(run), "--quiet"]) == 0
    assert "(resumed)" in capsys.readouterr().out and (run / "report.html").is_file()


def test_report_on_a_folder_left_between_two_renames(tmp_path, capsys):
    from daggrow import atomic

    run = tmp_path / "run"
    History([dg.GrowthEvent(step=0, action="start", graph=small_graph().spec())]).save(run, render_svg=False)
    run.rename(atomic.backup_path(run))
    assert main(["report", str(run)]) == 0
    assert (run / "history.json").is_file() and (run / "report.html").is_file()
    assert not atomic.backup_path(run).exists()


def test_the_default_job_learns(tmp_path, capsys):
    """`daggrow grow --out DIR` with no other option: digits, ≥ 0.90 test accuracy, growth that pays off."""
    run = tmp_path / "run"
    assert main(["grow", "--quiet", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["dataset"] == "digits"
    graph = dg.Graph.load(run)
    _, _, test = dg.data.load_dataset("digits").loaders(256)
    test_loss, test_acc = evaluate(graph, test, "cross_entropy")
    assert test_acc >= 0.90
    assert f"test accuracy {test_acc:.4f}" in capsys.readouterr().out
    history = History.load(run)
    growth = [e for e in history if e.is_growth]
    assert len(growth) >= 5 and graph.num_parameters() > 2 * history.events[0].params_after
    # growth pays off: validation accuracy after the last step well above the thin starting network's
    first = next(e.val_accuracy for e in history if e.val_accuracy is not None)
    assert growth[-1].val_accuracy > first + 0.2
    # the test metrics are in the history, the report and `daggrow show`
    assert history.events[-1].test_accuracy == test_acc and history.events[-1].test_loss == pytest.approx(test_loss)
    assert f"test accuracy<b>{test_acc:.4g}</b>" in (run / "report.html").read_text()
    assert main(["show", str(run)]) == 0
    assert f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f}" in capsys.readouterr().out


def _fake_run(folder: Path) -> History:
    from tests.history.fakes import fake_history

    history, graph = fake_history(3)
    history.save(folder, graph=graph, render_svg=False)
    return history


def test_report_without_dot_says_so_once_and_still_draws_every_step(tmp_path, capsys, monkeypatch):
    from daggrow.history import drawings

    history = _fake_run(tmp_path / "run")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))  # no `dot` anywhere on PATH
    monkeypatch.setattr(drawings, "_warned", False)
    assert shutil.which("dot") is None
    assert main(["report", str(tmp_path / "run")]) == 0
    assert main(["report", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err.count("Graphviz `dot` is not on PATH") == 1 and "apt-get install graphviz" in err
    page = (tmp_path / "run" / "report.html").read_text()
    panels = re.findall(r'<div class="drawing">(.*?)</div><table', page, re.S)
    assert len(panels) == len(history.step_drawings()) == 4
    assert all(p.startswith("<svg") and p.endswith("</svg>") for p in panels)
    assert not list((tmp_path / "run").glob("step_*.svg"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_report_writes_the_step_svgs_when_dot_is_there(tmp_path, capsys):
    history = _fake_run(tmp_path / "run")
    assert not list((tmp_path / "run").glob("step_*.svg"))  # saved without rendering
    assert main(["report", str(tmp_path / "run")]) == 0
    assert sorted(p.stem for p in (tmp_path / "run").glob("step_*.svg")) == \
        [d.stem for d in history.step_drawings()]
    assert "Graphviz" not in capsys.readouterr().err


def test_grow_without_dot_warns_once(tmp_path, capsys, monkeypatch):
    from daggrow.history import drawings

    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    monkeypatch.setattr(drawings, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the library's warning must not come on top
        assert main(["grow", "--steps", "1", "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().err.count("Graphviz `dot` is not on PATH") == 1
    assert not list((tmp_path / "run").glob("step_*.svg")) and list((tmp_path / "run").glob("step_*.dot"))


@pytest.mark.parametrize("argv, env, wanted", [([], None, 1), (["--threads", "3"], None, 3),
                                               (["--threads", "2"], "4", 2), ([], "4", None)])
def test_grow_sets_torchs_threads_for_the_run_only(tmp_path, monkeypatch, argv, env, wanted):
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    before = torch.get_num_threads()
    assert main(["grow", "--steps", "0", "--quiet", "--out", str(tmp_path / "run"), *argv]) == 0
    assert calls == ([] if wanted is None else [wanted]) + [before] and torch.get_num_threads() == before


def test_threads_may_be_given_on_resume(tmp_path):
    run = tmp_path / "run"
    assert main(["grow", "--steps", "0", "--quiet", "--out", str(run)]) == 0
    assert main(["grow", "--resume", str(run), "--threads", "1", "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main(["grow", "--resume", str(run), "--threads", "0"])
def test_memory_budget_reaches_the_grower(tmp_path):
    import json

    run = tmp_path / "run"
    assert main(["grow", "--dataset", "digits", "--steps", "1", "--quiet", "--memory-budget", "2GB",
                 "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["memory_budget"] == "2GB"
