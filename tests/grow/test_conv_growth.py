"""Growing convolutional graphs: first-order gains against finite differences of the real loss,
function preservation at amplitude 0 (BatchNorm in train and eval mode), conv rewrites."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg
from daggrow.grow import rewrite
from daggrow.grow.candidates import enumerate_candidates, statistics_plan
from daggrow.grow.line_search import line_search
from daggrow.grow.propose import apply, propose

F64 = torch.float64


def cnn(act: str = "tanh", dim: int = 1, norm: str | None = None, seed: int = 0) -> dg.Graph:
    """x → c1 (conv k3 s2 p1) → c2 (conv k3 s2 p1) → y (linear, flattening c2)."""
    torch.manual_seed(seed)
    shape = (12,) if dim == 1 else (8, 6)
    block = dg.ConvBlock(dim=dim, kernel_size=3, stride=2, padding=1)
    g = dg.Graph()
    g.add_input("x", 2, shape=shape)
    g.add_node("c1", 3, act, shape=block.output_shape(shape), norm=norm)
    g.add_node("c2", 2, act, shape=block.output_shape(block.output_shape(shape)), norm=norm)
    g.add_node("y", 4)
    g.add_edge("x", "c1", block)
    g.add_edge("c1", "c2", block)
    g.add_edge("c2", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.to(F64)
    for n in ("c1", "c2"):
        if g.norm_module(n) is not None:
            g.norm_module(n).double()
    return g


def data(g: dg.Graph, n: int = 48, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = g.node("x")
    return (torch.randn(n, x.width, *x.shape, generator=gen, dtype=F64),
            torch.randn(n, g.node("y").width, generator=gen, dtype=F64))


def proposals(g: dg.Graph, X, Y, **kw):
    cands = enumerate_candidates(g, ["expand_node"])
    stats = dg.collect_statistics(g, [(X, Y)], "mse", plan=statistics_plan(g, cands))
    return propose(g, stats, candidates=cands, **kw)


def mse(g: dg.Graph, X, Y) -> float:
    with torch.no_grad():
        return float(((g.compile()(X) - Y) ** 2).sum(1).mean())


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("act", ["identity", "tanh", "selu", "relu"])
def test_first_order_gain_matches_finite_differences(act, dim):
    g = cnn(act, dim)
    X, Y = data(g)
    props = proposals(g, X, Y, max_neurons=2)
    assert {p.candidate.node for p in props} == {"c1", "c2"}
    base = mse(g, X, Y)
    for p in props:
        eps = 1e-6
        measured = (base - mse(apply(g, p, eps), X, Y)) / eps
        assert measured == pytest.approx(p.first_order_gain, rel=0.03, abs=1e-9), p
        assert p.first_order_gain > 0


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dim", [1, 2])
def test_amplitude_zero_keeps_outputs_with_batchnorm(dim, train):
    g = cnn("relu", dim, norm="batchnorm")
    X, Y = data(g)
    with torch.no_grad():  # non-trivial running statistics
        g.compile().train()(X)
    for p in proposals(g, X, Y, max_neurons=3):
        new = apply(g, p, 0.0)
        before, after = g.compile().train(train), new.compile().train(train)
        with torch.no_grad():
            assert torch.allclose(after(X), before(X), atol=1e-12)
        assert new.node(p.candidate.node).width == g.node(p.candidate.node).width + p.num_neurons


def test_line_search_never_raises_the_held_out_loss_and_growth_helps():
    g = cnn("relu")
    X, Y = data(g, n=96)
    props = proposals(g, X[:64], Y[:64], max_neurons=2)
    for p in props:
        result = line_search(g, p, (X[64:], Y[64:]), "mse")
        assert result.loss_after <= result.loss_before
        grown = apply(g, p, result.amplitude)
        assert mse(grown, X[64:], Y[64:]) == pytest.approx(result.loss_after, rel=1e-9)
    best = apply(g, props[0], line_search(g, props[0], (X[:64], Y[:64]), "mse").amplitude)
    assert mse(best, X[:64], Y[:64]) < mse(g, X[:64], Y[:64])


def test_remove_channels_drops_their_rows_and_columns():
    g = cnn("tanh", 2, norm="batchnorm")
    X, _ = data(g)
    g.module("c1_to_c2").weight.data[:, 1] = 0.0  # channel 1 of c1 is unused downstream
    small = rewrite.remove_neurons(g, "c1", [1])
    g.compile().eval(), small.compile().eval()
    with torch.no_grad():
        assert torch.allclose(small.compile().eval()(X), g.compile().eval()(X), atol=1e-12)
    assert small.module("x_to_c1").weight.shape[0] == 2 and small.module("c1_to_c2").weight.shape[1] == 2
    g.module("c2_to_y").weight.data.view(4, 2, -1)[:, 0] = 0.0  # channel 0 of c2, through the flatten
    smaller = rewrite.remove_neurons(g, "c2", [0])
    with torch.no_grad():
        assert torch.allclose(smaller.compile().eval()(X), g.compile().eval()(X), atol=1e-12)


def test_best_update_applies_to_conv_edges_as_patch_matrices():
    g = cnn("tanh")
    X, Y = data(g)
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    from daggrow.grow.propose import node_update

    upd = node_update(g, stats, "c2")
    new = rewrite.update_weights(g, {e: (1e-6 * dw, None if db is None else 1e-6 * db)
                                     for e, (dw, db) in upd.edges.items()})
    measured = (mse(g, X, Y) - mse(new, X, Y)) / 1e-6
    assert measured == pytest.approx(upd.first_order_gain, rel=0.03)


def test_grown_cnn_saves_and_loads(tmp_path):
    g = cnn("relu", norm="batchnorm")
    X, Y = data(g)
    p = proposals(g, X, Y, max_neurons=2)[0]
    new = apply(g, p, 0.5)
    new.save(tmp_path / "g")
    back = dg.Graph.load(tmp_path / "g")
    with torch.no_grad():
        assert torch.equal(back.compile().eval()(X), new.compile().eval()(X))
    assert back.growth_log[-1].neurons == new.growth_log[-1].neurons


def test_nodes_with_mixed_out_geometries_or_grouped_convs_are_not_expandable():
    g = cnn("relu")
    g.add_node("c3", 2, "relu", shape=g.node("c2").shape)
    g.add_edge("c1", "c3", dg.ConvBlock(dim=1, kernel_size=5, stride=2, padding=2))
    g.add_edge("c3", "y")
    names = [c.node for c in enumerate_candidates(g, ["expand_node"])]
    assert "c1" not in names and {"c2", "c3"} <= set(names)
    h = cnn("relu")
    h.remove_edge("c1_to_c2")
    h.add_edge("c1", "c2", dg.ConvBlock(dim=1, kernel_size=3, stride=2, padding=1, groups=1))
    assert "c1" in [c.node for c in enumerate_candidates(h, ["expand_node"])]


def test_run_growth_grows_a_cnn_on_digits(tmp_path):
    from daggrow.grow.runner import RunConfig, run_growth

    result = run_growth(RunConfig(dataset="digits", model="cnn", channels=[2, 2], steps=3, neurons_per_step=2,
                                  epochs_between=1, lr=1e-2, out=str(tmp_path / "run")), progress=False)
    g = result["graph"]
    assert g.node("x").shape == (8, 8) and g.node("c1").shape == (8, 8)
    assert result["growth_steps"] >= 1
    assert g.node("c1").width + g.node("c2").width > 4          # conv nodes gained channels
    assert result["test_accuracy"] > 0.3                          # chance is 0.1
    assert (tmp_path / "run" / "report.html").exists() or (tmp_path / "run" / "history.json").exists()


def test_a_traced_resnet_grows_inside_its_blocks():
    """Inner nodes of traced ResNet basic blocks (conv-bn-relu between two convs) widen; the
    residual streams (identity edges) do not; amplitude 0 keeps the function, and the
    first-order gain matches finite differences of the real loss (eval-mode BatchNorm)."""
    from tests.trace.test_cnn import SmallResNet

    torch.manual_seed(0)
    model = SmallResNet(width=4).double().eval()
    X = torch.randn(24, 3, 8, 8, dtype=F64)
    Y = torch.randint(0, 10, (24,))
    g = dg.trace(model, X[:2])
    cands = enumerate_candidates(g, ["expand_node"])
    widened = {c.node for c in cands}
    assert len(widened) == 4                       # the conv1 node of each of the 4 basic blocks
    assert all(g.node(n).norm is not None and g.node(n).shape for n in widened)
    stats = dg.collect_statistics(g, [(X, Y)], "cross_entropy", candidates=cands)
    props = propose(g, stats, max_neurons=2, candidates=cands)
    assert props

    def loss(graph) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(graph.compile().eval()(X), Y))

    for p in props[:2]:
        with torch.no_grad():
            assert torch.allclose(apply(g, p, 0.0).compile().eval()(X), g.compile().eval()(X), atol=1e-12)
        eps = 1e-6
        measured = (loss(g) - loss(apply(g, p, eps))) / eps
        assert measured == pytest.approx(p.first_order_gain, rel=0.03)
