"""Synthetic growth histories for the history tests (no growth engine involved).

The fake run grows ``x → h → y``: steps 1, 2, 4, 5 add two neurons to ``h``, steps 3 and 6 add
a new node ``n3``/``n6`` on ``x → n → y``; a training event follows every growth step.
"""

from __future__ import annotations

import daggrow as dg
from daggrow.graph.spec import GraphSpec, GrowthRecord
from daggrow.history import GrowthEvent, History


def grown_graph(step: int) -> tuple[dg.Graph, GraphSpec]:
    """The fake run's graph after ``step`` and its spec with born/growth_log filled in."""
    expansions = [s for s in range(1, step + 1) if s % 3]
    new_nodes = [s for s in range(1, step + 1) if s % 3 == 0]
    g = dg.Graph()
    g.add_input("x", 8)
    g.add_node("h", 1 + 2 * len(expansions), "relu")
    g.add_node("y", 3)
    g.add_edge("x", "h")
    g.add_edge("h", "y")
    for s in new_nodes:
        g.add_node(f"n{s}", 2, "relu")
        g.add_edge("x", f"n{s}")
        g.add_edge(f"n{s}", "y")
    g.set_output("y")
    spec = g.spec()
    born = {f"n{s}": s for s in new_nodes}
    nodes = [n.model_copy(update={"born": born.get(n.name, 0)}) for n in spec.nodes]
    edges = [e.model_copy(update={"born": born.get(e.source, born.get(e.target, 0))}) for e in spec.edges]
    log = [GrowthRecord(step=s, action="expand_node", neurons={"h": (1 + 2 * i, 3 + 2 * i)})
           for i, s in enumerate(expansions)]
    log += [GrowthRecord(step=s, action="new_node", nodes=[f"n{s}"],
                         edges=[e.name for e in edges if e.born == s]) for s in new_nodes]
    log.sort(key=lambda r: r.step)
    return g, spec.model_copy(update={"nodes": nodes, "edges": edges, "step": step, "growth_log": log})


def fake_history(steps: int = 6, note: str = "") -> tuple[History, dg.Graph]:
    """A start event, then per step a growth event and a training event; and the final graph."""
    g, spec = grown_graph(0)
    history = History([GrowthEvent(step=0, action="start", params_before=g.num_parameters(),
                                   params_after=g.num_parameters(), train_loss=1.1, val_loss=1.2,
                                   train_accuracy=0.3, val_accuracy=0.28, graph=spec, seed=0,
                                   strategy="amplitude", init="tiny", note="loss=cross_entropy")])
    for s in range(1, steps + 1):
        before = g.num_parameters()
        g, spec = grown_graph(s)
        kind, where = ("new_node", [f"n{s}"]) if s % 3 == 0 else ("expand_node", ["h"])
        history.append(GrowthEvent(
            step=s, action=kind, where=where, sources=["x"], targets=["y"] if kind == "new_node" else ["h"],
            neurons_added=2, eigenvalues=[0.5 / s, 0.1 / s], amplitude=0.5, predicted_loss_change=-0.1 / s,
            measured_loss_change=-0.08 / s, params_before=before, params_after=g.num_parameters(),
            train_loss=1.0 / s, val_loss=1.1 / s, train_accuracy=0.3 + 0.1 * s, val_accuracy=0.28 + 0.1 * s,
            wall_time=0.7 * s, duration=0.2, seed=0, strategy="amplitude", init="tiny", note=note, graph=spec))
        history.append(GrowthEvent(
            step=s, action="train", params_before=g.num_parameters(), params_after=g.num_parameters(),
            train_loss=0.9 / s, val_loss=1.0 / s, train_accuracy=0.32 + 0.1 * s, val_accuracy=0.3 + 0.1 * s,
            wall_time=0.7 * s + 0.3, duration=0.3, seed=0, strategy="amplitude", init="tiny", graph=spec))
    return history, g
