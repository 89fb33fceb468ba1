"""The command line: version, grow (a short real run), show, report, and clean errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import daggrow as dg
from daggrow.cli import main


def test_version():
    out = subprocess.run([sys.executable, "-m", "daggrow.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"daggrow {dg.__version__}"


def test_grow_show_report(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["grow", "--dataset", "digits", "--steps", "2", "--quiet", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "digits: " in out and "test accuracy" in out
    for name in ("history.json", "report.html", "config.json", "graph/graph.json", "step_000.dot"):
        assert (run / name).exists(), name
    assert main(["show", str(run)]) == 0
    assert "parameters" in capsys.readouterr().out
    assert main(["show", str(run / "graph")]) == 0
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").exists()


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["show", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daggrow: error:") and "Traceback" not in err


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


def test_a_damaged_graph_is_one_line_on_stderr_and_exit_2(tmp_path, capsys):
    small_graph().save(tmp_path / "g")
    (tmp_path / "g" / "weights.pt").write_bytes(b"broken")
    assert main(["show", str(tmp_path / "g")]) == 2
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
    assert out.returncode == 2 and out.stderr.startswith("daggrow: error:") and "Traceback" not in out.stderr


def test_grow_with_weight_decay_keeps_the_best_validation_weights(tmp_path, capsys):
    from daggrow.grow import evaluate
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
