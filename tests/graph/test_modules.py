"""Modules described as data (daggrow.graph.modules): what is described, what is pickled, and
every way a damaged description is refused before anything is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import daggrow as dg
from daggrow.graph.modules import ModuleRecord, describe, rebuild, torch_arguments
from daggrow.graph.opaque import (Call, OpaqueOp, Ref, UnsafeOpError, decode, encode, function_name,
                                  public_callable, qualified_name)
from daggrow.graph.spec import OpSpec, OpStep


def frozen_graph(*modules: nn.Module, width: int = 4) -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", width)
    g.add_node("y", width)
    for i, m in enumerate(modules):
        g.add_edge("x", "y", dg.FrozenBlock(module_type=type(m).__name__), module=m, name=f"f{i}")
    g.set_output("y")
    return g


def round_trip(g: dg.Graph, tmp_path: Path, trust: bool = False) -> dg.Graph:
    g.save(tmp_path / "g")
    return dg.Graph.load(tmp_path / "g", trust=trust)


def same_outputs(g: dg.Graph, h: dg.Graph, width: int = 4) -> None:
    x = torch.randn(3, width)
    with torch.no_grad():
        torch.testing.assert_close(h.compile().eval()(x), g.compile().eval()(x), rtol=0, atol=0)


def test_containers_and_shared_modules_are_described_and_stay_shared(tmp_path):
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    g = frozen_graph(shared, shared)
    h = round_trip(g, tmp_path)
    assert not (tmp_path / "g" / "frozen.pt").exists()
    assert h.module("f0") is h.module("f1") and isinstance(h.module("f0"), nn.Sequential)
    same_outputs(g, h)
    saved = json.loads((tmp_path / "g" / "graph.json").read_text())
    assert saved["module_of"] == {"edge:f0": "0", "edge:f1": "0"}
    assert saved["modules"]["0"]["kind"] == "container"
    nested = nn.ModuleDict({"a": nn.ModuleList([nn.ReLU(), nn.Linear(2, 3)])})
    records, ids = {}, {}
    _, key = describe(nested, ids, records)
    linear = ids[id(nested["a"][1])]
    tensors = {f"module:{linear}.{k}": v for k, v in nested["a"][1].state_dict().items()}
    copy = rebuild(records, key, tensors, {k: True for k in tensors}, {}, {}, {})
    assert repr(copy) == repr(nested) and torch.equal(copy["a"][1].weight, nested["a"][1].weight)


@pytest.mark.parametrize("module", [
    nn.MultiheadAttention(4, 2, bias=False, add_bias_kv=True, batch_first=True),
    nn.GRU(4, 4, batch_first=True, bidirectional=False),
    nn.LayerNorm(4, elementwise_affine=True, bias=False),
    nn.Conv1d(4, 4, 3, padding="same", padding_mode="circular"),
])
def test_torch_modules_are_rebuilt_from_their_arguments(module):
    kwargs = torch_arguments(module)
    assert kwargs is not None
    rebuilt = type(module)(**{k: decode(v) for k, v in kwargs.items()})
    assert repr(rebuilt) == repr(module) and rebuilt.state_dict().keys() == module.state_dict().keys()


def test_what_cannot_be_described_is_pickled_and_needs_trust(tmp_path):
    hooked = nn.Linear(4, 4)
    hooked.register_forward_hook(lambda m, i, o: o)
    assert describe(hooked, {})[0].kind == "pickled"                    # a hook is code
    layer = nn.TransformerEncoderLayer(4, 2, 8, activation="gelu")      # its activation is not an attribute
    assert torch_arguments(layer) is None and describe(layer, {})[0].kind == "pickled"
    renamed = nn.Linear(4, 4)
    renamed.in_features = 5                                             # rebuilt, it would differ
    assert torch_arguments(renamed) is None
    op = OpaqueOp(OpSpec(inputs=1, steps=[OpStep(call="function", target="x.square", args=[{"ref": 0}])], output=1),
                  calls=[Call("function", torch.square, (Ref(0),), {})])
    assert describe(op, {})[0].kind == "pickled"


def _damage(tmp_path: Path, change) -> Path:
    g = frozen_graph(nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
    g.save(tmp_path / "g")
    data = json.loads((tmp_path / "g" / "graph.json").read_text())
    change(data)
    (tmp_path / "g" / "graph.json").write_text(json.dumps(data))
    return tmp_path / "g"


@pytest.mark.parametrize("change, pattern", [
    (lambda d: d["module_of"].update({"edge:f0": "9"}), "module record '9' is missing"),
    (lambda d: d["module_of"].pop("edge:f0"), "no module recorded for edge:f0"),
    (lambda d: d["modules"]["0"].update(cls="torch.nn.Bogus"), "unknown container class"),
    (lambda d: d["modules"]["0"].update(kind="opaque"), "belongs to no op node"),
    (lambda d: d["modules"]["1"]["kwargs"].update(out_features=-3), "cannot be rebuilt|do not match"),
    (lambda d: d["modules"]["1"]["kwargs"].update(bias={"object": 1}), "cannot be rebuilt"),
])
def test_damaged_module_records_are_refused(tmp_path, change, pattern):
    folder = _damage(tmp_path, change)
    with pytest.raises(dg.PersistenceError, match=pattern):
        dg.Graph.load(folder)


def test_a_trusted_folder_must_hold_every_pickled_module(tmp_path):
    odd = nn.Linear(4, 4)
    odd.register_forward_hook(lambda m, i, o: o)
    with pytest.raises(dg.PersistenceError, match="cannot be pickled"):   # a lambda hook cannot be pickled
        frozen_graph(odd).save(tmp_path / "g")
    records = {"0": ModuleRecord(kind="pickled", cls="x.Y")}
    with pytest.raises(dg.PersistenceError, match="not in frozen.pt"):
        rebuild(records, "0", {}, {}, {}, {}, {})


def test_op_programs_name_their_functions():
    assert function_name(torch.cat) == "torch.cat" and function_name(torch.nn.functional.gelu) == \
        "torch.nn.functional.gelu"
    assert function_name(lambda t: t) is None and function_name([]) is None
    assert qualified_name(Path.exists) == "pathlib.Path.exists"
    wrapped = public_callable(torch.nn.functional.gelu)
    assert (wrapped.__module__, wrapped.__name__) == ("torch.nn.functional", "gelu")
    assert public_callable(torch.relu) is torch.relu


@pytest.mark.parametrize("bad", [{"ref": -1}, {"ref": True}, {"float": "1"}, {"dict": []}, {"slice": [1]},
                                 {"dtype": "cat"}, {"device": "banana"}, {"memory_format": "float32"},
                                 {"tuple": 3}, {"a": 1, "b": 2}, {"object": "x"}])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(UnsafeOpError):
        decode(bad)


def test_an_op_checks_its_inputs_and_its_memory_formats():
    assert decode(encode(torch.channels_last)) is torch.channels_last
    with pytest.raises(TypeError, match="takes 1 input"):
        OpaqueOp(OpSpec(inputs=1, steps=[], output=0))(torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="not a value of the program"):
        OpSpec(inputs=1, steps=[], output=1)
