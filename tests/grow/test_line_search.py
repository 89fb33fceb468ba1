"""The line search's evaluator against the applied graph run in full: cached upstream values,
appended neurons and reused target pre-activations give the same loss at every amplitude."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg
from daggrow.compile import eval_mode
from daggrow.grow.line_search import BatchEvaluator, ScaledChange, changed_nodes
from daggrow.grow.propose import apply, propose
from daggrow.stats import per_sample_loss

from .test_conv_growth import cnn
from .test_conv_growth import data as conv_data
from .test_conv_growth import proposals as conv_proposals
from .test_first_order import dag
from .test_first_order import data as dag_data


def full_loss(g: dg.Graph, X: torch.Tensor, Y: torch.Tensor) -> float:
    with torch.no_grad(), eval_mode(g):
        return float(per_sample_loss("mse", g.compile()(X), Y).mean())


def check_every_amplitude(g: dg.Graph, props, X, Y) -> set[str]:
    ev = BatchEvaluator(g, (X, Y), "mse")
    assert ev.base_loss == pytest.approx(full_loss(g, X, Y), rel=1e-12)
    for p in props:
        scaled = ScaledChange(g, p)
        targets = set(p.candidate.targets) - set(scaled.grown)
        for gamma in (0.3, 1.7, 4.0):
            fast = ev.loss(scaled.at(gamma), changed_nodes(p), scaled.grown, added=targets)
            assert fast == pytest.approx(full_loss(apply(g, p, gamma), X, Y), rel=1e-10), (p, gamma)
    return {p.kind for p in props}


def test_dag_expansions_new_nodes_and_new_edges():
    g = dag("tanh")
    X, Y = dag_data(n=200)
    stats = dg.collect_statistics(g, [(X, Y)], "mse")
    kinds = check_every_amplitude(g, propose(g, stats, max_neurons=2), X, Y)
    assert kinds == {"expand_node", "new_node", "new_edge"}


@pytest.mark.parametrize("dim", [1, 2])
def test_conv_channels_with_batchnorm_into_conv_and_flattening_linear_targets(dim):
    g = cnn("relu", dim, norm="batchnorm")
    X, Y = conv_data(g)
    with torch.no_grad():  # non-trivial running statistics
        g.compile().train()(X)
    props = conv_proposals(g, X, Y, max_neurons=2)
    assert {p.candidate.node for p in props} == {"c1", "c2"}  # targets c2 (conv) and y (flatten)
    check_every_amplitude(g, props, X, Y)
