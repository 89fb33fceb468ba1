"""The zoo: every model traced, compiled, and equal to the original (float32 and float64)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import daggrow as dg

from .zoo import MLP, ZOO, ApiNet, Gate, NormsAndDropout, WithLeaf


def make_inputs(widths, n=9, dtype=torch.float32, seed=7):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, w, generator=generator, dtype=dtype) for w in widths)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def assert_same_function(model, graph, xs, atol):
    compiled = graph.compile().eval()
    with torch.no_grad():
        got, want = as_tuple(compiled(*xs)), as_tuple(model(*xs))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0, atol=atol)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_traces_and_compiles_with_equal_outputs(name):
    factory, widths, options = ZOO[name]
    torch.manual_seed(0)
    model = factory().eval()
    xs = make_inputs(widths)
    graph = dg.trace(model, xs, **options)
    assert isinstance(graph, dg.Graph)
    assert_same_function(model, graph, xs, atol=1e-6)

    model64 = copy.deepcopy(model).double()
    xs64 = make_inputs(widths, dtype=torch.float64)
    graph64 = dg.trace(model64, xs64, **options)
    assert_same_function(model64, graph64, xs64, atol=1e-12)
    # other batch sizes work too: nothing in the graph depends on the example's batch
    assert_same_function(model64, graph64, make_inputs(widths, n=3, dtype=torch.float64, seed=1), atol=1e-12)


def test_training_the_compiled_graph_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = NormsAndDropout()
    before = copy.deepcopy(model.state_dict())
    graph = dg.trace(model, make_inputs((8,)))
    compiled = graph.compile().train()
    model_tensors = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not model_tensors & {t.data_ptr() for t in [*compiled.parameters(), *compiled.buffers()]}
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        compiled(*make_inputs((8,))).square().sum().backward()
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not torch.equal(graph.module("a").weight, model.a.weight)  # the graph did train


def test_tracing_keeps_modes_and_running_statistics():
    model = NormsAndDropout().train()
    model.ln.eval()  # a mixed state must survive
    stats = model.bn.running_mean.clone(), model.bn.num_batches_tracked.clone()
    dg.trace(model, make_inputs((8,)))
    assert model.training and model.bn.training and not model.ln.training
    assert torch.equal(model.bn.running_mean, stats[0]) and torch.equal(model.bn.num_batches_tracked, stats[1])


def test_copies_keep_dtype_and_requires_grad():
    model = MLP().double()
    model.l1.requires_grad_(False)
    graph = dg.trace(model, make_inputs((10,), dtype=torch.float64))
    assert graph.module("l1").weight.dtype == torch.float64
    assert not graph.module("l1").weight.requires_grad and graph.module("l2").weight.requires_grad
    assert type(graph.module("l1")) is nn.Linear and graph.module("l1") is not model.l1


def test_norm_state_is_copied_not_shared():
    model = NormsAndDropout().eval()
    graph = dg.trace(model, make_inputs((8,)))
    (bn_node,) = [n for n, s in graph.nodes.items() if s.norm and s.norm.kind == "batchnorm"]
    norm = graph.norm_module(bn_node)
    assert norm is not model.bn
    for key, value in model.bn.state_dict().items():
        assert torch.equal(norm.state_dict()[key], value)
        assert norm.state_dict()[key].data_ptr() != value.data_ptr()


def test_leaf_modules_by_class_or_name_become_frozen_shared_copies():
    torch.manual_seed(0)
    model = WithLeaf().eval()
    x = make_inputs((6,))
    for leaf in ([Gate], ["gate"]):
        graph = dg.trace(model, x, leaf_modules=leaf)
        frozen = [e for e in graph.edges.values() if e.block.kind == "frozen"]
        assert [e.block.module_type for e in frozen] == ["Gate", "Gate"]
        first, second = (graph.module(e.name) for e in frozen)
        assert first is second and first is not model.gate  # one copy, shared by both calls
        assert not any(graph.is_growable(e.name) for e in frozen)
        assert not dg.grow.expandable(graph, frozen[0].target)
        assert_same_function(model, graph, x, atol=1e-6)


def test_leaf_module_inside_a_sequential_by_qualified_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Hardtanh()), nn.Linear(4, 2)).eval()
    x = make_inputs((4,))
    graph = dg.trace(model, x, leaf_modules=["1.1"])
    assert [e.name for e in graph.edges.values()] == ["0", "1.0", "1.1", "2"]
    assert graph.edge("1.1").block.module_type == "Hardtanh"
    assert_same_function(model, graph, x, atol=1e-6)


def test_concrete_args_fix_a_python_flag():
    class Flagged(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x, skip=True):
            h = torch.relu(self.a(x))
            if skip:
                h = h + x
            return self.b(h)

    model = Flagged().eval()
    (x,) = make_inputs((4,))
    for skip in (True, False):
        graph = dg.trace(model, x, concrete_args={"skip": skip})
        assert graph.inputs == ["x"]
        with torch.no_grad():
            torch.testing.assert_close(graph.compile()(x), model(x, skip=skip), rtol=0, atol=1e-6)


def test_api_example_prints_and_counts():
    graph = dg.trace(ApiNet(), example_inputs=torch.randn(4, 40))
    text = str(graph)
    assert "relu" in text and "5 nodes" in text
    assert graph.num_parameters() == sum(p.numel() for p in ApiNet().parameters())


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_round_trips_through_save_and_load(name, tmp_path):
    """Without pickle, except the user's leaf module (Gate), which loads only with trust=True."""
    factory, widths, options = ZOO[name]
    torch.manual_seed(0)
    model = factory().eval()
    graph = dg.trace(model, make_inputs(widths), **options)
    graph.save(tmp_path / "g")
    trust = bool(options.get("leaf_modules"))
    assert (tmp_path / "g" / "frozen.pt").exists() == trust
    if trust:
        with pytest.raises(dg.PersistenceError, match="trust=True"):
            dg.Graph.load(tmp_path / "g")
    loaded = dg.Graph.load(tmp_path / "g", trust=trust)
    assert loaded.spec() == graph.spec()
    xs = make_inputs(widths, seed=3)
    with torch.no_grad():
        for a, b in zip(as_tuple(loaded.compile().eval()(*xs)), as_tuple(graph.compile().eval()(*xs))):
            assert torch.equal(a, b)
