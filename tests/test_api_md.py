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


# ------------------------------------------------------------------------------- docs/api.md itself
import inspect  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

from daggrow.cli import build_parser  # noqa: E402

API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"
DOCUMENTED_CLASSES = ("Graph", "Grower", "History", "Statistics")


def test_api_md_examples_run_as_written(tmp_path, monkeypatch):
    """Every ```python block of docs/api.md, in order, in one namespace (the later build on the earlier)."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    blocks = re.findall(r"```python\n(.*?)```", API_MD.read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{API_MD}#block{i}", "exec"), namespace)
    assert (tmp_path / "runs" / "demo" / "report.html").exists()


def _parameters(obj) -> list[str]:
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def test_every_public_name_and_argument_is_in_api_md():
    text = API_MD.read_text()
    missing = []
    for name in dg.__all__:
        obj = getattr(dg, name)
        if not re.search(rf"\b{re.escape(name)}\b", text):
            missing.append(name)
        if callable(obj) and not (inspect.isclass(obj) and issubclass(obj, BaseException)):
            missing += [f"{name}({p})" for p in _parameters(obj) if not re.search(rf"\b{p}\b", text)]
    for cls in DOCUMENTED_CLASSES:
        for attr, member in vars(getattr(dg, cls)).items():
            if attr.startswith("_"):
                continue
            if not re.search(rf"\b{attr}\b", text):
                missing.append(f"{cls}.{attr}")
            function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            if callable(function):
                missing += [f"{cls}.{attr}({p})" for p in _parameters(function) if not re.search(rf"\b{p}\b", text)]
    for field in dg.GrowthEvent.model_fields:
        if f"`{field}`" not in text:
            missing.append(f"GrowthEvent.{field}")
    assert not missing, f"docs/api.md does not mention: {', '.join(missing)}"


def test_every_cli_option_is_in_api_md():
    text = API_MD.read_text()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    missing = []
    for command, sub in subparsers.items():
        if f"daggrow {command}" not in text:
            missing.append(f"daggrow {command}")
        for action in sub._actions:
            missing += [f"{command} {s}" for s in action.option_strings if s.startswith("--") and f"`{s}" not in text
                        and f"[{s}" not in text and f" {s}" not in text]
    assert not missing, f"docs/api.md does not document: {', '.join(missing)}"
