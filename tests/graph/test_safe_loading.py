"""Loading never runs code from the folder (issue #12 item 1).

A crafted ``frozen.pt`` (or ``weights.pt``) whose pickle would write a marker file is never
unpickled by ``Graph.load`` or ``daggrow show``, even when ``graph.json`` carries its checksum;
crafted descriptions (a class outside ``torch.nn``, a program calling a function outside the
allow-list) are refused before anything runs.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import daggrow as dg
from daggrow.cli import main

from .test_io import Doubler, frozen_folder


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears if the pickle ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def _edit(folder: Path, change) -> None:
    data = json.loads((folder / "graph.json").read_text())
    change(data)
    (folder / "graph.json").write_text(json.dumps(data))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _crafted_frozen(tmp_path: Path, with_checksum: bool) -> tuple[Path, Path]:
    folder, marker = frozen_folder(tmp_path), tmp_path / "pwned"
    torch.save({"0": Payload(marker)}, folder / "frozen.pt")
    if with_checksum:
        _edit(folder, lambda j: j.update(frozen_sha256=_digest(folder / "frozen.pt")))
    return folder, marker


@pytest.mark.parametrize("with_checksum", [False, True])
def test_a_crafted_frozen_pt_never_runs_on_load_or_show(tmp_path, with_checksum, capsys):
    folder, marker = _crafted_frozen(tmp_path, with_checksum)
    with pytest.raises(dg.PersistenceError, match=r"saved by pickle.*runs code.*trust=True"):
        dg.Graph.load(folder)
    assert main(["show", str(folder)]) != 0
    assert "--trust" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("with_checksum", [False, True])
def test_a_crafted_weights_pt_never_runs(tmp_path, with_checksum):
    graph = dg.Graph()
    graph.add_input("x", 2)
    graph.add_node("y", 2)
    graph.add_edge("x", "y")
    graph.set_output("y")
    graph.save(tmp_path / "g")
    folder, marker = tmp_path / "g", tmp_path / "pwned"
    torch.save({"edge:x_to_y.weight": Payload(marker)}, folder / "weights.pt")
    if with_checksum:
        _edit(folder, lambda j: j.update(weights_sha256=_digest(folder / "weights.pt")))
    with pytest.raises(dg.PersistenceError):
        dg.Graph.load(folder)
    with pytest.raises(dg.PersistenceError):
        dg.Graph.load(folder, trust=True)  # weights.pt is never unpickled, trusted or not
    assert not marker.exists()


def test_a_folder_claiming_a_described_module_is_pickled_is_refused(tmp_path):
    """Turning a described module into a "pickled" one in graph.json still needs trust."""
    graph = dg.Graph()
    graph.add_input("x", 3)
    graph.add_node("y", 3)
    graph.add_edge("x", "y", dg.FrozenBlock(module_type="Tanh"), module=nn.Tanh(), name="f")
    graph.set_output("y")
    graph.save(tmp_path / "g")
    folder, marker = tmp_path / "g", tmp_path / "pwned"
    assert not (folder / "frozen.pt").exists()
    torch.save({"0": Payload(marker)}, folder / "frozen.pt")
    _edit(folder, lambda j: (j["modules"]["0"].update(kind="pickled"),
                             j.update(frozen_sha256=_digest(folder / "frozen.pt"))))
    with pytest.raises(dg.PersistenceError, match="trust=True"):
        dg.Graph.load(folder)
    assert not marker.exists()


def _op_folder(tmp_path: Path) -> Path:
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x) * torch.sigmoid(self.b(x)).permute(0, 1)

    with pytest.warns(dg.OpaqueOpWarning):
        graph = dg.trace(Gated(), torch.randn(4, 3))
    graph.save(tmp_path / "g")
    assert not (tmp_path / "g" / "frozen.pt").exists()
    return tmp_path / "g"


def _op_steps(data: dict) -> list[dict]:
    return [s for node in data["spec"]["nodes"] if node.get("op") for s in node["op"]["steps"]]


@pytest.mark.parametrize("change, pattern", [
    (lambda step: step.update(target="builtins.eval"), "not in daggrow's allow-list"),
    (lambda step: step.update(target="torch.load"), "not in daggrow's allow-list"),
    (lambda step: step.update(call="method", target="__reduce_ex__"), "not in daggrow's allow-list"),
    (lambda step: step.update(call="function", target="getattr", args=[{"ref": 0}, "__class__"]), "tensor metadata"),
    (lambda step: step.update(args=[{"object": "x"}]), "unknown argument"),
    (lambda step: step.update(call="module", target="m7"), "does not hold"),
])
def test_a_crafted_program_is_refused_before_it_runs(tmp_path, change, pattern):
    folder = _op_folder(tmp_path)
    _edit(folder, lambda j: change(_op_steps(j)[0]))
    with pytest.raises(dg.PersistenceError, match=pattern):
        dg.Graph.load(folder)


@pytest.mark.parametrize("cls", ["os.system", "torch.nn.parallel.DistributedDataParallel", "torch.nn.Module",
                                 "builtins.eval", "torch.load"])
def test_a_module_record_outside_torch_nn_is_refused(tmp_path, cls):
    graph = dg.Graph()
    graph.add_input("x", 3)
    graph.add_node("y", 3)
    graph.add_edge("x", "y", dg.FrozenBlock(module_type="GRU"), module=nn.Softsign(), name="f")
    graph.set_output("y")
    graph.save(tmp_path / "g")
    _edit(tmp_path / "g", lambda j: j["modules"]["0"].update(cls=cls, kwargs={"command": "touch pwned"}))
    with pytest.raises(dg.PersistenceError, match="not a module class of torch.nn"):
        dg.Graph.load(tmp_path / "g")


def test_constructor_arguments_must_match_the_saved_tensors(tmp_path):
    graph = dg.Graph()
    graph.add_input("x", 3)
    graph.add_node("y", 3)
    graph.add_edge("x", "y", dg.FrozenBlock(module_type="Linear"), module=nn.Linear(3, 3), name="f")
    graph.set_output("y")
    graph.save(tmp_path / "g")
    _edit(tmp_path / "g", lambda j: j["modules"]["0"]["kwargs"].update(in_features=10 ** 9))
    with pytest.raises(dg.PersistenceError, match="do not match its arguments"):
        dg.Graph.load(tmp_path / "g")


def test_trusted_user_modules_still_load(tmp_path):
    folder = frozen_folder(tmp_path)
    graph = dg.Graph.load(folder, trust=True)
    assert isinstance(graph.module("f"), Doubler)
