"""The examples of docs/api.md, run as written (loaders supplied, paths in a tmp dir)."""

from __future__ import annotations

import torch
import torch.nn as nn

import daggrow as dg


def test_api_md_sections_work_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)

    # 1. Trace any plain PyTorch model into the graph IR
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(40, 8); self.b = nn.Linear(8, 8); self.c = nn.Linear(8, 10)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(torch.relu(self.b(h)) + h)
    g = dg.trace(Net(), example_inputs=torch.randn(4, 40))
    assert isinstance(g, dg.Graph) and "Graph" in repr(g)
    g.nodes, g.edges, g.num_parameters()

    # 2. Build a DAG programmatically
    g = dg.Graph()
    g.add_input("x", width=40)
    g.add_node("h", width=2, activation="relu")
    g.add_node("y", width=10)
    g.add_edge("x", "h"); g.add_edge("h", "y"); g.add_edge("x", "y")
    g.set_output("y")

    # 3. Compile, save, load, draw
    m = g.compile()
    assert isinstance(m, torch.fx.GraphModule)
    y = m(torch.randn(4, 40))
    g.save("net.dg"); g2 = dg.Graph.load("net.dg")
    assert torch.equal(g2.compile()(torch.ones(2, 40)), m(torch.ones(2, 40)))
    assert g.to_dot().startswith("digraph")

    # 4. Look at the bottleneck
    X = torch.randn(300, 40)
    Y = torch.randn(300, 10) + X[:, :10].tanh()
    loader = [(X[i:i + 100], Y[i:i + 100]) for i in range(0, 300, 100)]
    stats = dg.collect_statistics(g, loader, loss="mse")
    for node, psi in dg.bottleneck(g, stats).items():
        assert isinstance(psi, float) and psi >= 0
    proposals = dg.propose(g, stats, max_neurons=4)
    p = proposals[0]
    assert p.kind in ("expand_node", "new_node", "new_edge")
    p.sources, p.targets, p.eigenvalues, p.first_order_gain
    g_new = dg.apply(g, p, amplitude=0.5)
    assert g_new is not g and g.num_parameters() == 522
    assert torch.allclose(dg.apply(g, p, amplitude=0.0).compile()(X), m(X), atol=1e-6)

    # 5. Grow
    labels = torch.randint(0, 10, (300,))
    train_loader = [(X[i:i + 100], labels[i:i + 100]) for i in range(0, 200, 100)]
    val_loader = [(X[200:], labels[200:])]
    grower = dg.Grower(g, loss="cross_entropy", strategy="amplitude", init="tiny")
    event = grower.grow_step(train_loader)
    assert event is None or isinstance(event, dg.GrowthEvent)
    grower.fit(train_loader, val_loader, growth_steps=3, epochs_between=1)
    grower.history.save("runs/demo")
    assert (tmp_path / "runs" / "demo" / "history.json").exists()
    assert (tmp_path / "runs" / "demo" / "report.html").exists()
    assert list((tmp_path / "runs" / "demo").glob("step_*.dot"))
