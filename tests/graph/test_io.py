"""Save/load: exact round trip; every corrupt, truncated or mismatched folder is a clear error."""

from __future__ import annotations

import json

import pytest
import torch

import daggrow as dg
from daggrow.graph.io import FORMAT_VERSION


def rich_graph() -> dg.Graph:
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 5)
    g.add_input("z", 2)
    g.add_node("h", 4, "leaky_relu", activation_params={"negative_slope": 0.1}, norm="batchnorm", dropout=0.2)
    g.add_node("k", 4, "gelu", norm="layernorm")
    g.add_node("y", 3)
    g.add_edge("x", "h"); g.add_edge("z", "h", bias=False); g.add_edge("h", "k"); g.add_edge("h", "k", "identity")
    g.add_edge("k", "y"); g.add_edge("x", "y", name="skip")
    g.set_output("y")
    m = g.compile(); m.train(); m(torch.randn(8, 5), torch.randn(8, 2))  # non-trivial running statistics
    return g


def test_exact_round_trip(tmp_path):
    g = rich_graph()
    g.step = 3
    g.save(tmp_path / "net.dg")
    h = dg.Graph.load(tmp_path / "net.dg")
    assert h.spec() == g.spec()
    assert list(h.nodes) == list(g.nodes) and list(h.edges) == list(g.edges)
    xs = (torch.randn(6, 5), torch.randn(6, 2))
    a, b = g.compile().eval(), h.compile().eval()
    assert torch.equal(a(*xs), b(*xs))
    for (ka, pa), (kb, pb) in zip(g.named_parameters(), h.named_parameters()):
        assert ka == kb and torch.equal(pa, pb)
    assert torch.equal(g.norm_module("h").running_mean, h.norm_module("h").running_mean)


def test_frozen_edges_round_trip(tmp_path):
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node("y", 3)
    g.add_edge("x", "y", dg.FrozenBlock(module_type="Softsign"), module=torch.nn.Softsign())
    g.set_output("y")
    g.save(tmp_path / "f")
    x = torch.randn(4, 3)
    torch.testing.assert_close(dg.Graph.load(tmp_path / "f").compile()(x), torch.nn.functional.softsign(x))


@pytest.mark.parametrize("damage, pattern", [
    (lambda d: (d / "graph.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "graph.json").write_text((d / "graph.json").read_text()[:200]), "not valid JSON"),
    (lambda d: (d / "graph.json").unlink(), "graph.json: missing"),
    (lambda d: (d / "weights.pt").unlink(), "weights.pt: missing"),
    (lambda d: (d / "weights.pt").write_bytes((d / "weights.pt").read_bytes()[:100]), "checksum mismatch"),
    (lambda d: _edit(d, lambda j: j["spec"].update(format_version=FORMAT_VERSION + 1)), "format version"),
    (lambda d: _edit(d, lambda j: j["spec"]["nodes"][2].update(width=7)), "inconsistent|shape"),
    (lambda d: _edit(d, lambda j: j["tensors"].pop("edge:skip.bias")), "do not match"),
    (lambda d: _edit(d, lambda j: j["spec"]["edges"][0].update(block={"kind": "conv"})), "invalid content"),
    (lambda d: _resave_weights(d), "tensor edge:skip.weight has shape"),
])
def test_damaged_folders_raise_persistence_error(tmp_path, damage, pattern):
    rich_graph().save(tmp_path / "g")
    damage(tmp_path / "g")
    with pytest.raises(dg.PersistenceError, match=pattern):
        dg.Graph.load(tmp_path / "g")


def _edit(folder, change):
    data = json.loads((folder / "graph.json").read_text())
    change(data)
    (folder / "graph.json").write_text(json.dumps(data))


def _resave_weights(folder):
    """A consistent checksum over mis-shaped tensors: caught by the shape check."""
    import hashlib

    tensors = torch.load(folder / "weights.pt")
    tensors["edge:skip.weight"] = torch.zeros(2, 2)
    torch.save(tensors, folder / "weights.pt")
    _edit(folder, lambda j: j.update(weights_sha256=hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()))


def test_not_a_folder(tmp_path):
    with pytest.raises(dg.PersistenceError, match="not a saved graph folder"):
        dg.Graph.load(tmp_path / "nothing")
