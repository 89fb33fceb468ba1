"""The model families of issue #10, written in plain PyTorch (tests/trace/zoo_families.py): each
traces without leaf_modules, computes exactly what the model computes (eval, and training mode with
batch statistics), saves and loads without pickle, offers growth proposals whose amplitude 0 keeps
the function, and the first-order gains of those proposals match finite differences of the loss,
upstream of op nodes and in tokens nodes alike."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import daggrow as dg
from daggrow.stats import per_sample_loss

from .zoo_families import FAMILIES, no_dropout

_TRACED: dict[str, tuple[nn.Module, dg.Graph]] = {}


def make(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    factory, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = factory().to(dtype)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def batch(name: str, n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, *FAMILIES[name][1], generator=torch.Generator().manual_seed(seed)).to(dtype)


def traced(name: str) -> tuple[nn.Module, dg.Graph]:
    if name not in _TRACED:
        model = make(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.OpaqueOpWarning)
            _TRACED[name] = model, dg.trace(model, batch(name, 3))
    return _TRACED[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_traces_without_leaf_modules_and_computes_the_same(name):
    model, graph = traced(name)
    graph.validate()
    assert graph.num_parameters() == sum(p.numel() for p in model.parameters())
    for n, seed in ((5, 1), (3, 2)):
        x = batch(name, n, seed)
        with torch.no_grad():
            torch.testing.assert_close(graph.compile().eval()(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_training_mode_with_batch_statistics(name):
    """Traced in training mode (dropout and stochastic depth off): same outputs and the same
    running statistics after a step of both."""
    model = no_dropout(make(name)).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.OpaqueOpWarning)
        graph = dg.trace(model, batch(name, 3))
    compiled, reference = graph.compile().train(), copy.deepcopy(model).train()
    x = batch(name, 5, 3)
    torch.testing.assert_close(compiled(x), reference(x), rtol=0, atol=1e-5)
    running = sorted(t.sum().item() for n, t in compiled.state_dict().items() if "running_mean" in n)
    expected = sorted(t.sum().item() for n, t in reference.state_dict().items() if "running_mean" in n)
    assert running == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_save_and_load_without_pickle(name, tmp_path):
    model, graph = traced(name)
    graph.save(tmp_path / "g")
    assert not (tmp_path / "g" / "frozen.pt").exists()  # every module is described, none pickled
    loaded = dg.Graph.load(tmp_path / "g")
    assert loaded.spec() == graph.spec()
    x = batch(name, 5, 4)
    with torch.no_grad():
        assert torch.equal(loaded.compile().eval()(x), graph.compile().eval()(x))


def loader(name: str, dtype: torch.dtype = torch.float32, n: int = 24) -> list:
    x = batch(name, n, 5, dtype)
    y = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(6))
    return [(x[: n // 2], y[: n // 2]), (x[n // 2:], y[n // 2:])]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_growth_proposals_keep_the_function_at_amplitude_zero(name):
    _, graph = traced(name)
    data = loader(name)
    stats = dg.collect_statistics(graph, data, "cross_entropy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank deficiency of tiny batches
        proposals = dg.propose(graph, stats, max_neurons=2)
    assert proposals, f"{name}: no growth proposal"
    x = data[0][0]
    with torch.no_grad():
        before = graph.compile().eval()(x)
        for p in proposals[:3]:
            torch.testing.assert_close(dg.apply(graph, p, 0.0).compile().eval()(x), before, rtol=0, atol=1e-6)


def mean_loss(graph: dg.Graph, data: list) -> float:
    with torch.no_grad():
        module = graph.compile().eval()
        losses = [per_sample_loss("cross_entropy", module(x), y) for x, y in data]
    return float(torch.cat(losses).mean())


# the growable parts: a tokens FF layer, one behind a gate (upstream of the product op node), a
# channels-last FF layer, a token-mixing layer and an MLP head after a recurrent op
FIRST_ORDER = {"vit": "gelu", "timm_vit": "gelu", "efficientnet_se": None, "convnext": "gelu", "mlp_mixer": None,
               "lstm": None, "mobilenet_v2": "relu6", "densenet": None}


@pytest.mark.parametrize("name", list(FIRST_ORDER))
def test_first_order_gains_match_finite_differences(name):
    """L(γ) ≈ L(0) − γ·gain for the new neurons, through op nodes by autograd (float64)."""
    model = make(name, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = dg.trace(model, batch(name, 3, dtype=torch.float64))
        data = loader(name, torch.float64)
        stats = dg.collect_statistics(graph, data, "cross_entropy")
        proposals = [p for p in dg.propose(graph, stats, max_neurons=2, kinds=["expand_node"])
                     if FIRST_ORDER[name] is None or p.activation == FIRST_ORDER[name]]
    assert proposals
    base = mean_loss(graph, data)
    for p in proposals[:4]:
        gamma = 1e-6
        measured = (base - mean_loss(dg.apply(graph, p, gamma), data)) / gamma
        assert measured == pytest.approx(p.first_order_gain, rel=0.03, abs=1e-9), p


def test_the_feed_forward_layers_of_transformers_are_growable_tokens_nodes():
    for name in ("vit", "timm_vit", "mlp_mixer", "convnext"):
        _, graph = traced(name)
        grown = {c.node for c in dg.enumerate_candidates(graph, ["expand_node"])}
        tokens = {n for n in grown if graph.node(n).layout == "tokens"}
        assert tokens, name
        for n in tokens:
            (edge,) = graph.in_edges(n)
            assert edge.block.kind == "linear" and graph.node(edge.source).layout == "tokens"


def test_what_each_family_becomes():
    """Concatenations are placements, gates and attention op nodes, recurrent layers op nodes
    with several outputs."""
    kinds = {name: {e.block.kind for e in traced(name)[1].edges.values()} for name in FAMILIES}
    assert "place" in kinds["densenet"] and "place" in kinds["inception"] and "place" in kinds["lstm"]
    ops = {name: [s.op.label for s in traced(name)[1].nodes.values() if s.op] for name in FAMILIES}
    assert ops["densenet"] == [] and ops["inception"] == [] and ops["mobilenet_v2"] == []
    assert any("mul" in label for label in ops["efficientnet_se"])
    assert any("self_attn" in label for label in ops["vit"])
    assert any("layer_norm" in label for label in ops["convnext"])
    lstm = traced("lstm")[1]
    assert lstm.node("lstm").layout == "opaque" and len(lstm.successors("lstm")) == 2  # (out, (h, c)) read twice
    mobilenet = traced("mobilenet_v2")[1]
    assert any(s.activation == "relu6" for s in mobilenet.nodes.values())
    # stochastic depth (like dropout) follows the training flag seen while tracing: row dropout of the
    # block's node when traced in training mode, nothing in eval mode
    assert {s.dropout_mode for s in traced("efficientnet_se")[1].nodes.values() if s.dropout} == {"element"}
    with pytest.warns(dg.OpaqueOpWarning):
        efficient = dg.trace(make("efficientnet_se").train(), batch("efficientnet_se", 3))
    assert {(s.dropout, s.dropout_mode) for s in efficient.nodes.values() if s.dropout} == {(0.2, "row"),
                                                                                           (0.2, "element")}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_growth_step_never_raises_the_held_out_loss(name):
    _, graph = traced(name)
    data = loader(name, n=48)
    grower = dg.Grower(graph.copy(), loss="cross_entropy")
    before = mean_loss(grower.graph, data[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        event = grower.grow_step(data, data[0])
    assert event is not None
    assert mean_loss(grower.graph, data[:1]) <= before


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_hidden_node_either_widens_or_says_why(name):
    """Nothing is dropped silently: a hidden node is an expansion candidate or growth_blockers
    gives the reason (what propose leaves out)."""
    _, graph = traced(name)
    grown = {c.node for c in dg.enumerate_candidates(graph, ["expand_node"])}
    blockers = dg.growth_blockers(graph)
    hidden = set(graph.nodes) - set(graph.inputs) - set(graph.outputs)
    assert grown | set(blockers) == hidden and not grown & set(blockers)
    assert all(isinstance(r, str) and r for r in blockers.values())


def test_gated_and_depthwise_blocks_say_what_cannot_widen():
    """Squeeze-excitation: the conv inside the gate widens; the gated value (read by the product)
    and the depthwise stages say why they cannot. MobileNetV2: the expansion before a stride-1
    depthwise conv widens through it (new unit filters); a strided depthwise conv, the
    depthwise outputs and the projections (residual sums) say why not."""
    _, se = traced("efficientnet_se")
    blockers = dg.growth_blockers(se)
    assert "blocks_0_block_2_activation" not in blockers  # fc1 → SiLU → fc2 inside the gate
    assert blockers["blocks_0_block_2_scale_activation"].startswith("an op node reads it")
    assert blockers["blocks_0_block_1_2"].startswith("a grouped or depthwise convolution writes it")
    # the expansion before the depthwise conv: SiLU after SiLU is not one activation
    assert blockers["blocks_0_block_0_2"] == ("the depthwise node 'blocks_0_block_1_2' applies silu on top of silu "
                                              "(not one activation)")
    _, mobilenet = traced("mobilenet_v2")
    (cand,) = dg.enumerate_candidates(mobilenet, ["expand_node"])
    assert cand.node == "features_3_conv_0_2" and cand.activation == "relu6"
    assert [mobilenet.edge(e).source for e in cand.out_edges] == ["features_3_conv_1_2"]  # the depthwise node
    reasons = set(dg.growth_blockers(mobilenet).values())
    assert any(r.startswith("a grouped or strided depthwise convolution reads it") for r in reasons)
    assert "an identity edge (a residual stream) fixes its width" in reasons
    assert dg.enumerate_candidates(mobilenet, ["new_node", "new_edge"])
