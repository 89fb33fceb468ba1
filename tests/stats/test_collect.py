"""Streaming statistics against one-shot float64 references built from explicit per-sample data."""

from __future__ import annotations

import socket

import pytest
import torch

import daggrow as dg
from daggrow.stats import collect_statistics, plan_for

from ..graphs import skip_dag


def make_dag(dtype=torch.float64, seed=0) -> dg.Graph:
    return skip_dag((5, 4, 3, 2), ("tanh", "relu"), seed, dtype)


def per_sample(g: dg.Graph, X: torch.Tensor, Y: torch.Tensor):
    """Explicit values and desired moves of every node (the brute-force reference)."""
    from daggrow.compile import node_values

    values = node_values(g, (X,))
    pre = {}
    # pre-activations, recomputed as leaves so autograd gives per-sample ∂ℓ_i/∂z
    a_pre = g.module("x_to_a")(X).detach().requires_grad_()
    a = torch.tanh(a_pre)
    b_pre = (g.module("a_to_b")(a) + g.module("x_to_b")(X)).detach().requires_grad_()
    b = torch.relu(b_pre)
    # rebuild the chain so gradients flow from y to a
    a2 = torch.tanh(a_pre)
    b2_pre = g.module("a_to_b")(a2) + g.module("x_to_b")(X)
    b2 = torch.relu(b2_pre)
    y2 = g.module("b_to_y")(b2) + g.module("a_to_y")(a2)
    loss = ((y2 - Y) ** 2).sum()
    ga, = torch.autograd.grad(loss, [a_pre], retain_graph=True)
    gb, = torch.autograd.grad(loss, [b2_pre], retain_graph=True)
    gy, = torch.autograd.grad(loss, [y2])
    pre = {"a": -ga, "b": -gb, "y": -gy}
    assert torch.allclose(values["y"], y2.detach())
    return {k: v.detach() for k, v in values.items()}, pre


def test_moments_equal_explicit_products_float64():
    g = make_dag()
    X, Y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    plan = plan_for(g, [(["x", "a"], ["b", "y"]), (["x"], ["y"])])
    stats = collect_statistics(g, [(X, Y)], "mse", plan=plan)
    values, moves = per_sample(g, X, Y)
    one = torch.ones(64, 1, dtype=torch.float64)
    B = torch.cat([values["x"], values["a"], one], 1)
    V = torch.cat([moves["b"], moves["y"]], 1)
    torch.testing.assert_close(stats.moment(["x", "a"], ["x", "a"]), B.T @ B / 64, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.grad_moment(["x", "a"], ["b", "y"]), B.T @ V / 64, rtol=1e-12, atol=1e-12)
    assert stats.grad_energy("y") == pytest.approx(float((moves["y"] ** 2).sum()) / 64, rel=1e-12)
    # a cross moment without constant row on one side
    Bb = values["b"]
    P = stats.moment(["x"], ["b"], bias_u=True, bias_w=False) if ("x", "b") in stats.hh else None
    if P is not None:
        torch.testing.assert_close(P, torch.cat([values["x"], one], 1).T @ Bb / 64, rtol=1e-12, atol=1e-12)


def test_streaming_over_uneven_batches_equals_one_shot():
    g = make_dag()
    X, Y = torch.randn(103, 5, dtype=torch.float64), torch.randn(103, 2, dtype=torch.float64)
    plan = plan_for(g, [(["x", "a"], ["b", "y"])])
    one_shot = collect_statistics(g, [(X, Y)], "mse", plan=plan)
    cuts = [0, 3, 20, 21, 50, 77, 90, 103]
    batches = [(X[i:j], Y[i:j]) for i, j in zip(cuts, cuts[1:])]
    assert len(batches) == 7
    streamed = collect_statistics(g, batches, "mse", plan=plan)
    assert streamed.n == one_shot.n == 103
    for name in ("h", "hh", "v", "vv", "hv"):
        for k, t in getattr(one_shot, name).items():
            torch.testing.assert_close(getattr(streamed, name)[k], t, rtol=1e-12, atol=1e-12)
    merged = collect_statistics(g, batches[:3], "mse", plan=plan) + collect_statistics(g, batches[3:], "mse", plan=plan)
    torch.testing.assert_close(merged.moment(["x", "a"], ["x", "a"]), one_shot.moment(["x", "a"], ["x", "a"]))


def test_float32_model_accumulates_in_float64():
    g = make_dag(torch.float32)
    X, Y = torch.randn(40, 5), torch.randn(40, 2)
    stats = collect_statistics(g, [(X, Y)], "mse")
    assert all(t.dtype == torch.float64 for t in stats.hh.values())


def test_cross_entropy_and_callable_losses():
    g = make_dag()
    X = torch.randn(30, 5, dtype=torch.float64)
    labels = torch.randint(0, 2, (30,))
    ce = collect_statistics(g, [(X, labels)], "cross_entropy")
    same = collect_statistics(g, [(X, labels)], lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="none"))
    assert ce.grad_energy("y") == pytest.approx(same.grad_energy("y"), rel=1e-12)
    # the desired move of cross-entropy at the logits is onehot − softmax
    out = g.compile()(X)
    V = torch.nn.functional.one_hot(labels, 2).double() - out.softmax(1)
    assert ce.grad_energy("y") == pytest.approx(float((V.detach() ** 2).sum()) / 30, rel=1e-10)


def test_nan_in_data_is_a_clear_error_and_leaves_graph_unchanged():
    g = make_dag()
    before = {k: p.clone() for k, p in g.named_parameters()}
    X, Y = torch.randn(10, 5, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    X[3, 1] = float("nan")
    with pytest.raises(dg.StatisticsError, match="batch 0: the inputs contain NaN"):
        collect_statistics(g, [(X, Y)], "mse")
    for k, p in g.named_parameters():
        assert torch.equal(p, before[k])
    assert all(m.training for e in g.edges for m in g.module(e).modules())


def test_empty_loader_and_bad_loss():
    g = make_dag()
    with pytest.raises(dg.StatisticsError, match="no batch"):
        collect_statistics(g, [], "mse")
    X, Y = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(dg.StatisticsError, match="unknown loss"):
        collect_statistics(g, [(X, Y)], "hinge")
    with pytest.raises(dg.StatisticsError, match="was not collected"):
        collect_statistics(g, [(X, Y)], "mse", plan=plan_for(g, bottleneck_nodes=["y"])).moment(["x"], ["a"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        g = make_dag()
        torch.manual_seed(123)
        X, Y = torch.randn(90, 5, dtype=torch.float64), torch.randn(90, 2, dtype=torch.float64)
        half = slice(0, 40) if rank == 0 else slice(40, 90)
        stats = collect_statistics(g, [(X[half], Y[half])], "mse", plan=plan_for(g, [(["x", "a"], ["b", "y"])]),
                                   across_processes=False)  # reduced by hand below
        stats.all_reduce()
        if rank == 0:
            torch.save({"n": stats.n, "S": stats.moment(["x", "a"], ["x", "a"]),
                        "M": stats.grad_moment(["x", "a"], ["b", "y"])}, path)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    path = str(tmp_path / "reduced.pt")
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    reduced = torch.load(path)
    g = make_dag()
    torch.manual_seed(123)
    X, Y = torch.randn(90, 5, dtype=torch.float64), torch.randn(90, 2, dtype=torch.float64)
    single = collect_statistics(g, [(X, Y)], "mse", plan=plan_for(g, [(["x", "a"], ["b", "y"])]))
    assert reduced["n"] == 90
    torch.testing.assert_close(reduced["S"], single.moment(["x", "a"], ["x", "a"]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reduced["M"], single.grad_moment(["x", "a"], ["b", "y"]), rtol=1e-12, atol=1e-12)


def test_reusing_input_moments_gives_the_same_statistics():
    g = make_dag()
    X, Y = torch.randn(60, 5, dtype=torch.float64), torch.randn(60, 2, dtype=torch.float64)
    plan = plan_for(g, [(["x", "a"], ["b", "y"]), (["x"], ["y"])])
    batches = [(X[:25], Y[:25]), (X[25:], Y[25:])]
    first = collect_statistics(g, batches, "mse", plan=plan)
    with torch.no_grad():
        g.module("x_to_a").weight.mul_(1.5)  # the weights change between passes; the data does not
    fresh = collect_statistics(g, batches, "mse", plan=plan)
    reused = collect_statistics(g, list(reversed(batches)), "mse", plan=plan, reuse=first)
    for name in ("h", "hh", "v", "vv", "hv"):
        for k, t in getattr(fresh, name).items():
            torch.testing.assert_close(getattr(reused, name)[k], t, rtol=1e-12, atol=1e-12)
    with pytest.raises(dg.StatisticsError, match="same samples"):
        collect_statistics(g, batches[:1], "mse", plan=plan, reuse=first)


def test_reused_pass_gives_the_same_proposals():
    """The solver's decomposition of a data-only S (cached on the statistics) follows reuse=."""
    g = make_dag()
    X, Y = torch.randn(80, 5, dtype=torch.float64), torch.randn(80, 2, dtype=torch.float64)
    first = dg.collect_statistics(g, [(X, Y)], "mse")
    baseline = dg.propose(g, first, max_neurons=2)
    assert first.data_cache  # S_x was decomposed once and kept
    again = dg.collect_statistics(g, [(X[:40], Y[:40]), (X[40:], Y[40:])], "mse", reuse=first)
    assert again.data_cache.keys() == first.data_cache.keys()
    reused = dg.propose(g, again, max_neurons=2)
    # candidates of equal gain (here expand a, new node x→y, new edge x→y) may swap places by round-off
    assert len(reused) == len(baseline) and {p.where for p in reused} == {p.where for p in baseline}
    by_where = {p.where: p for p in baseline}
    for a, b in zip(reused, baseline):
        assert a.first_order_gain == pytest.approx(b.first_order_gain, rel=1e-9)  # the same ranking
        torch.testing.assert_close(a.fan_in, by_where[a.where].fan_in, rtol=1e-9, atol=1e-10)
        assert a.first_order_gain == pytest.approx(by_where[a.where].first_order_gain, rel=1e-9)


def test_wide_gram_blocks_equal_the_full_product(monkeypatch):
    """S_u of a wide node is summed block row by block row (upper part only) and mirrored."""
    from daggrow.stats import collect as collect_module

    monkeypatch.setattr(collect_module, "GRAM_BLOCK", 7)  # several blocks, a ragged last one
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 30)
    g.add_node("h", 3, "tanh")
    g.add_node("y", 2)
    g.add_edge("x", "h"), g.add_edge("h", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.double()
    X, Y = torch.randn(50, 30, dtype=torch.float64) + 0.5, torch.randn(50, 2, dtype=torch.float64)
    stats = collect_statistics(g, [(X[:20], Y[:20]), (X[20:], Y[20:])], "mse")
    S = stats.moment(["x"], ["x"])
    B = torch.cat([X, torch.ones(50, 1, dtype=torch.float64)], 1)
    assert torch.allclose(S, B.T @ B / 50, atol=1e-12)
    assert torch.allclose(S, S.T, atol=1e-12, rtol=0)


def test_candidates_alone_collect_less_and_propose_the_same():
    """bottleneck_nodes=[]: only what the candidates need (δW* at their targets), same proposals."""
    g = make_dag()
    X, Y = torch.randn(70, 5, dtype=torch.float64), torch.randn(70, 2, dtype=torch.float64)
    cands = dg.enumerate_candidates(g, ["expand_node"])
    full = dg.collect_statistics(g, [(X, Y)], "mse", candidates=cands)
    lean = dg.collect_statistics(g, [(X, Y)], "mse", candidates=cands, bottleneck_nodes=[])
    assert set(lean.hv) < set(full.hv) and set(lean.v) < set(full.v)
    targets = {t for c in cands for t in c.targets}
    assert set(lean.v) == targets and set(dg.bottleneck(g, lean)) == targets
    for k, t in lean.hh.items():
        torch.testing.assert_close(t, full.hh[k], rtol=1e-12, atol=1e-12)
    for a, b in zip(dg.propose(g, lean, max_neurons=2, candidates=cands),
                    dg.propose(g, full, max_neurons=2, candidates=cands), strict=True):
        assert a.where == b.where
        torch.testing.assert_close(a.fan_in, b.fan_in, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a.fan_out, b.fan_out, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case, match", [
    ("width", r"input 'x': got a batch of shape \(6, 4\), the graph expects \(batch, 5\)"),
    ("count", r"the graph has 1 input\(s\) \['x'\] but the batch gives 2 tensor\(s\)"),
    ("dtype", r"input 'x' is torch.float32 but the graph's parameters are torch.float64: convert the data"),
    ("mse_targets", r"mse: targets of shape \(6, 3\) do not match the output's shape \(6, 2\)"),
    ("labels", r"cross_entropy: .*class indices in \[0, 2\)"),
    ("targets_type", r"the targets y must be a tensor, got list"),
])
def test_bad_batches_are_clear_errors_naming_the_input_and_the_fix(case, match):
    g = make_dag()
    X, Y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    loss = "mse"
    batch = {"width": (X[:, :4], Y), "count": ((X, X), Y), "dtype": (X.float(), Y),
             "mse_targets": (X, torch.randn(6, 3, dtype=torch.float64)),
             "labels": (X, torch.tensor([0, 1, 2, 0, 1, 0])), "targets_type": (X, [0] * 6)}[case]
    if case == "labels":
        loss = "cross_entropy"
    before = [p.detach().clone() for p in g.parameters()]
    with pytest.raises(dg.StatisticsError, match=match):
        dg.collect_statistics(g, [batch], loss)
    assert all(torch.equal(a, b) for a, b in zip(before, g.parameters()))


def test_training_on_a_bad_batch_fails_before_any_step():
    from daggrow.grow import Grower

    grower = Grower(make_dag(), loss="mse")
    before = [p.detach().clone() for p in grower.graph.parameters()]
    bad = (torch.randn(6, 7, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64))
    with pytest.raises(dg.StatisticsError, match=r"input 'x': got a batch of shape \(6, 7\)"):
        grower.train_epoch([bad])
    assert all(torch.equal(a, b) for a, b in zip(before, grower.graph.parameters()))
