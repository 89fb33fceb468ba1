"""Save/load: exact round trip; every corrupt, truncated or mismatched folder is a clear error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import daggrow as dg
from daggrow.graph.io import FORMAT_VERSION
from daggrow.grow import rewrite


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


def assert_same_graph(g: dg.Graph, h: dg.Graph) -> None:
    """Same spec, names, tensors (values, dtypes, requires_grad) and bit-identical outputs."""
    assert h.spec() == g.spec()
    assert list(h.nodes) == list(g.nodes) and list(h.edges) == list(g.edges)
    assert h.step == g.step and h.growth_log == g.growth_log
    a, b = dict(g.named_parameters()), dict(h.named_parameters())
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype and a[k].requires_grad == b[k].requires_grad, k
    for node in g.nodes:
        na, nb = g.norm_module(node), h.norm_module(node)
        assert (na is None) == (nb is None)
        if na is not None:
            sa, sb = na.state_dict(), nb.state_dict()
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    dtype = next(g.parameters()).dtype
    xs = tuple(torch.randn(6, g.node(i).width, dtype=dtype) for i in g.inputs)
    with torch.no_grad():
        assert torch.equal(g.compile().eval()(*xs), h.compile().eval()(*xs))


def test_exact_round_trip(tmp_path):
    g = rich_graph()
    g.step = 3
    g.save(tmp_path / "net.dg")
    assert sorted(p.name for p in (tmp_path / "net.dg").iterdir()) == ["graph.json", "weights.pt"]
    h = dg.Graph.load(tmp_path / "net.dg")
    assert_same_graph(g, h)
    assert torch.equal(g.norm_module("h").running_mean, h.norm_module("h").running_mean)
    assert h.norm_module("h").num_batches_tracked.item() == 1


def test_graph_json_lists_every_tensor_with_its_checksum(tmp_path):
    g = rich_graph()
    g.save(tmp_path / "g")
    saved = json.loads((tmp_path / "g" / "graph.json").read_text())
    assert saved["spec"]["format_version"] == FORMAT_VERSION and saved["spec"]["format"] == "daggrow-graph"
    assert saved["weights_sha256"] == hashlib.sha256((tmp_path / "g" / "weights.pt").read_bytes()).hexdigest()
    assert saved["tensors"]["edge:x_to_h.weight"] == {"shape": [4, 5], "dtype": "float32", "requires_grad": True}
    assert saved["tensors"]["norm:h.running_mean"] == {"shape": [4], "dtype": "float32", "requires_grad": None}
    assert "edge:z_to_h.bias" not in saved["tensors"] and "edge:h_to_k_2.weight" not in saved["tensors"]
    weights = torch.load(tmp_path / "g" / "weights.pt", weights_only=True)
    assert set(weights) == set(saved["tensors"])
    assert torch.equal(weights["edge:skip.weight"], g.module("skip").weight)


def test_float64_frozen_parameters_and_growth_log_round_trip(tmp_path):
    g = rich_graph()
    for name in g.edges:
        g.module(name).double()
    for node in ("h", "k"):
        g.norm_module(node).double()
    g.module("skip").weight.requires_grad_(False)
    f64 = dict(dtype=torch.float64)
    g = rewrite.new_node(g, "k", "y", "n4", torch.randn(2, 4, **f64), torch.randn(3, 2, **f64), torch.randn(2, **f64),
                         step=4)
    assert g.growth_log and g.step == 4
    g.save(tmp_path / "g")
    h = dg.Graph.load(tmp_path / "g")
    assert_same_graph(g, h)
    assert h.module("x_to_h").weight.dtype == torch.float64 and h.norm_module("k").weight.dtype == torch.float64
    assert not h.module("skip").weight.requires_grad and h.module("skip").bias.requires_grad


def test_saving_again_replaces_the_earlier_save(tmp_path):
    g = rich_graph()
    g.save(tmp_path / "g")
    g.add_node("extra", 2)
    g.add_edge("x", "extra"); g.add_edge("extra", "y")
    g.save(tmp_path / "g")
    assert_same_graph(g, dg.Graph.load(tmp_path / "g"))
    assert not [p for p in (tmp_path / "g").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_frozen_torch_modules_round_trip_without_pickle(tmp_path):
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node("y", 3)
    g.add_edge("x", "y", dg.FrozenBlock(module_type="Softsign"), module=torch.nn.Softsign())
    g.add_edge("x", "y", dg.FrozenBlock(module_type="Linear"), module=torch.nn.Linear(3, 3), name="fixed")
    g.set_output("y")
    g.save(tmp_path / "f")
    h = dg.Graph.load(tmp_path / "f")
    x = torch.randn(4, 3)
    torch.testing.assert_close(h.compile()(x), torch.nn.functional.softsign(x) + g.module("fixed")(x),
                               rtol=0, atol=0)
    assert h.spec() == g.spec()
    # the frozen edge leaves: frozen.pt goes too
    g.remove_edge("x_to_y"); g.remove_edge("fixed"); g.add_edge("x", "y")
    g.save(tmp_path / "f")
    assert not (tmp_path / "f" / "frozen.pt").exists()
    assert_same_graph(g, dg.Graph.load(tmp_path / "f"))


class _Unpicklable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fn = lambda t: t  # a lambda cannot be pickled

    def forward(self, t):
        return self.fn(t)


def test_a_failed_save_leaves_the_earlier_save_intact(tmp_path):
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node("y", 3)
    g.add_edge("x", "y")
    g.set_output("y")
    g.save(tmp_path / "g")
    before = {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()}
    g.add_edge("x", "y", dg.FrozenBlock(module_type="_Unpicklable"), module=_Unpicklable(), name="odd")
    with pytest.raises(dg.PersistenceError, match=r"frozen module\(s\) of edge\(s\) \['odd'\].*cannot be pickled"):
        g.save(tmp_path / "g")
    assert {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()} == before
    assert dg.Graph.load(tmp_path / "g").edges.keys() == {"x_to_y"}


def test_saving_onto_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("hello")
    with pytest.raises(dg.PersistenceError, match="it is a file"):
        rich_graph().save(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "hello"


def _edit(folder: Path, change) -> None:
    data = json.loads((folder / "graph.json").read_text())
    change(data)
    (folder / "graph.json").write_text(json.dumps(data))


def _resave_weights(folder: Path, change) -> None:
    """Rewrite weights.pt and put its new checksum in graph.json: only the content checks can catch it."""
    obj = torch.load(folder / "weights.pt", weights_only=True)
    obj = change(obj)
    torch.save(obj, folder / "weights.pt")
    digest = hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()
    _edit(folder, lambda j: j.update(weights_sha256=digest))


def _replace_with_garbage_of_matching_hash(folder: Path) -> None:
    (folder / "weights.pt").write_bytes(b"not a torch archive at all")
    digest = hashlib.sha256(b"not a torch archive at all").hexdigest()
    _edit(folder, lambda j: j.update(weights_sha256=digest))


def _put(obj, key, value):
    obj[key] = value
    return obj


@pytest.mark.parametrize("damage, pattern", [
    (lambda d: (d / "graph.json").write_text("{not json"), "graph.json: not valid JSON"),
    (lambda d: (d / "graph.json").write_text((d / "graph.json").read_text()[:200]), "not valid JSON"),
    (lambda d: (d / "graph.json").write_bytes(b"\xff\xfe\x00"), "not valid JSON"),
    (lambda d: (d / "graph.json").write_text("[1, 2]"), "not a daggrow graph description"),
    (lambda d: _edit(d, lambda j: j.pop("spec")), "not a daggrow graph description"),
    (lambda d: _edit(d, lambda j: j["spec"].update(format="other")), "not a daggrow graph description"),
    (lambda d: (d / "graph.json").unlink(), "graph.json: missing"),
    (lambda d: (d / "weights.pt").unlink(), "weights.pt: missing"),
    (lambda d: (d / "weights.pt").write_bytes((d / "weights.pt").read_bytes()[:100]), "weights.pt: checksum mismatch"),
    (lambda d: (d / "weights.pt").write_bytes((d / "weights.pt").read_bytes() + b"\0"), "checksum mismatch"),
    (lambda d: _edit(d, lambda j: j["spec"].update(format_version=FORMAT_VERSION + 1)),
     f"format version {FORMAT_VERSION + 1}, but this daggrow reads version {FORMAT_VERSION}: upgrade daggrow"),
    (lambda d: _edit(d, lambda j: j["spec"].update(format_version=0)), "format version 0.*re-save"),
    (lambda d: _edit(d, lambda j: j["spec"].pop("format_version")), "format version None"),
    (lambda d: _edit(d, lambda j: j["spec"]["nodes"][2].update(width=7)), "inconsistent: .*size mismatch"),
    (lambda d: _edit(d, lambda j: j["spec"]["nodes"][0].update(activation="relu")),
     "differs from its saved description in \\['nodes'\\]"),
    (lambda d: _edit(d, lambda j: j["spec"]["edges"][0].update(target="nowhere")), "inconsistent: no node named"),
    (lambda d: _edit(d, lambda j: j["spec"].update(outputs=[])), "inconsistent: set_output"),
    (lambda d: _edit(d, lambda j: j["tensors"].pop("edge:skip.bias")), "do not match.*unexpected: \\['edge:skip.bias'\\]"),
    (lambda d: _resave_weights(d, lambda w: (w.pop("edge:skip.bias"), w)[1]), "do not match.*missing: \\['edge:skip.bias'\\]"),
    (lambda d: _edit(d, lambda j: j["spec"]["edges"][0].update(block={"kind": "conv"})),
     "invalid content: spec.edges.0.block"),
    (lambda d: _edit(d, lambda j: j.update(surprise=1)), "invalid content: surprise"),
    (lambda d: _resave_weights(d, lambda w: _put(w, "edge:skip.weight", torch.zeros(2, 2))),
     "tensor edge:skip.weight has shape \\[2, 2\\] and dtype float32, graph.json says \\[3, 5\\] float32"),
    (lambda d: _resave_weights(d, lambda w: _put(w, "edge:skip.weight", w["edge:skip.weight"].double())),
     "tensor edge:skip.weight .* dtype float64"),
    (lambda d: _resave_weights(d, lambda w: _put(w, "edge:ghost.weight", torch.zeros(1))),
     "unexpected: \\['edge:ghost.weight'\\]"),
    (lambda d: _resave_weights(d, lambda w: list(w.values())), "not a dict of named tensors"),
    (lambda d: _replace_with_garbage_of_matching_hash(d), "weights.pt: cannot be read"),
])
def test_damaged_folders_raise_persistence_error(tmp_path, damage, pattern):
    rich_graph().save(tmp_path / "g")
    damage(tmp_path / "g")
    with pytest.raises(dg.PersistenceError, match=pattern) as err:
        dg.Graph.load(tmp_path / "g")
    assert "\n" not in str(err.value)  # one line: the CLI prints it as is


def test_extra_tensor_listed_in_both_files_is_refused(tmp_path):
    rich_graph().save(tmp_path / "g")
    _resave_weights(tmp_path / "g", lambda w: _put(w, "edge:skip.extra", torch.zeros(1)))
    _edit(tmp_path / "g", lambda j: j["tensors"].update({"edge:skip.extra": {"shape": [1], "dtype": "float32"}}))
    with pytest.raises(dg.PersistenceError, match="inconsistent: .*Unexpected key.*extra"):
        dg.Graph.load(tmp_path / "g")


class Doubler(torch.nn.Module):
    """A user's module: no description can rebuild it, so it is pickled (loaded with trust=True)."""

    def forward(self, t):
        return 2 * t


def frozen_folder(tmp_path: Path) -> Path:
    g = dg.Graph()
    g.add_input("x", 3)
    g.add_node("y", 3)
    g.add_edge("x", "y", dg.FrozenBlock(module_type="Doubler"), module=Doubler(), name="f")
    g.set_output("y")
    g.save(tmp_path / "g")
    return tmp_path / "g"


def test_user_modules_are_pickled_and_load_only_with_trust(tmp_path):
    folder = frozen_folder(tmp_path)
    assert (folder / "frozen.pt").exists()
    with pytest.raises(dg.PersistenceError, match=r"edge:f hold module\(s\) saved by pickle \(.*Doubler\).*"
                                                  r"trust=True"):
        dg.Graph.load(folder)
    g = dg.Graph.load(folder, trust=True)
    x = torch.randn(2, 3)
    torch.testing.assert_close(g.compile()(x), 2 * x)


@pytest.mark.parametrize("damage, pattern", [
    (lambda d: (d / "frozen.pt").unlink(), "frozen.pt: missing"),
    (lambda d: (d / "frozen.pt").write_bytes(b"junk"), "frozen.pt: checksum mismatch"),
    (lambda d: _edit(d, lambda j: j.update(frozen_sha256=None)), "frozen edge\\(s\\) \\['edge:f'\\] but no checksum"),
])
def test_damaged_frozen_modules_raise_persistence_error(tmp_path, damage, pattern):
    folder = frozen_folder(tmp_path)
    damage(folder)
    with pytest.raises(dg.PersistenceError, match=pattern):
        dg.Graph.load(folder, trust=True)


def test_frozen_file_must_hold_the_frozen_edges(tmp_path):
    folder = frozen_folder(tmp_path)
    torch.save({"other": torch.nn.Tanh()}, folder / "frozen.pt")
    digest = hashlib.sha256((folder / "frozen.pt").read_bytes()).hexdigest()
    _edit(folder, lambda j: j.update(frozen_sha256=digest))
    with pytest.raises(dg.PersistenceError, match="holds modules for \\['other'\\].*frozen edges \\['0'\\]"):
        dg.Graph.load(folder, trust=True)


def test_not_a_folder(tmp_path):
    with pytest.raises(dg.PersistenceError, match="not a saved graph folder"):
        dg.Graph.load(tmp_path / "nothing")


@pytest.mark.gpu
def test_load_onto_cuda(tmp_path):
    g = rich_graph()
    g.save(tmp_path / "g")
    h = dg.Graph.load(tmp_path / "g", map_location="cuda")
    assert all(p.is_cuda for p in h.parameters())
    x = (torch.randn(4, 5), torch.randn(4, 2))
    ref = g.compile().eval()(*x)
    torch.testing.assert_close(h.compile().eval()(*(t.cuda() for t in x)).cpu(), ref, rtol=1e-5, atol=1e-6)
