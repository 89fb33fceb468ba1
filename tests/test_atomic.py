"""Crash safety: a kill -9 at any instant of a save leaves the earlier save (or the new one) readable.

Two kinds of kills, both in forked children (a kill runs no cleanup, unlike an exception):
at every write boundary in turn (``daggrow.atomic._boundary``), and at random instants in a
loop. Plus exceptions at every boundary (a full disk), recovery of a lone backup, orphans.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

import daggrow as dg
from daggrow import atomic
from daggrow.history import GrowthEvent, History

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills are simulated in forked children")

KILLED = 77


def _in_child(action, kill_at: int | None = None) -> int:
    """Run ``action()`` in a forked child that dies with no cleanup at write boundary ``kill_at``
    (1-based); returns the child's exit code (0: finished first, KILLED: killed)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            torch.set_num_threads(1)  # no OpenMP pool in a forked child
            seen = [0]

            def hook(what: str) -> None:
                seen[0] += 1
                if seen[0] == kill_at:
                    os._exit(KILLED)

            atomic._hook = hook
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_at_every_boundary(action, check) -> int:
    """Kill ``action`` at boundary 1, 2, ... until it finishes first; ``check()`` after each; returns
    how many boundaries there were."""
    for k in range(1, 200):
        code = _in_child(action, kill_at=k)
        assert code in (0, KILLED), f"the child failed at boundary {k} (exit {code})"
        check()
        if code == 0:
            assert k > 3
            return k - 1
    raise AssertionError("the save never finished")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------- files
def test_write_file_is_old_or_new_at_every_boundary(tmp_path):
    target = tmp_path / "history.json"
    atomic.write_file(target, "old")

    def check():
        assert target.read_text() in ("old", "new")

    n = _kill_at_every_boundary(lambda: atomic.write_file(target, "new"), check)
    assert target.read_text() == "new" and n >= 3
    atomic.write_file(target, "newer")
    assert _hidden(tmp_path) == []  # the orphans of the killed writes are gone


def test_write_file_failing_at_every_boundary_changes_nothing(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic.write_file(target, b"old")
    for k in range(1, 10):
        seen = [0]

        def hook(what, k=k):
            seen[0] += 1
            if seen[0] == k:
                raise OSError(28, "No space left on device")

        monkeypatch.setattr(atomic, "_hook", hook)
        try:
            atomic.write_file(target, b"new")
        except OSError:
            assert target.read_bytes() == b"old" and _hidden(tmp_path) == []
        else:
            break
    assert target.read_bytes() == b"new"


def test_write_file_refuses_a_folder(tmp_path):
    with pytest.raises(dg.PersistenceError, match="it is a folder"):
        atomic.write_file(tmp_path, "x")


# ------------------------------------------------------------------------------------- graphs
def _graph(width: int, fill: float) -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", width)
    g.add_node("h", width, "relu", norm="batchnorm")
    g.add_node("y", width)
    g.add_edge("x", "h")
    g.add_edge("h", "y")
    g.set_output("y")
    with torch.no_grad():
        for p in g.parameters():
            p.fill_(fill)
    return g


def _fill_of(folder: Path) -> float:
    g = dg.Graph.load(folder)  # raises on any damaged or mixed folder
    values = {float(p.detach().flatten()[0]) for p in g.parameters()}
    assert len(values) == 1
    return values.pop()


def test_graph_save_killed_at_every_boundary_leaves_a_loadable_graph(tmp_path):
    folder = tmp_path / "net"
    _graph(8, 1.0).save(folder)
    new = _graph(8, 2.0)
    new.add_node("z", 3)
    new.add_edge("x", "z")
    new.add_edge("z", "y")
    with torch.no_grad():
        for p in new.parameters():
            p.fill_(2.0)

    def check():
        assert _fill_of(folder) in (1.0, 2.0)
        assert len(_hidden(tmp_path)) <= 2  # at most one temporary folder and one backup

    n = _kill_at_every_boundary(lambda: new.save(folder), check)
    assert _fill_of(folder) == 2.0 and n >= 6
    _graph(8, 3.0).save(folder)  # the next save cleans what the killed ones left
    assert _fill_of(folder) == 3.0 and _hidden(tmp_path) == []


def test_graph_save_failing_at_every_boundary_keeps_the_earlier_save(tmp_path, monkeypatch):
    folder = tmp_path / "net"
    _graph(4, 1.0).save(folder)
    for k in range(1, 40):
        seen = [0]

        def hook(what, k=k):
            seen[0] += 1
            if seen[0] == k:
                raise OSError(28, f"No space left on device ({what})")

        monkeypatch.setattr(atomic, "_hook", hook)
        try:
            _graph(4, 2.0).save(folder)
        except dg.PersistenceError as err:
            assert "No space left" in str(err)
            monkeypatch.setattr(atomic, "_hook", None)
            assert _fill_of(folder) == 1.0
        else:
            break
    monkeypatch.setattr(atomic, "_hook", None)
    assert _fill_of(folder) == 2.0 and k > 4
    _graph(4, 3.0).save(folder)
    assert _fill_of(folder) == 3.0 and _hidden(tmp_path) == []


def test_kill_at_random_instants_while_saving_a_large_graph(tmp_path):
    """A child saves two graphs (~4 MB of weights) in turn, forever; SIGKILL at a random instant,
    30 times: the folder always loads, and as one of the two graphs."""
    folder = tmp_path / "net"
    graphs = [_graph(700, 1.0), _graph(700, 2.0)]
    graphs[0].save(folder)
    start = time.perf_counter()
    graphs[1].save(folder)
    save_seconds = time.perf_counter() - start
    rng = random.Random(0)
    fills = []
    for _ in range(30):
        pid = os.fork()
        if pid == 0:
            try:
                torch.set_num_threads(1)
                i = 0
                while True:
                    graphs[i % 2].save(folder)
                    i += 1
            finally:
                os._exit(3)
        time.sleep(rng.uniform(0, 3 * save_seconds))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
        fills.append(_fill_of(folder))
        assert len(_hidden(tmp_path)) <= 2
    assert set(fills) <= {1.0, 2.0}
    graphs[0].save(folder)
    assert _hidden(tmp_path) == []


def test_a_lone_backup_is_read_and_put_back(tmp_path):
    """The state a kill between the two renames leaves: no folder, a complete backup."""
    folder = tmp_path / "net"
    _graph(4, 1.0).save(folder)
    folder.rename(atomic.backup_path(folder))
    assert _fill_of(folder) == 1.0  # read from the backup, nothing written
    assert not folder.exists()
    _graph(4, 2.0).save(folder)
    assert _fill_of(folder) == 2.0 and _hidden(tmp_path) == []


def test_a_folder_that_is_not_a_saved_graph_is_not_replaced(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(dg.PersistenceError, match="refusing to replace .*not a saved graph"):
        _graph(4, 1.0).save(folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and _hidden(tmp_path) == []
    (tmp_path / "empty").mkdir()
    _graph(4, 1.0).save(tmp_path / "empty")
    assert _fill_of(tmp_path / "empty") == 1.0


# ------------------------------------------------------------------------------------- run folders
def _history(n: int) -> History:
    g = _graph(3, 1.0).spec()
    return History([GrowthEvent(step=i, action="start" if i == 0 else "train", params_after=i, graph=g if i == 0 else None)
                    for i in range(n)])


def test_history_save_killed_at_every_boundary(tmp_path):
    run = tmp_path / "run"
    _history(2).save(run, graph=_graph(3, 1.0), render_svg=False)
    atomic.write_file(run / "config.json", '{"dataset": "digits"}')

    def check():
        loaded = History.load(run)
        assert len(loaded) in (2, 5)
        assert _fill_of(run) in (1.0, 2.0)  # the run's graph/ matches its history
        assert (len(loaded) == 5) == (_fill_of(run) == 2.0)
        assert (atomic.readable(run) / "config.json").read_text() == '{"dataset": "digits"}'

    n = _kill_at_every_boundary(lambda: _history(5).save(run, graph=_graph(3, 2.0), render_svg=False), check)
    assert n >= 8 and len(History.load(run)) == 5
    _history(1).save(run, render_svg=False)
    assert _hidden(tmp_path) == [] and _hidden(run) == []


def test_kill_at_random_instants_while_saving_a_history(tmp_path):
    run = tmp_path / "run"
    histories = [_history(3), _history(40)]
    histories[0].save(run, render_svg=False, report=False)
    start = time.perf_counter()
    histories[1].save(run, render_svg=False, report=False)
    seconds = time.perf_counter() - start
    rng = random.Random(1)
    for _ in range(25):
        pid = os.fork()
        if pid == 0:
            try:
                i = 0
                while True:
                    histories[i % 2].save(run, render_svg=False, report=False)
                    i += 1
            finally:
                os._exit(3)
        time.sleep(rng.uniform(0, 3 * seconds))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert len(History.load(run)) in (3, 40)


def test_history_save_keeps_what_it_does_not_write(tmp_path):
    run = tmp_path / "run"
    _history(3).save(run, graph=_graph(3, 1.0), render_svg=False)
    (run / "config.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    (run / "step_009.dot").write_text("digraph {}")  # a drawing of an earlier, longer history
    _history(2).save(run, render_svg=False, report=False)
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "notes.txt", "graph", "report.html", "history.json", "step_000.dot"} <= names
    assert "step_009.dot" not in names and (run / "notes.txt").read_text() == "mine"
    assert _fill_of(run / "graph") == 1.0


def test_a_foreign_folder_is_not_replaced_by_a_history(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("x")
    with pytest.raises(dg.PersistenceError, match="not a run folder"):
        _history(1).save(tmp_path / "home")
    with pytest.raises(dg.PersistenceError, match="it is a file"):
        _history(1).save(tmp_path / "home" / "thesis.tex")


def test_write_file_with_a_writer_and_durable_folders_are_best_effort(tmp_path, monkeypatch):
    atomic.write_file(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"\x00\x01"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    real_open = os.open

    def no_folder_open(path, flags, *args):  # a platform that cannot open folders (Windows)
        if Path(path).is_dir():
            raise PermissionError(13, "cannot open a folder")
        return real_open(path, flags, *args)

    monkeypatch.setattr(atomic.os, "open", no_folder_open)
    atomic.write_file(tmp_path / "a.bin", b"new")
    _graph(3, 1.0).save(tmp_path / "g")
    assert (tmp_path / "a.bin").read_bytes() == b"new" and _fill_of(tmp_path / "g") == 1.0


def test_files_keep_the_permissions_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_file(tmp_path / "f", "x")
        _graph(3, 1.0).save(tmp_path / "g")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "g").stat().st_mode & 0o777 == 0o755


def test_a_save_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(dg.PersistenceError, match="cannot create the folder"):
        _graph(3, 1.0).save(tmp_path / "file" / "g")


def test_carried_entries_are_links_or_copies(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _history(1).save(run, render_svg=False, report=False)
    (run / "data").mkdir()
    (run / "data" / "big.bin").write_bytes(b"1" * 100)
    (run / "latest").symlink_to("data")
    _history(2).save(run, render_svg=False, report=False)
    assert (run / "data" / "big.bin").stat().st_nlink == 1  # the earlier folder's link is gone with it
    assert os.readlink(run / "latest") == "data"
    monkeypatch.setattr(atomic.os, "link", lambda *a: (_ for _ in ()).throw(OSError(1, "no hard links here")))
    _history(3).save(run, render_svg=False, report=False)
    assert (run / "data" / "big.bin").read_bytes() == b"1" * 100 and len(History.load(run)) == 3
