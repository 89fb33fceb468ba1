"""Statistics and a growth step on CUDA agree with the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg
from daggrow.data import load_dataset
from daggrow.grow import Grower
from daggrow.grow.runner import starting_graph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_statistics_on_cuda_match_cpu():
    torch.manual_seed(0)
    g = starting_graph(64, 10, [3])
    d = load_dataset("digits")
    batches = [(d.x_train[:500], d.y_train[:500])]
    cpu = dg.collect_statistics(g, batches, "cross_entropy")
    gpu_graph = g.copy()
    gpu_graph.compile(device="cuda")
    gpu = dg.collect_statistics(gpu_graph, batches, "cross_entropy")
    for key, t in cpu.hh.items():
        torch.testing.assert_close(gpu.hh[key].cpu(), t, rtol=1e-4, atol=1e-4)
    assert dg.bottleneck(gpu_graph, gpu).keys() == dg.bottleneck(g, cpu).keys()


def test_growth_step_and_training_on_cuda():
    torch.manual_seed(0)
    d = load_dataset("digits")
    train, val, _ = d.loaders(256)
    g = starting_graph(64, 10, [2])
    g.compile(device="cuda")
    grower = Grower(g, loss="cross_entropy")
    grower.train_epoch(train)
    event = grower.grow_step(train, next(iter(val)))
    assert event is not None
    assert all(p.device.type == "cuda" for p in grower.graph.parameters())
    grower.train_epoch(train)


def test_cnn_compile_statistics_and_growth_step_on_cuda():
    from daggrow.grow.runner import starting_cnn

    torch.manual_seed(0)
    d = load_dataset("mnist1d", n_train=600, n_test=100).as_signals()
    g = starting_cnn(1, d.spatial_shape, 10, [2, 2, 2])
    batch = (d.x_train[:300], d.y_train[:300])
    cands = dg.enumerate_candidates(g, ["expand_node"])
    cpu = dg.collect_statistics(g, [batch], "cross_entropy", candidates=cands)
    gpu_graph = g.copy()
    module = gpu_graph.compile(device="cuda")
    torch.testing.assert_close(module(batch[0].cuda()).cpu(), g.compile()(batch[0]), rtol=1e-4, atol=1e-5)
    gpu = dg.collect_statistics(gpu_graph, [batch], "cross_entropy", candidates=cands)
    for key, t in cpu.expansion.items():
        torch.testing.assert_close(gpu.expansion[key].cpu(), t, rtol=1e-3, atol=1e-4)
    grower = Grower(gpu_graph, loss="cross_entropy", kinds=["expand_node"], neurons_per_step=2)
    event = grower.grow_step([batch], held_out=(d.x_val.cuda(), d.y_val.cuda()))
    assert event is None or event.params_after > event.params_before
    assert next(grower.graph.parameters()).is_cuda


def test_whitening_on_cuda_matches_cpu():
    from daggrow.solve import whitening

    gen = torch.Generator().manual_seed(0)
    B = torch.randn(300, 20, generator=gen, dtype=torch.float64)
    B[:, 3] = 0  # a dead coordinate: Cholesky of the other 19
    S = B.T @ B / 300
    M = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    cpu, gpu = whitening(S, warn=False), whitening(S.cuda(), warn=False)
    assert cpu.method == gpu.method == "cholesky" and gpu.factor.device.type == "cuda"
    torch.testing.assert_close(gpu.solve(M.cuda()).cpu(), cpu.solve(M), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2])
def test_second_pass_sums_on_cuda_match_cpu(dim):
    """New channels over combined offsets and residual moments of conv nodes and edges, float64."""
    from ..grow.test_conv_dag import cnn, data

    g, batches = cnn(dim=dim), data(dim)
    cpu = dg.collect_statistics(g, batches, "mse")
    gpu_graph = g.copy()
    gpu_graph.compile(device="cuda")
    gpu = dg.collect_statistics(gpu_graph, [(x.cuda(), y.cuda()) for x, y in batches], "mse")
    assert cpu.hr and cpu.expansion
    for name in ("expansion", "hr", "vr"):
        for key, t in getattr(cpu, name).items():
            torch.testing.assert_close(getattr(gpu, name)[key].cpu(), t, rtol=1e-9, atol=1e-10)
    on_gpu = {p.where: p.eigenvalues for p in dg.propose(gpu_graph, gpu, max_neurons=2)}
    on_cpu = {p.where: p.eigenvalues for p in dg.propose(g, cpu, max_neurons=2)}
    assert on_gpu.keys() == on_cpu.keys()
    for where, lam in on_cpu.items():
        assert on_gpu[where] == pytest.approx(lam, rel=1e-6)
