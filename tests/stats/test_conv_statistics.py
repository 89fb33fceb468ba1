"""Conv statistics (docs/math.md §10) against float64 brute force: explicit loops over samples,
positions and kernel offsets; lstsq on explicit unfolded patches; streaming vs one shot."""

from __future__ import annotations

import itertools

import pytest
import torch

import daggrow as dg
from daggrow.grow.candidates import enumerate_candidates, statistics_plan
from daggrow.grow.propose import node_update, propose
from daggrow.stats import collect_statistics
from daggrow.stats.plan import full_kernel
from daggrow.stats.views import View, block_view, edge_view

from ..graphs import conv_dag

F64 = torch.float64


def data(g: dg.Graph, n: int = 23, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = g.node("x")
    X = torch.randn(n, x.width, *x.shape, generator=gen, dtype=F64) + 0.3
    Y = torch.randn(n, g.node("y").width, generator=gen, dtype=F64)
    return X, Y


def values_and_moves(g: dg.Graph, X: torch.Tensor, Y: torch.Tensor):
    """Every node's value and desired move −∂ℓ_i/∂z_v (per-sample squared error summed over outputs)."""
    module = g.compile(taps=True)
    pre, vals = {}, {}

    def hook(tap):
        def fn(_m, _i, out):
            if tap.kind == "pre":
                pre[tap.node] = out
                return out
            vals[tap.node] = out.detach()
        return fn

    for attr in module.daggrow_tap_attrs.values():
        tap = module.get_submodule(attr)
        tap.register_forward_hook(hook(tap))
    out = module(X)
    names = list(pre)
    grads = torch.autograd.grad(((out - Y) ** 2).sum(), [pre[k] for k in names])
    return vals, {k: -gr for k, gr in zip(names, grads)}


def explicit_patches(h: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """(n, P, C·Πk) by explicit loops over output positions and kernel offsets, zero outside."""
    n, c, *shape = h.shape
    out = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in zip(shape, kernel, stride, padding, dilation)]
    rows = []
    for pos in itertools.product(*[range(o) for o in out]):
        patch = torch.zeros(n, c, *kernel, dtype=h.dtype)
        for off in itertools.product(*[range(k) for k in kernel]):
            q = [st * p + d * o - pad for p, o, st, d, pad in zip(pos, off, stride, dilation, padding)]
            if all(0 <= qi < si for qi, si in zip(q, shape)):
                patch[(slice(None), slice(None), *off)] = h[(slice(None), slice(None), *q)]
        rows.append(patch.reshape(n, -1))
    return torch.stack(rows, 1)


@pytest.mark.parametrize("dim,kernel,stride,padding,dilation", [
    (1, (3,), (2,), (1,), (1,)), (1, (2,), (1,), (2,), (2,)), (2, (3, 2), (2, 1), (1, 0), (1, 1)),
    (2, (3, 3), (1, 2), (2, 1), (2, 1))])
def test_patch_rows_equal_explicit_loops(dim, kernel, stride, padding, dilation):
    h = torch.randn(3, 2, *((7,) if dim == 1 else (6, 5)), dtype=F64)
    view = View("u", "patches", dim, kernel, stride, padding, dilation)
    ref = explicit_patches(h, kernel, stride, padding, dilation)
    assert torch.equal(view.rows(h), ref.reshape(-1, ref.shape[-1]))
    # and the rows are what the conv computes: conv(h) = W · patch
    conv = (torch.nn.Conv1d if dim == 1 else torch.nn.Conv2d)(2, 4, kernel, stride, padding, dilation).double()
    z = conv(h).flatten(2).transpose(1, 2)
    assert torch.allclose(z, ref @ conv.weight.reshape(4, -1).T + conv.bias, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2])
def test_best_update_over_conv_in_edges_equals_lstsq(dim):
    g = conv_dag(dim=dim)
    X, Y = data(g)
    vals, moves = values_and_moves(g, X, Y)
    stats = collect_statistics(g, [(X, Y)], "mse")
    for node, in_edges in (("a", ["x_to_a"]), ("c", ["x_to_c", "a_to_c"])):
        blocks = []
        for e in in_edges:
            spec = g.edge(e).block
            blocks.append(explicit_patches(vals[g.edge(e).source], spec.kernel_size, spec.stride, spec.padding,
                                           spec.dilation))
        B = torch.cat(blocks + [torch.ones(*blocks[0].shape[:2], 1, dtype=F64)], 2).reshape(-1, sum(
            b.shape[-1] for b in blocks) + 1)
        V = moves[node].flatten(2).transpose(1, 2).reshape(B.shape[0], -1)
        ref = torch.linalg.lstsq(B, V).solution.T
        upd = node_update(g, stats, node)
        assert torch.allclose(upd.solution.delta, ref, atol=1e-9)
        psi = float(((V - B @ ref.T) ** 2).sum()) / X.shape[0]   # summed over positions, mean over samples
        assert upd.solution.bottleneck == pytest.approx(psi, rel=1e-9)
        # the split per edge has each conv's weight size
        for e in in_edges:
            assert upd.edges[e][0].numel() == g.module(e).weight.numel()


def shifted(b: torch.Tensor, shape, view: View, out_shape):
    """φ(i, p, o) = b(i, s·p + d·o − pad), zero outside (an explicit loop): (n, P, O, D)."""
    n, D = b.shape[0], b.shape[1]
    rows = []
    for pos in itertools.product(*[range(o) for o in out_shape]):
        per = []
        for off in itertools.product(*[range(k) for k in view.kernel]):
            q = [st * p + d * o - pad for p, o, st, d, pad in zip(pos, off, view.stride, view.dilation, view.padding)]
            inside = all(0 <= qi < si for qi, si in zip(q, shape))
            per.append(b[(slice(None), slice(None), *q)] if inside else torch.zeros(n, D, dtype=F64))
        rows.append(torch.stack(per, 1))
    return torch.stack(rows, 1)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("out,psi", [("conv", True), ("conv3", True), ("conv3", False), ("flatten", True)])
def test_new_channel_sums_equal_explicit_shifted_patches(dim, out, psi):
    """S (c_max·Σ b bᵀ of the first pass less its border part), M and N against explicit loops;
    ``psi=False``: without δW* at c itself, the plan still sums what S is read off."""
    g = conv_dag(dim=dim)
    if out.startswith("conv"):  # a conv node between c and y, so c's out-edge is a conv
        block = dg.ConvBlock(dim=dim, kernel_size=2, stride=2, padding=1 if dim == 1 else 0)
        if out == "conv3":  # the common case: border positions are read by fewer offsets
            block = dg.ConvBlock(dim=dim, kernel_size=3, padding=1)
        g.add_node("d", 2, "tanh", shape=block.output_shape(g.node("c").shape))
        g.add_edge("c", "d", block)
        g.remove_edge("c_to_y")
        g.add_edge("d", "y")
        for p in g.parameters():
            p.data = p.data.to(F64)
    X, Y = data(g)
    vals, moves = values_and_moves(g, X, Y)
    (edge,) = [e.name for e in g.out_edges("c")]
    fk = full_kernel(g, "c", edge)
    plan = dg.stats.plan_for(g, full_kernels=[fk], bottleneck_nodes=None if psi else [])
    assert ("c" in plan.grads) == psi
    stats = collect_statistics(g, [(X, Y)], "mse", plan=plan)
    S, M, N = stats.full_kernel_moments(fk.key)
    n = X.shape[0]
    # b(q): the fan-in view of new channels at c's positions, constant channel last
    parts = [edge_view(g, g.edge(e)).signal(vals[g.edge(e).source]) for e in ("x_to_c", "a_to_c")]
    shape = g.node("c").shape
    parts = [p.reshape(n, p.shape[1], *shape) for p in parts]
    b = torch.cat(parts + [torch.ones(n, 1, *shape, dtype=F64)], 1)
    target = fk.target
    out_shape = g.node(target).shape or (1,) * dim
    phi = shifted(b, shape, fk.out_view, out_shape)                      # n × P × O × D
    v = moves[target].reshape(n, moves[target].shape[1], -1).transpose(1, 2)  # n × P × C_v
    S_ref = torch.einsum("ipod,ipoe->de", phi, phi) / n
    M_ref = torch.einsum("ipod,ipc->cdo", phi, v) / n
    t_parts = []
    for e in g.in_edges(target):  # the target's own in-views: explicit patches, or flattened values
        h = vals[e.source]
        if isinstance(e.block, dg.ConvBlock):
            t_parts.append(explicit_patches(h, e.block.kernel_size, e.block.stride, e.block.padding, e.block.dilation))
        else:
            t_parts.append(h.flatten(1)[:, None, :])
    t_rows = torch.cat(t_parts + [torch.ones(n, phi.shape[1], 1, dtype=F64)], 2)  # n × P × (D_T + 1)
    if not any(e.block.bias for e in g.in_edges(target)):
        t_rows = t_rows[..., :-1]
    # the target's best update by least squares over (sample, position) rows, then the sums
    # N = M − P δW*ᵀ with P the in-views against the shifted b (what the pass never forms)
    delta = torch.linalg.lstsq(t_rows.reshape(-1, t_rows.shape[-1]), v.reshape(-1, v.shape[-1])).solution.T
    P_ref = torch.einsum("ipod,ipj->jdo", phi, t_rows) / n
    N_ref = M_ref - torch.einsum("jdo,cj->cdo", P_ref, delta)
    assert torch.allclose(S, S_ref, atol=1e-10)
    assert torch.allclose(M.flatten(2), M_ref, atol=1e-10)
    assert torch.allclose(stats.updates[(target, 1e-10)].delta, delta, atol=1e-9)
    assert torch.allclose(N.flatten(2), N_ref, atol=1e-10)
    # and directly: N is the shifted b against the move after the best update, v − δW* b_in
    v_perp = v - t_rows @ delta.T
    assert torch.allclose(N.flatten(2), torch.einsum("ipod,ipc->cdo", phi, v_perp) / n, atol=1e-10)
    assert not torch.allclose(N, M, atol=1e-6)  # the projection is not trivial here


@pytest.mark.parametrize("act", ["identity", "tanh", "relu"])
def test_channel_proposal_attains_sum_lambda_squared_of_its_objective(act):
    """TINY's full-kernel objective G(X) = tr(XᵀSX) − 2 tr(XᵀN) over rank-K X (offsets as extra
    observations) reaches −Σλ² at the proposal, and no other rank-K X does better."""
    g = conv_dag(act=act)
    X, Y = data(g, n=40)
    cands = [c for c in enumerate_candidates(g, ["expand_node"]) if c.node == "c"]
    stats = collect_statistics(g, [(X, Y)], "mse", plan=statistics_plan(g, cands))
    memo: dict = {}
    from daggrow.grow.problems import channel_problem

    S, _, _, N = channel_problem(g, stats, cands[0], lambda v: node_update(g, stats, v), True, 1e-10, memo)
    (p,) = propose(g, stats, max_neurons=2, candidates=cands, rel_threshold=0.0)
    Xsol = p.fan_in @ p.fan_out.T

    def objective(Z):
        return float(torch.trace(Z.T @ S @ Z) - 2 * torch.trace(Z.T @ N))

    lam2 = sum(x ** 2 for x in p.eigenvalues)
    assert objective(Xsol) == pytest.approx(-lam2, rel=1e-8)
    assert p.bottleneck_decrease == pytest.approx(lam2, rel=1e-10)
    gen = torch.Generator().manual_seed(3)
    for scale in (1e-3, 1e-1, 1.0):
        A = torch.randn(*p.fan_in.shape, generator=gen, dtype=F64)
        W = torch.randn(*p.fan_out.shape, generator=gen, dtype=F64)
        assert objective(Xsol + scale * (A @ p.fan_out.T + p.fan_in @ W.T)) >= objective(Xsol) - 1e-12
        assert objective(A @ W.T * scale) >= objective(Xsol)


def test_conv_statistics_stream_equal_one_shot():
    g = conv_dag()
    X, Y = data(g, n=31)
    cands = enumerate_candidates(g, ["expand_node"])
    plan = statistics_plan(g, cands)
    one = collect_statistics(g, [(X, Y)], "mse", plan=plan)
    cuts = [0, 3, 4, 11, 12, 20, 29, 31]
    batches = [(X[a:b], Y[a:b]) for a, b in zip(cuts, cuts[1:])]
    many = collect_statistics(g, batches, "mse", plan=plan)
    assert many.n == one.n
    for name in ("h", "hh", "v", "vv", "hv", "expansion"):
        for k, t in getattr(one, name).items():
            assert torch.allclose(getattr(many, name)[k], t, atol=1e-10), (name, k)
    # N is projected with the δW* of its own pass: the sums of two passes do not add
    with pytest.raises(dg.StatisticsError, match="new-channel sums do not add"):
        collect_statistics(g, batches[:3], "mse", plan=plan) + collect_statistics(g, batches[3:], "mse", plan=plan)


def test_conv_statistics_chunked_equal_unchunked(monkeypatch):
    from daggrow.stats import collect as collect_module
    from daggrow.stats import residual as residual_module

    g = conv_dag()
    X, Y = data(g, n=17)
    plan = statistics_plan(g, enumerate_candidates(g))
    assert plan.full_kernels and plan.residual_pairs
    whole = collect_statistics(g, [(X, Y)], "mse", plan=plan)
    for module in (collect_module, residual_module):  # both passes: a few samples per chunk
        monkeypatch.setattr(module, "ROWS_PER_CHUNK", 200)
    chunked = collect_statistics(g, [(X, Y)], "mse", plan=plan)
    for name in ("hh", "hv", "expansion", "hr", "vr"):
        for k, t in getattr(whole, name).items():
            assert torch.allclose(getattr(chunked, name)[k], t, atol=1e-10)


def test_new_channel_sums_need_a_loader_that_can_be_read_twice():
    g = conv_dag()
    X, Y = data(g)
    plan = statistics_plan(g, enumerate_candidates(g, ["expand_node"]))
    assert plan.full_kernels
    with pytest.raises(dg.StatisticsError, match="re-iterable loader"):
        collect_statistics(g, iter([(X, Y)]), "mse", plan=plan)

    class Shrinking:
        """Yields fewer samples the second time it is read."""

        def __init__(self) -> None:
            self.reads = 0

        def __iter__(self):
            self.reads += 1
            return iter([(X, Y)] if self.reads == 1 else [(X[:5], Y[:5])])

    with pytest.raises(dg.StatisticsError, match="saw 5 samples, the first 23"):
        collect_statistics(g, Shrinking(), "mse", plan=plan)

    class Reshuffled:
        """Shuffles anew at each read: the same samples every time (fine) ..."""

        def __init__(self, first: int | None = None) -> None:
            self.reads, self.first = 0, first

        def __iter__(self):
            self.reads += 1
            order = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(self.reads))
            batches = [(X[order[i: i + 5]], Y[order[i: i + 5]]) for i in range(0, X.shape[0], 5)]
            return iter(batches[: self.first] if self.first else batches)

    one = collect_statistics(g, [(X, Y)], "mse", plan=plan)
    shuffled = collect_statistics(g, Reshuffled(), "mse", plan=plan)
    for key, t in one.expansion.items():
        assert torch.allclose(shuffled.expansion[key], t, atol=1e-10)
    # ... but the first batches of two shuffles are other samples, of the same number
    with pytest.raises(dg.StatisticsError, match="saw other samples than the first"):
        collect_statistics(g, Reshuffled(first=2), "mse", plan=plan)
    # without new-channel sums one pass is enough: an iterator is fine
    assert collect_statistics(g, iter([(X, Y)]), "mse", plan=dg.stats.plan_for(g)).n == X.shape[0]


def test_channel_sums_are_read_with_the_best_update_they_were_projected_with():
    g = conv_dag(dim=2)
    X, Y = data(g, n=30)
    cands = [c for c in enumerate_candidates(g, ["expand_node"]) if g.node(c.node).spatial]
    stats = collect_statistics(g, [(X, Y)], "mse", plan=statistics_plan(g, cands))
    with pytest.warns(dg.errors.CandidateSkippedWarning):
        other = propose(g, stats, max_neurons=2, candidates=cands, rel_tol=1e-6)
    assert not other and len(other.skipped) == len(cands)
    assert all("solved at rel_tol=[1e-10]; propose with that rel_tol" in why for _, why in other.skipped)
    kept = propose(g, stats, max_neurons=2, candidates=cands, rel_threshold=0.0)
    assert kept and not kept.skipped
    # moved statistics keep the δW* the sums were projected with
    moved = propose(g, stats.to("cpu"), max_neurons=2, candidates=cands, rel_threshold=0.0)
    assert [p.eigenvalues for p in moved] == [p.eigenvalues for p in kept]
    for p in kept:
        for v, upd in p.updates.items():
            assert upd.solution is stats.updates[(v, 1e-10)]


@pytest.mark.parametrize("dim", [1, 2])
def test_residual_moments_of_conv_candidates_equal_m_minus_p_delta(dim):
    """A new conv node or edge u → v into an image node: N = (1/n) B_u V⊥ᵀ summed in the second
    pass equals M − P δW*ᵀ built from explicit patches (δW* by lstsq), and its constant row is
    Σ v⊥; P itself is not collected."""
    from ..grow.test_conv_dag import cnn
    from ..grow.test_conv_dag import data as cnn_data

    g = cnn(dim=dim)
    (X, Y), rest = cnn_data(dim)[0], cnn_data(dim)[1]
    X, Y = torch.cat([X, rest[0]]), torch.cat([Y, rest[1]])
    cands = [c for c in enumerate_candidates(g, ["new_node", "new_edge"]) if c.block is not None]
    stats = collect_statistics(g, [(X, Y)], "mse", plan=statistics_plan(g, cands))
    vals, moves = values_and_moves(g, X, Y)
    n = X.shape[0]
    checked = 0
    for c in cands:
        u, v = c.sources[0], c.targets[0]
        key = block_view(u, c.block).key
        b_u = explicit_patches(vals[u], c.block.kernel_size, c.block.stride, c.block.padding, c.block.dilation)
        b_u = torch.cat([b_u, torch.ones(*b_u.shape[:2], 1, dtype=F64)], 2)  # n × P × (D_u + 1)
        in_rows = []
        for e in g.in_edges(v):
            spec = e.block
            in_rows.append(explicit_patches(vals[e.source], spec.kernel_size, spec.stride, spec.padding, spec.dilation))
        b_in = torch.cat(in_rows + [torch.ones(n, in_rows[0].shape[1], 1, dtype=F64)], 2)
        V = moves[v].flatten(2).transpose(1, 2)                                   # n × P × C_v
        delta = torch.linalg.lstsq(b_in.reshape(-1, b_in.shape[-1]), V.reshape(-1, V.shape[-1])).solution.T
        M_ref = torch.einsum("ipd,ipc->dc", b_u, V) / n
        P_ref = torch.einsum("ipd,ipj->dj", b_u, b_in) / n
        N_ref = M_ref - P_ref @ delta.T
        assert torch.allclose(stats.residual_moment([key], [v]), N_ref, atol=1e-10)
        assert torch.allclose(stats.grad_moment([key], [v]), M_ref, atol=1e-10)
        assert not torch.allclose(N_ref, M_ref, atol=1e-6)
        # the candidate's own plan sums N directly and never pairs its source with v's in-views
        own = statistics_plan(g, [c])
        assert (key, v) in own.residual_pairs
        assert not any({key, w} <= set(pair) for pair in own.value_pairs for w in dg.stats.update_sources(g, v)
                       if w != key)
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("k1,stride,k2,size", [(3, 1, 3, 6), (3, 2, 3, 9), (5, 1, 3, 7), (3, 2, 5, 8), (1, 1, 3, 5)])
def test_new_channel_sums_over_combined_offsets_equal_the_unfolded_ones(monkeypatch, dim, k1, stride, k2, size):
    """One conv in-view and a same-size out-conv (a ResNet block's inner node): M and N summed
    over the combined offsets s·o2 + o1 with border corrections equal the sums over the
    unfolded input (themselves checked against explicit loops above), in float64."""
    from daggrow.stats import channels

    torch.manual_seed(0)
    shape = (size,) * dim
    g = dg.Graph()
    g.add_input("x", 2, shape=shape)
    first = dg.ConvBlock(dim=dim, kernel_size=k1, stride=stride, padding=k1 // 2)
    g.add_node("a", 3, "tanh", shape=first.output_shape(shape))
    g.add_node("b", 2, "relu", shape=first.output_shape(shape))
    g.add_node("y", 3)
    g.add_edge("x", "a", first)
    g.add_edge("a", "b", dg.ConvBlock(dim=dim, kernel_size=k2, padding=k2 // 2))
    g.add_edge("b", "y")
    g.set_output("y")
    for p in g.parameters():
        p.data = p.data.to(F64)
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(13, 2, *shape, generator=gen, dtype=F64)
    Y = torch.randn(13, 3, generator=gen, dtype=F64)
    fk = full_kernel(g, "a", "a_to_b")
    plan = dg.stats.plan_for(g, full_kernels=[fk])
    assert channels._combined_geometry(g, fk, plan.views) is not None
    combined = collect_statistics(g, [(X[:6], Y[:6]), (X[6:], Y[6:])], "mse", plan=plan)
    monkeypatch.setattr(channels, "_combined_geometry", lambda *a: None)
    unfolded = collect_statistics(g, [(X[:6], Y[:6]), (X[6:], Y[6:])], "mse", plan=plan)
    for part, a, b in zip("SMN", combined.full_kernel_moments(fk.key), unfolded.full_kernel_moments(fk.key)):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10), part


def test_combined_offsets_apply_only_where_the_sums_depend_on_s_o2_plus_o1():
    from daggrow.stats import channels

    g = conv_dag(dim=2)  # c reads two in-views: not one conv
    (edge,) = [e.name for e in g.out_edges("c")]
    fk = full_kernel(g, "c", edge)
    assert channels._combined_geometry(g, fk, dg.stats.plan_for(g, full_kernels=[fk]).views) is None
    g = conv_dag(dim=2)
    (edge,) = [e.name for e in g.out_edges("a")]
    fk = full_kernel(g, "a", "a_to_c")  # a stride-2 out-edge: the target is half the size
    assert channels._combined_geometry(g, fk, dg.stats.plan_for(g, full_kernels=[fk]).views) is None
