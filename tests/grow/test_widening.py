"""Widening through concatenations (daggrow.grow.widening): a branch of a torch.cat gains neurons,
the concatenated node gains them at the branch's end, the placements after it shift, its readers
take the new columns; what cannot widen says why. Checked against hand-written references and
finite differences of the real loss in float64."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import daggrow as dg
from daggrow.errors import GraphError
from daggrow.grow import rewrite
from daggrow.grow.line_search import line_search
from daggrow.grow.candidates import enumerate_candidates, expansion_blocker, growth_blockers
from daggrow.grow.widening import widening
from daggrow.stats import per_sample_loss


class VectorCat(nn.Module):
    """Two branches, concatenated, a BatchNorm and ReLU on the concatenation, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.norm, self.head = nn.Linear(6, 4), nn.Linear(6, 3), nn.BatchNorm1d(7), nn.Linear(7, 2)

    def forward(self, x):
        c = torch.relu(self.norm(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)))
        return self.head(c)


class TokenCat(nn.Module):
    """Concatenation along the features of tokens (batch, tokens, d)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 5), nn.Linear(6, 3), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.cat([torch.nn.functional.gelu(self.a(x)), self.b(x)], -1))


def quiet_trace(model: nn.Module, x: torch.Tensor) -> dg.Graph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.OpaqueOpWarning)
        return dg.trace(model, x)


def vector_model(dtype=torch.float64) -> tuple[nn.Module, dg.Graph]:
    torch.manual_seed(0)
    model = VectorCat().to(dtype)
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5), model.norm.running_var.uniform_(0.5, 2.0)
        model.norm.weight.uniform_(0.5, 1.5), model.norm.bias.uniform_(-0.5, 0.5)
    model.eval()
    return model, quiet_trace(model, torch.randn(3, 6, dtype=dtype))


def test_widening_a_branch_widens_the_concatenation_and_shifts_the_placements_after_it():
    model, g = vector_model()
    (cat,) = [n for n in g.nodes if g.node(n).norm is not None]
    a, b = [e.source for e in g.in_edges(cat)]
    plan = widening(g, a)
    assert plan.inserts == {a: (4, 1), cat: (4, 1)} and plan.activation == "relu"
    assert [g.edge(e).source for e in plan.out_edges] == [cat]
    k = 2
    gen = torch.Generator().manual_seed(3)
    rows, bias = torch.randn(k, 6, generator=gen, dtype=torch.float64), torch.randn(k, generator=gen, dtype=torch.float64)
    cols = torch.randn(2, k, generator=gen, dtype=torch.float64)
    (e_in,), (e_out,) = plan.in_edges, plan.out_edges
    new = rewrite.add_neurons(g, a, {e_in: rows}, {e_out: cols}, {e_in: bias})
    assert new.node(a).width == 6 and new.node(cat).width == 9 and g.node(cat).width == 7
    assert {e.source: e.block.offset for e in new.in_edges(cat)} == {a: 0, b: 6}
    norm = new.norm_module(cat)
    torch.testing.assert_close(norm.running_mean[[0, 1, 2, 3, 6, 7, 8]], model.norm.running_mean)
    assert torch.equal(norm.running_mean[4:6], torch.zeros(2, dtype=torch.float64))
    x = torch.randn(5, 6, dtype=torch.float64)
    new_features = torch.relu(torch.relu(x @ rows.T + bias) / math.sqrt(1 + norm.eps))  # BatchNorm identity entries
    with torch.no_grad():
        torch.testing.assert_close(new.compile().eval()(x), model(x) + new_features @ cols.T)
        # no fan-out: the function is kept, whatever the fan-in
        torch.testing.assert_close(rewrite.add_neurons(g, a, {e_in: rows}, {}).compile().eval()(x), model(x))
    with pytest.raises(GraphError, match="cannot lose neurons: its features pass on"):
        rewrite.remove_neurons(g, a, [0])
    with pytest.raises(GraphError, match="not in-edges of"):
        rewrite.add_neurons(g, a, {}, {e_in: cols})


def loss_of(g: dg.Graph, data, loss: str) -> float:
    with torch.no_grad():
        module = g.compile().eval()
        return float(torch.cat([per_sample_loss(loss, module(x), y) for x, y in data]).mean())


def first_order_check(g: dg.Graph, data, loss: str, through: str) -> int:
    """Every expansion whose readers include a concatenation: L(γ) ≈ L(0) − γ·gain, amplitude 0 exact."""
    stats = dg.collect_statistics(g, data, loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proposals = [p for p in dg.propose(g, stats, max_neurons=2, kinds=["expand_node"])
                     if any(g.edge(e).source != p.candidate.node for e in p.candidate.out_edges)]
    base, x = loss_of(g, data, loss), data[0][0]
    for p in proposals:
        assert p.candidate.out_edges and all(g.node(g.edge(e).source).width for e in p.candidate.out_edges)
        with torch.no_grad():
            torch.testing.assert_close(dg.apply(g, p, 0.0).compile().eval()(x), g.compile().eval()(x), rtol=0, atol=1e-12)
        gamma = 1e-6
        measured = (base - loss_of(dg.apply(g, p, gamma), data, loss)) / gamma
        assert measured == pytest.approx(p.first_order_gain, rel=0.02, abs=1e-10), p
        # the line search rescales the new columns of the concatenation's readers in place
        found = line_search(g, p, data[1], loss)
        assert found.loss_after == pytest.approx(loss_of(dg.apply(g, p, found.amplitude), data[1:], loss), rel=1e-9)
    return len(proposals)


def test_first_order_gains_through_a_vector_concatenation_match_finite_differences():
    _, g = vector_model()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    y = torch.sin(2 * x[:, :2]) + 0.1 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    assert first_order_check(g, [(x[:32], y[:32]), (x[32:], y[32:])], "mse", "cat") == 2  # both branches


def test_first_order_gains_through_a_token_concatenation_match_finite_differences():
    torch.manual_seed(0)
    model = TokenCat().double().eval()
    g = quiet_trace(model, torch.randn(3, 7, 6, dtype=torch.float64))
    branches = {c.node: c.activation for c in enumerate_candidates(g, ["expand_node"])}
    assert sorted(branches.values()) == ["gelu", "identity"]  # a's GELU, b's identity: both concatenated
    branch = next(n for n, act in branches.items() if act == "gelu")
    assert g.node(branch).layout == "tokens"
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 7, 6, generator=gen, dtype=torch.float64)
    y = torch.tanh(x[..., :2]) + 0.1 * torch.randn(40, 7, 2, generator=gen, dtype=torch.float64)
    assert first_order_check(g, [(x[:20], y[:20]), (x[20:], y[20:])], "mse", branch) >= 1


def test_first_order_gains_inside_a_densenet_block_match_finite_differences():
    from ..trace.test_zoo_families import batch, loader, make

    model = make("densenet", torch.float64)
    g = quiet_trace(model, batch("densenet", 3, dtype=torch.float64))
    assert first_order_check(g, loader("densenet", torch.float64), "cross_entropy", "") >= 3


def test_a_pooled_concatenation_gives_its_readers_zero_columns():
    """DenseNet's block-2 layer 0: read by the next layer's concatenation (live) and by the block's
    final concatenation, which is pooled into the classifier (zero columns there)."""
    from ..trace.test_zoo_families import batch, make

    g = quiet_trace(make("densenet"), batch("densenet", 3))
    plan = widening(g, "block2_layer0_conv2")
    assert [g.edge(e).source for e in plan.out_edges] == ["block2_layer1_relu1"]
    assert plan.zero_edges == ("fc",) and plan.inserts["adaptive_avg_pool2d"] == (12, 1)
    (e_in,) = plan.in_edges
    rows = torch.randn(3, *g.module(e_in).weight.shape[1:])
    new = rewrite.add_neurons(g, "block2_layer0_conv2", {e_in: rows}, {})
    fc = new.module("fc").weight
    assert fc.shape == (4, 19) and torch.equal(fc[:, 12:15], torch.zeros(4, 3))
    x = batch("densenet", 5, 1)
    with torch.no_grad():
        torch.testing.assert_close(new.compile().eval()(x), g.compile().eval()(x))


def test_a_flatten_of_a_concatenation_passes_the_new_features_on():
    g = dg.Graph()
    g.add_input("x", 2, shape=(5,))
    g.add_node("a", 3, "relu", shape=(5,))
    g.add_node("b", 2, "relu", shape=(5,))
    g.add_node("c", 5, shape=(5,))
    g.add_node("f", 25)
    g.add_node("y", 2)
    g.add_edge("x", "a", dg.ConvBlock(dim=1, kernel_size=3, padding=1))
    g.add_edge("x", "b", dg.ConvBlock(dim=1, kernel_size=1))
    g.add_edge("a", "c", dg.PlaceBlock(offset=0))
    g.add_edge("b", "c", dg.PlaceBlock(offset=3))
    g.add_edge("c", "f", "flatten")
    g.add_edge("f", "y")
    g.add_edge("a", "y")
    g.set_output("y")
    plan = widening(g, "a")
    assert plan.inserts == {"a": (3, 1), "c": (3, 1), "f": (15, 5)} and plan.zero_edges == ("f_to_y",)
    new = rewrite.add_neurons(g, "a", {"x_to_a": torch.randn(2, 2, 3)}, {"a_to_y": torch.randn(2, 10)})
    assert new.node("f").width == 35 and new.module("f_to_y").weight.shape == (2, 35)
    assert {e.source: e.block.offset for e in new.in_edges("c")} == {"a": 0, "b": 5}
    x = torch.randn(4, 2, 5)
    with torch.no_grad():
        before, after = g.compile()(x), new.compile()(x)
    assert not torch.allclose(before, after)  # the direct reader took its fan-out


def cat_graph(cat_activation: str = "relu", scale: float = 1.0) -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("a", 3, "relu")
    g.add_node("b", 2, "relu")
    g.add_node("c", 5, cat_activation)
    g.add_node("y", 2)
    g.add_edge("x", "a"), g.add_edge("x", "b")
    g.add_edge("a", "c", dg.PlaceBlock(offset=0, scale=scale))
    g.add_edge("b", "c", dg.PlaceBlock(offset=3))
    g.add_edge("c", "y")
    g.set_output("y")
    return g


def test_what_cannot_widen_through_a_concatenation_says_why():
    assert "applies sigmoid on top of relu" in expansion_blocker(cat_graph("sigmoid"), "a")
    assert expansion_blocker(cat_graph(scale=2.0), "a").startswith("no linear or conv layer reads its new features")
    g = cat_graph()
    assert expansion_blocker(g, "c") == "it is a concatenation (its features are its branches': widen a branch instead)"
    g.add_edge("x", "c")  # a growable edge into the concatenation: zero rows there
    assert widening(g, "a").zero_rows == ("x_to_c",)
    x = torch.randn(5, 4)
    new = rewrite.add_neurons(g, "a", {"x_to_a": torch.randn(1, 4)}, {"c_to_y": torch.randn(2, 1)})
    assert new.module("x_to_c").weight.shape == (6, 4) and torch.equal(new.module("x_to_c").weight[3], torch.zeros(4))
    with torch.no_grad():
        assert new.compile()(x).shape == (5, 2)
    g.add_edge("a", "y")  # a direct reader of a and a reader of its concatenation write into one node
    assert expansion_blocker(g, "a") == "two of its readers write into the same node"

    g = cat_graph()
    g.add_node("d", 5)
    g.add_edge("c", "d", dg.PlaceBlock(offset=0))
    g.add_edge("a", "d", dg.PlaceBlock(offset=0))   # overlapping placements
    g.add_edge("d", "y")
    assert "the concatenation 'd' it feeds also sums a place edge 'c_to_d'" == expansion_blocker(g, "a")
    g = cat_graph()
    g.add_node("d", 8)
    g.add_edge("c", "d", dg.PlaceBlock(offset=0))
    g.add_edge("a", "d", dg.PlaceBlock(offset=5))   # d = [c, a] = [a, b, a]: a's features would enter d twice
    g.add_edge("d", "y")
    assert "reaches 'd' twice" in expansion_blocker(g, "a")

    g = cat_graph()
    g.add_node("s", 5)
    g.add_edge("x", "s")
    g.add_edge("s", "c", "identity")
    assert "also sums a identity edge" in expansion_blocker(g, "a")

    g = cat_graph()
    g.add_node("z", 3)
    g.add_edge("a", "z")
    g.add_edge("z", "y")
    # a is relu: a direct reader sees relu, the concatenation's reader relu∘relu = relu: one activation
    assert expansion_blocker(g, "a") is None
    g2 = cat_graph("tanh")
    g2.add_edge("a", "y", name="direct")
    assert "applies tanh on top of relu" in expansion_blocker(g2, "a")


def test_a_linear_branch_read_directly_and_through_a_relu_concatenation_refuses():
    g = cat_graph()
    g.remove_node("a")
    g.add_node("a", 3)                                   # identity activation
    g.add_edge("x", "a"), g.add_edge("a", "c", dg.PlaceBlock(offset=0))
    g.add_node("z", 2)
    g.add_edge("a", "z"), g.add_edge("z", "y")
    assert expansion_blocker(g, "a") == "its readers see it through different activations (it and a concatenation of it)"


def test_concatenations_into_outputs_pools_with_other_inputs_and_op_nodes_refuse():
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("a", 3, "relu")
    g.add_node("c", 3)
    g.add_edge("x", "a"), g.add_edge("a", "c", dg.PlaceBlock(offset=0))
    g.set_output("c")
    assert expansion_blocker(g, "a") == "its new features pass into 'c', and there inputs and outputs keep their width"

    g = dg.Graph()
    g.add_input("x", 2, shape=(4,))
    g.add_node("a", 3, "relu", shape=(4,))
    g.add_node("p", 3, shape=(2,))
    g.add_node("y", 2)
    g.add_edge("x", "a", dg.ConvBlock(dim=1, kernel_size=1))
    g.add_edge("a", "p", dg.PoolBlock(op="max", dim=1, kernel_size=2))
    g.add_edge("x", "p", dg.ConvBlock(dim=1, kernel_size=2, stride=2))
    g.add_edge("p", "y")
    g.set_output("y")
    assert expansion_blocker(g, "a") == "the pool node 'p' it feeds has other in-edges"


def test_growth_blockers_lists_every_hidden_node_that_cannot_widen():
    _, g = vector_model()
    blockers = growth_blockers(g)
    (cat,) = [n for n in g.nodes if g.node(n).norm is not None]
    assert set(blockers) == {cat} and "concatenation" in blockers[cat]
    gated = quiet_trace(nn.Sequential(nn.Linear(4, 4)), torch.randn(3, 4))
    assert growth_blockers(gated) == {}


def test_the_optimizer_state_follows_the_inserted_columns():
    from daggrow.grow.optim import carry_optimizer

    _, g = vector_model()
    (cat,) = [n for n in g.nodes if g.node(n).norm is not None]
    a = g.in_edges(cat)[0].source
    g.norm_module(cat).train()
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    x = torch.randn(8, 6, dtype=torch.float64)
    g.compile()(x).pow(2).sum().backward()
    opt.step()
    (e_in,) = widening(g, a).in_edges
    new = rewrite.add_neurons(g, a, {e_in: torch.randn(2, 6, dtype=torch.float64)}, {})
    carried = carry_optimizer(opt, g, new)
    old_state = opt.state[g.module("head").weight]["exp_avg"]
    state = carried.state[new.module("head").weight]["exp_avg"]
    assert torch.equal(state[:, [0, 1, 2, 3, 6, 7, 8]], old_state) and torch.equal(state[:, 4:6], torch.zeros(2, 2))
    old_norm = opt.state[g.norm_module(cat).weight]["exp_avg"]
    norm = carried.state[new.norm_module(cat).weight]["exp_avg"]
    assert torch.equal(norm[[0, 1, 2, 3, 6, 7, 8]], old_norm) and torch.equal(norm[4:6], torch.zeros(2))
    rows = carried.state[new.module(e_in).weight]["exp_avg"]            # w's own in-edge: appended rows
    assert torch.equal(rows[:4], opt.state[g.module(e_in).weight]["exp_avg"]) and not rows[4:].any()


def test_inserted_entries_name_the_tensors_a_widening_changes_inside():
    from daggrow.grow.widening import inserted_entries

    g = cat_graph()
    assert inserted_entries(g, g) == {}                       # no growth step yet
    g.add_edge("x", "c")
    new = rewrite.add_neurons(g, "a", {"x_to_a": torch.randn(2, 4)}, {"c_to_y": torch.randn(2, 2)})
    assert inserted_entries(g, new) == {"edge:x_to_c.weight": (0, 3, 2), "edge:x_to_c.bias": (0, 3, 2),
                                        "edge:c_to_y.weight": (1, 3, 2)}


def test_a_widened_concatenation_saves_and_loads(tmp_path):
    from ..trace.test_zoo_families import batch, make

    g = quiet_trace(make("densenet"), batch("densenet", 3))
    plan = widening(g, "block1_layer0_conv2")
    (e_in,) = plan.in_edges
    fan_out = {e: torch.randn(g.module(e).weight.shape[0], 2, *g.module(e).weight.shape[2:]) for e in plan.out_edges}
    new = rewrite.add_neurons(g, "block1_layer0_conv2", {e_in: torch.randn(2, *g.module(e_in).weight.shape[1:])},
                              fan_out)
    new.save(tmp_path / "g")
    loaded = dg.Graph.load(tmp_path / "g")
    assert loaded.spec() == new.spec()
    x = batch("densenet", 5, 1)
    with torch.no_grad():
        assert torch.equal(loaded.compile().eval()(x), new.compile().eval()(x))
        assert not torch.allclose(new.compile().eval()(x), g.compile().eval()(x))


def depthwise_graph(stride: int = 1) -> dg.Graph:
    """x → 1×1 → e (relu6) → depthwise 3×3 → d (relu6) → 1×1 → p → y: a MobileNetV2 block."""
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 2, shape=(6, 6))
    g.add_node("e", 4, "relu6", shape=(6, 6))
    g.add_node("d", 4, "relu6", shape=(6 // stride, 6 // stride), norm="batchnorm")
    g.add_node("p", 3, shape=(6 // stride, 6 // stride))
    g.add_node("y", 2)
    g.add_edge("x", "e", dg.ConvBlock(dim=2, kernel_size=1))
    g.add_edge("e", "d", dg.ConvBlock(dim=2, kernel_size=3, padding=1, stride=stride, groups=4))
    g.add_edge("d", "p", dg.ConvBlock(dim=2, kernel_size=1))
    g.add_edge("p", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.double()
    g.norm_module("d").double().eval()
    return g


def test_new_channels_pass_through_a_stride_one_depthwise_conv_with_unit_filters():
    g = depthwise_graph()
    plan = widening(g, "e")
    assert plan.depthwise == ("e_to_d",) and plan.out_edges == ("d_to_p",) and plan.activation == "relu6"
    rows = torch.randn(2, 2, 1, 1, dtype=torch.float64)
    cols = torch.randn(3, 2, 1, 1, dtype=torch.float64)
    new = rewrite.add_neurons(g, "e", {"x_to_e": rows}, {"d_to_p": cols})
    assert new.edge("e_to_d").block.groups == 6 and new.module("e_to_d").groups == 6
    unit = new.module("e_to_d").weight[4:]
    assert torch.equal(unit[:, 0, 1, 1], torch.ones(2, dtype=torch.float64)) and unit.sum() == 2
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    eps = g.norm_module("d").eps
    new_d = torch.nn.functional.relu6(torch.nn.functional.relu6(torch.einsum("kc,nchw->nkhw", rows[:, :, 0, 0], x))
                                      / (1 + eps) ** 0.5)
    with torch.no_grad():
        p_new = torch.einsum("jk,nkhw->njhw", cols[:, :, 0, 0], new_d)
        expected = g.compile()(x) + p_new.flatten(1) @ g.module("p_to_y").weight.T
        torch.testing.assert_close(new.compile()(x), expected)
    from daggrow.grow.widening import inserted_entries
    assert inserted_entries(g, new)["edge:e_to_d.weight"] == (0, 4, 2)


def test_first_order_gains_through_a_depthwise_conv_match_finite_differences():
    g = depthwise_graph()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.tanh(x[:, 0, :2, 0]) + 0.1 * torch.randn(40, 2, generator=gen, dtype=torch.float64)
    data = [(x[:20], y[:20]), (x[20:], y[20:])]
    assert first_order_check(g, data, "mse", "e") == 1


def test_a_strided_depthwise_conv_does_not_pass_new_channels_on():
    assert expansion_blocker(depthwise_graph(stride=2), "e").startswith(
        "a grouped or strided depthwise convolution reads it")


def test_add_neurons_refuses_tensors_of_the_wrong_shape():
    g = cat_graph()
    with pytest.raises(GraphError, match="fan-in of edge 'x_to_a' has shape"):
        rewrite.add_neurons(g, "a", {"x_to_a": torch.randn(2, 5)}, {})
    with pytest.raises(GraphError, match="fan-out of edge 'c_to_y' has shape"):
        rewrite.add_neurons(g, "a", {"x_to_a": torch.randn(2, 4)}, {"c_to_y": torch.randn(3, 2)})
    g2 = dg.Graph()
    g2.add_input("x", 4)
    g2.add_node("a", 3, "relu")
    g2.add_node("y", 2)
    g2.add_edge("x", "a", bias=False), g2.add_edge("a", "y")
    g2.set_output("y")
    with pytest.raises(GraphError, match="has no bias"):
        rewrite.add_neurons(g2, "a", {"x_to_a": torch.randn(1, 4)}, {}, {"x_to_a": torch.randn(1)})
