"""Checkpoint and resume: a run stopped at any checkpoint and resumed equals the uninterrupted run.

Same events (but their timings), same parameter counts, bit-identical final weights and
optimizer state, on the CPU. Stops are exceptions in-process (every checkpoint of a Grower.fit)
and SIGKILLs of a ``daggrow grow``-like subprocess (run_growth, mid-growth and mid-final-epochs).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import daggrow as dg
from daggrow import atomic
from daggrow.cli import main
from daggrow.data.datasets import TensorLoader, load_dataset
from daggrow.grow.checkpoint import load_checkpoint
from daggrow.grow.runner import RunConfig, run_growth

TIMINGS = {"wall_time", "duration"}


@pytest.fixture(autouse=True)
def one_thread():
    """Runs compared bit for bit use one thread each (and tiny matrices gain nothing from more:
    on a busy machine two threads make these runs 30× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small():
    d = load_dataset("digits", seed=0)
    return d.x_train[:256], d.y_train[:256], d.x_val[:64], d.y_val[:64]


def _graph() -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", 64)
    g.add_node("h", 2, "relu", dropout=0.1)  # dropout draws from torch's generator while training
    g.add_node("y", 10)
    g.add_edge("x", "h")
    g.add_edge("h", "y")
    g.set_output("y")
    return g


def _loaders(small):
    x, y, xv, yv = small
    return TensorLoader(x, y, 64, shuffle=True, seed=3), TensorLoader(xv, yv, 32)


FITS = {
    "sgd": dict(settings=dict(neurons_per_step=2, lr=1e-2, reuse_input_moments=True),
                fit=dict(growth_steps=2, epochs_between=2)),
    "pure-north": dict(settings=dict(init="north", neurons_per_step=1, strategy="naive"),  # NORTH draws from the generator
                       fit=dict(growth_steps=2, mode="pure")),
}


def _fit(small, case: str, checkpoint_dir: Path | None = None, copies: Path | None = None) -> dg.Grower:
    """The whole fit; with ``copies``, a copy of the checkpoint folder as each is written."""
    torch.manual_seed(0)
    train, val = _loaders(small)
    grower = dg.Grower(_graph(), **FITS[case]["settings"])
    seen = [0]

    def copy(position):
        seen[0] += 1
        shutil.copytree(checkpoint_dir, copies / str(seen[0]))

    grower.on_checkpoint = copy if copies is not None else None
    grower.fit(train, val, checkpoint_dir=checkpoint_dir, **FITS[case]["fit"])
    grower.checkpoints = seen[0]
    return grower


def _resume(small, checkpoint: Path) -> dg.Grower:
    torch.manual_seed(12345)  # whatever the process did in between: the checkpoint puts the state back
    train, val = _loaders(small)
    for _ in range(3):
        iter(train)  # a loader of a new process would start at epoch 0; this one is moved on
    grower = dg.Grower.from_checkpoint(checkpoint)
    grower.resume(train, val)
    return grower


def _events(grower: dg.Grower) -> list[dict]:
    return [e.model_dump(exclude=TIMINGS) for e in grower.history]


def _assert_same_run(a: dg.Grower, b: dg.Grower) -> None:
    assert _events(a) == _events(b)
    assert a.graph.spec() == b.graph.spec() and a.graph.num_parameters() == b.graph.num_parameters()
    for (name, p), (_, q) in zip(a.graph.named_parameters(), b.graph.named_parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(a.optimizer.param_groups[0]["params"] if a.optimizer else [],
                    b.optimizer.param_groups[0]["params"] if b.optimizer else []):
        for key, value in a.optimizer.state[p].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b.optimizer.state[q][key])), key


@pytest.mark.parametrize("case", sorted(FITS))
def test_a_fit_stopped_at_any_checkpoint_resumes_into_the_same_run(small, tmp_path, case):
    reference = _fit(small, case)
    checkpointed = _fit(small, case, tmp_path / "c", copies=tmp_path)
    _assert_same_run(reference, checkpointed)  # writing checkpoints changes nothing
    assert any(e.is_growth for e in reference.history) and checkpointed.checkpoints >= 5
    for k in range(1, checkpointed.checkpoints + 1):
        _assert_same_run(reference, _resume(small, tmp_path / str(k)))


def test_a_finished_fit_resumes_to_itself(small, tmp_path):
    done = _fit(small, "sgd", tmp_path / "c")
    assert load_checkpoint(tmp_path / "c").file.position.finished
    _assert_same_run(done, _resume(small, tmp_path / "c"))


def test_resume_needs_a_checkpoint(small):
    train, val = _loaders(small)
    with pytest.raises(dg.DaggrowError, match="from_checkpoint"):
        dg.Grower(_graph()).resume(train, val)


def test_code_is_not_stored_and_must_be_passed_again(small, tmp_path):
    train, val = _loaders(small)

    def loss(out, y):
        return torch.nn.functional.cross_entropy(out, y, reduction="none")

    grower = dg.Grower(_graph(), loss=loss, strategy=dg.grow.Efficiency(top_k=2),
                       optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    grower.fit(train, val, growth_steps=1, checkpoint_dir=tmp_path / "c")
    with pytest.raises(dg.ConfigError, match="given a loss function \\(loss\\).*pass loss="):
        dg.Grower.from_checkpoint(tmp_path / "c")
    with pytest.raises(dg.ConfigError, match="given a strategy object \\(Efficiency\\)"):
        dg.Grower.from_checkpoint(tmp_path / "c", loss=loss)
    with pytest.raises(dg.ConfigError, match="given an optimizer factory \\(<lambda>\\)"):
        dg.Grower.from_checkpoint(tmp_path / "c", loss=loss, strategy="amplitude")
    back = dg.Grower.from_checkpoint(tmp_path / "c", loss=loss, strategy=dg.grow.Efficiency(top_k=2),
                                     optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    assert isinstance(back.optimizer, torch.optim.SGD) and back.optimizer.param_groups[0]["momentum"] == 0.9
    momentum = {n: back.optimizer.state[p]["momentum_buffer"] for n, p in back.graph.named_parameters()}
    saved = {n: grower.optimizer.state[p]["momentum_buffer"] for n, p in grower.graph.named_parameters()}
    assert momentum.keys() == saved.keys() and all(torch.equal(momentum[n], saved[n]) for n in saved)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_a_checkpoint_never_unpickles(small, tmp_path):
    train, val = _loaders(small)
    dg.Grower(_graph()).fit(train, val, growth_steps=0, checkpoint_dir=tmp_path / "c")
    state = torch.load(tmp_path / "c" / "state.pt", weights_only=True)
    state["torch_rng"] = Payload()
    torch.save(state, tmp_path / "c" / "state.pt")
    with pytest.raises(dg.PersistenceError, match="state.pt: cannot be read safely"):
        load_checkpoint(tmp_path / "c")


@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "checkpoint.json").write_text("{"), "checkpoint.json: not valid JSON"),
    (lambda c: (c / "checkpoint.json").write_text('{"format": "other"}'), "not a daggrow checkpoint"),
    (lambda c: (c / "state.pt").unlink(), "state.pt: missing"),
    (lambda c: (c / "state.pt").write_bytes(b"junk"), "state.pt: cannot be read"),
    (lambda c: torch.save({"x": torch.zeros(1)}, c / "state.pt"), "not a daggrow checkpoint state"),
    (lambda c: (c / "checkpoint.json").unlink(), "not a checkpoint"),
])
def test_damaged_checkpoints_are_clear_errors(small, tmp_path, damage, message):
    train, val = _loaders(small)
    dg.Grower(_graph()).fit(train, val, growth_steps=0, checkpoint_dir=tmp_path / "c")
    damage(tmp_path / "c")
    with pytest.raises(dg.PersistenceError, match=message):
        dg.Grower.from_checkpoint(tmp_path / "c")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills are simulated in forked children")
def test_a_checkpoint_killed_at_every_boundary_still_loads(small, tmp_path):
    train, val = _loaders(small)
    grower = dg.Grower(_graph())
    grower.fit(train, val, growth_steps=1, checkpoint_dir=tmp_path / "c")
    old = load_checkpoint(tmp_path / "c").file.position
    grower.train_epoch(train)
    for k in range(1, 100):
        pid = os.fork()
        if pid == 0:
            try:
                torch.set_num_threads(1)
                seen = [0]

                def hook(what):
                    seen[0] += 1
                    if seen[0] == k:
                        os._exit(77)

                atomic._hook = hook
                grower.save_checkpoint(tmp_path / "c", old.model_copy(update={"epochs_done": 9}))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        position = load_checkpoint(tmp_path / "c").file.position
        assert position.epochs_done in (old.epochs_done, 9)
        if os.waitstatus_to_exitcode(status) == 0:
            break
    assert position.epochs_done == 9 and k > 5


# ------------------------------------------------------------------------------- the runner, killed
CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    from daggrow.grow.runner import RunConfig, run_growth
    torch.set_num_threads(1)  # as the test's own runs
    out, kill_at = sys.argv[1], int(sys.argv[2])
    seen = [0]
    def kill(position):
        seen[0] += 1
        if seen[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    run_growth(RunConfig(dataset="digits", steps=2, final_epochs=2, keep_best=True, out=out), progress=False,
               on_checkpoint=kill)
    sys.exit(3)  # never reached: killed first
""")


def _same_run_folders(a: Path, b: Path) -> None:
    assert [e.model_dump(exclude=TIMINGS) for e in dg.History.load(a)] == \
           [e.model_dump(exclude=TIMINGS) for e in dg.History.load(b)]
    ga, gb = dg.Graph.load(a), dg.Graph.load(b)
    assert ga.spec() == gb.spec()
    assert all(torch.equal(p, q) for (_, p), (_, q) in zip(ga.named_parameters(), gb.named_parameters()))
    assert (b / "report.html").is_file()


def test_a_killed_run_resumes_into_the_same_run(tmp_path):
    config = RunConfig(dataset="digits", steps=2, final_epochs=2, keep_best=True, out=str(tmp_path / "whole"))
    whole = run_growth(config, progress=False)
    # SIGKILL after the 4th checkpoint: start, step 1, its epoch, step 2
    out = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), "4"], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert (out / "checkpoint" / "checkpoint.json").is_file() and not (out / "report.html").exists()
    assert [e.action for e in dg.History.load(out)][:2] == ["start", "new_node"]  # kept up to date
    with pytest.raises(SystemExit):
        main(["grow", "--dataset", "digits", "--out", str(out)])  # not clobbered
    resumed = run_growth(RunConfig(out=str(out)), resume=True, progress=False)
    assert resumed["resumed"] and resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["test_loss"] == whole["test_loss"] and resumed["parameters"] == whole["parameters"]
    _same_run_folders(tmp_path / "whole", out)


def test_a_run_stopped_in_its_final_epochs_resumes_with_its_best_weights(tmp_path):
    config = RunConfig(dataset="digits", steps=1, final_epochs=3, keep_best=True, lr=0.05, out=str(tmp_path / "whole"))
    whole = run_growth(config, progress=False)
    out = tmp_path / "stopped"
    seen = [0]

    def stop(position):
        seen[0] += 1
        if seen[0] == 5:  # start, step 1, its epoch, final epoch 1, final epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_growth(config.model_copy(update={"out": str(out)}), progress=False, on_checkpoint=stop)
    assert load_checkpoint(out).file.extra["final_epoch"] == 2
    resumed = run_growth(RunConfig(out=str(out)), resume=True, progress=False)
    assert resumed["best_epoch"] == whole["best_epoch"] and resumed["val_accuracy"] == whole["val_accuracy"]
    _same_run_folders(tmp_path / "whole", out)
    again = run_growth(RunConfig(out=str(out)), resume=True, progress=False)  # a finished run: the same again
    assert again["test_loss"] == whole["test_loss"]


def test_an_optimizer_that_does_not_fit_is_a_clear_error(small, tmp_path):
    import json

    train, val = _loaders(small)
    dg.Grower(_graph()).fit(train, val, growth_steps=1, checkpoint_dir=tmp_path / "c")
    with pytest.raises(dg.PersistenceError, match="the run's optimizer was Adam, but the optimizer given makes a SGD"):
        dg.Grower.from_checkpoint(tmp_path / "c", optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    spec = json.loads((tmp_path / "c" / "checkpoint.json").read_text())
    spec["optimizer_params"][0][0] = "edge:ghost.weight"
    (tmp_path / "c" / "checkpoint.json").write_text(json.dumps(spec))
    with pytest.raises(dg.PersistenceError, match="names parameters the graph lacks: \\['edge:ghost.weight'\\]"):
        dg.Grower.from_checkpoint(tmp_path / "c")
    spec["optimizer_params"][0] = spec["optimizer_params"][0][1:]
    (tmp_path / "c" / "checkpoint.json").write_text(json.dumps(spec))
    with pytest.raises(dg.PersistenceError, match="the optimizer state does not fit a Adam"):
        dg.Grower.from_checkpoint(tmp_path / "c")


def test_only_plain_decompositions_are_kept():
    from dataclasses import dataclass

    from daggrow.grow.checkpoint import _cache_entries, _decomposed
    from daggrow.solve.linalg import whitening

    S = torch.eye(3, dtype=torch.float64)
    kept = _decomposed((S, whitening(S)))
    assert kept[1] == "Whitening" and _cache_entries([((("x",), True, 1e-10), *kept)])

    @dataclass(frozen=True)
    class Odd:
        fn: object

    assert _decomposed(("not", "a pair of tensor and dataclass")) is None
    assert _decomposed((S, Odd(print))) is None
    assert _cache_entries([(("k",), S, "Unknown", {})]) == {}


def test_lists_of_batches_resume_too(tmp_path):
    """A loader without state_dict (a list) replays itself: nothing to restore."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 64, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    whole = dg.Grower(_graph(), seed=1)
    whole.fit(batches, batches, growth_steps=1)
    torch.manual_seed(0)
    stopped = dg.Grower(_graph(), seed=1)
    stopped.on_checkpoint = lambda position: shutil.copytree(tmp_path / "c", tmp_path / "first", dirs_exist_ok=True) \
        if not (tmp_path / "first").exists() else None
    stopped.fit(batches, batches, growth_steps=1, checkpoint_dir=tmp_path / "c")
    resumed = dg.Grower.from_checkpoint(tmp_path / "first")
    resumed.resume(batches, batches)
    _assert_same_run(whole, resumed)


# ------------------------------------------------------------------------------- user modules (trust)
class Halver(torch.nn.Module):
    """A user's module: a checkpoint keeps it by pickle, so it loads only with trust=True."""

    def forward(self, t):
        return t / 2


def test_a_checkpoint_with_user_modules_resumes_with_trust(small, tmp_path):
    def graph() -> dg.Graph:
        torch.manual_seed(0)
        g = dg.Graph()
        g.add_input("x", 64)
        g.add_node("d", 64)
        g.add_node("h", 2, "relu")
        g.add_node("y", 10)
        g.add_edge("x", "d", dg.FrozenBlock(module_type="Halver"), module=Halver(), name="half")
        g.add_edge("d", "h")
        g.add_edge("h", "y")
        g.set_output("y")
        return g

    train, val = _loaders(small)
    whole = dg.Grower(graph(), lr=1e-2).fit(train, val, growth_steps=2)
    seen = [0]

    def stop(position):
        seen[0] += 1
        if seen[0] == 3:  # start, step 1, its epoch
            raise KeyboardInterrupt

    grower = dg.Grower(graph(), lr=1e-2)
    grower.on_checkpoint = stop
    train, val = _loaders(small)
    with pytest.raises(KeyboardInterrupt):
        grower.fit(train, val, growth_steps=2, checkpoint_dir=tmp_path / "c")
    with pytest.raises(dg.PersistenceError, match="trust=True"):
        dg.Grower.from_checkpoint(tmp_path / "c")
    resumed = dg.Grower.from_checkpoint(tmp_path / "c", trust=True).resume(train, val)
    assert [e.model_dump(exclude=TIMINGS) for e in resumed] == [e.model_dump(exclude=TIMINGS) for e in whole]


def test_trust_goes_with_resume_only(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["grow", "--trust", "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2 and "--trust: only with --resume" in capsys.readouterr().err
    assert main(["grow", "--dataset", "digits", "--steps", "1", "--quiet", "--out", str(tmp_path / "r")]) == 0
    assert main(["grow", "--resume", str(tmp_path / "r"), "--trust", "--quiet"]) == 0
    assert "(resumed)" in capsys.readouterr().out


def test_a_cnn_fit_stopped_at_a_checkpoint_resumes_into_the_same_run(small, tmp_path):
    """New channels read the training loader twice per step (docs/math.md §10): a resumed CNN
    run still draws the same shuffles and takes the same steps."""
    from daggrow.grow.runner import starting_cnn

    def loaders():
        x, y, xv, yv = small
        return (TensorLoader(x.reshape(-1, 1, 8, 8), y, 64, shuffle=True, seed=3),
                TensorLoader(xv.reshape(-1, 1, 8, 8), yv, 32))

    def fit(checkpoint_dir=None, copies=None) -> dg.Grower:
        torch.manual_seed(0)
        train, val = loaders()
        grower = dg.Grower(starting_cnn(1, (8, 8), 10, [2]), kinds=["expand_node"], neurons_per_step=1, lr=1e-2)
        seen = [0]

        def copy(position):
            seen[0] += 1
            shutil.copytree(checkpoint_dir, copies / str(seen[0]))

        grower.on_checkpoint = copy if copies is not None else None
        grower.fit(train, val, growth_steps=2, epochs_between=1, checkpoint_dir=checkpoint_dir)
        grower.checkpoints = seen[0]
        return grower

    reference = fit()
    checkpointed = fit(tmp_path / "c", copies=tmp_path)
    _assert_same_run(reference, checkpointed)
    assert any(e.is_growth for e in reference.history) and checkpointed.checkpoints >= 3
    for k in (1, checkpointed.checkpoints // 2, checkpointed.checkpoints):
        torch.manual_seed(12345)
        train, val = loaders()
        grower = dg.Grower.from_checkpoint(tmp_path / str(k))
        grower.resume(train, val)
        _assert_same_run(reference, grower)
