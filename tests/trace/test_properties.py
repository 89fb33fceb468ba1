"""Random DAG programs: whatever the wiring, the traced graph computes the model's function.

Programs chain Linear layers (from the input or any earlier value), activations in every
spelling, sums, scaled differences, norms and dropouts over a pool of values, reading values
several times and leaving some unread, with one or several outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import daggrow as dg

WIDTH = 4
ACTIVATIONS = [torch.relu, torch.tanh, F.gelu, F.silu, lambda h: F.leaky_relu(h, 0.2), lambda h: h.sigmoid(),
               nn.ELU(0.5), nn.SELU(), nn.Softplus(), nn.Identity()]


class Program(nn.Module):
    """Runs a list of steps over a growing pool of values; the pool starts with ``x``."""

    def __init__(self, steps, outputs):
        super().__init__()
        self.steps, self.outputs = steps, outputs
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for step in steps:
            if step[0] == "linear":
                self.linears.append(nn.Linear(3 if step[1] == 0 else WIDTH, WIDTH, bias=step[2]))
            if step[0] == "norm":
                self.norms.append(nn.BatchNorm1d(WIDTH) if step[2] == "batchnorm" else nn.LayerNorm(WIDTH))
        self.acts = nn.ModuleList([a for a in ACTIVATIONS if isinstance(a, nn.Module)])
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        pool, linear, norm = [x], 0, 0
        for step in self.steps:
            kind, i = step[0], step[1]
            if kind == "linear":
                pool.append(self.linears[linear](pool[i]))
                linear += 1
            elif kind == "act":
                act = ACTIVATIONS[step[2]]
                pool.append(act(pool[i]))
            elif kind == "add":
                pool.append(pool[i] + pool[step[2]])
            elif kind == "sub":
                pool.append(pool[i] - step[3] * pool[step[2]])
            elif kind == "norm":
                pool.append(self.norms[norm](pool[i]))
                norm += 1
            elif kind == "dropout":
                pool.append(self.drop(pool[i]))
        outs = tuple(pool[i] for i in self.outputs)
        return outs[0] if len(outs) == 1 else outs


@st.composite
def programs(draw):
    steps = [("linear", 0, True)]
    for _ in range(draw(st.integers(1, 9))):
        n = len(steps) + 1  # values in the pool; index 0 is x (width 3), the rest have WIDTH
        i = draw(st.integers(1, n - 1))
        kind = draw(st.sampled_from(["linear", "linear", "act", "act", "add", "sub", "norm", "dropout"]))
        if kind == "linear":
            steps.append(("linear", draw(st.integers(0, n - 1)), draw(st.booleans())))
        elif kind == "act":
            steps.append(("act", i, draw(st.integers(0, len(ACTIVATIONS) - 1))))
        elif kind in ("add", "sub"):
            steps.append((kind, i, draw(st.integers(1, n - 1)), draw(st.sampled_from([1.0, 0.5, -2.0]))))
        elif kind == "norm":
            steps.append(("norm", i, draw(st.sampled_from(["batchnorm", "layernorm"]))))
        else:
            steps.append(("dropout", i))
    n = len(steps) + 1
    outputs = draw(st.lists(st.integers(1, n - 1), min_size=1, max_size=3))
    return steps, [n - 1, *outputs[1:]]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.integers(0, 2**16))
def test_random_programs_trace_to_the_same_function(program, seed):
    torch.manual_seed(seed)
    model = Program(*program).double().eval()
    for m in model.norms:
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    x = torch.randn(5, 3, dtype=torch.float64)
    graph = dg.trace(model, x)
    with torch.no_grad():
        got, want = graph.compile().eval()(x), model(x)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    # normal form: no node is a plain copy of another (one identity in-edge of scale 1, nothing else)
    for name, spec in graph.nodes.items():
        ins = graph.in_edges(name)
        plain = (len(ins) == 1 and ins[0].block.kind == "identity" and ins[0].block.scale == 1.0
                 and spec.activation == "identity" and spec.norm is None and spec.dropout == 0)
        assert not plain or name in graph.outputs, f"useless node {name}:\n{graph}"
