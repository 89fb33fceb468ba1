"""The edges of the growable vocabulary: each case is refused with its reason under strict=True,
and without it becomes an op node computing exactly what the model computes."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import daggrow as dg

from .zoo_families import stochastic_depth

torch.fx.wrap("stochastic_depth")


class Apply(nn.Module):
    """``forward(x) = fn(self, x)`` around a few layers: one case per line."""

    def __init__(self, fn, **layers):
        super().__init__()
        self.fn = fn
        for name, layer in layers.items():
            self.add_module(name, layer)

    def forward(self, x):
        return self.fn(self, x)


V, SEQ, TOK = torch.randn(3, 4), torch.randn(3, 4, 6), torch.randn(3, 5, 4)

CASES = {
    "alpha from a shape": (Apply(lambda m, x: torch.add(x, x, alpha=x.shape[1])), V, r"alpha="),
    "rounded division": (Apply(lambda m, x: torch.div(x, 2, rounding_mode="floor")), V, r"rounding_mode='floor'"),
    "number over a tensor": (Apply(lambda m, x: 2 / (x.abs() + 1)), V, r"of a number by a tensor"),
    "division by zero": (Apply(lambda m, x: torch.div(x, 0)), V, r"by zero"),
    "product by a string": (Apply(lambda m, x: torch.mul(x, x.shape[1])), V, r"by a value computed while tracing"),
    "computed dropout flag": (Apply(lambda m, x: F.dropout(x, 0.1, training=x.shape[0] > 100)), V,
                              r"training` flag computed while tracing"),
    "stochastic depth mode": (Apply(lambda m, x: stochastic_depth(x, 0.1, "col", False)), V, r"mode='col'"),
    "stochastic depth flag": (Apply(lambda m, x: stochastic_depth(x, 0.1, "row", x.shape[0] > 100)), V,
                              r"stochastic_depth with a `training` flag computed while tracing"),
    "slope from a shape": (Apply(lambda m, x: F.leaky_relu(x, x.shape[1] / 100)), V, r"not a number fixed"),
    "tanh gelu module": (Apply(lambda m, x: m.g(x), g=nn.GELU("tanh")), V, r"approximate='tanh'"),
    "tanh gelu function": (Apply(lambda m, x: F.gelu(x, approximate="tanh")), V, r"approximate='tanh'"),
    "softplus module": (Apply(lambda m, x: m.s(x), s=nn.Softplus(beta=2)), V, r"Softplus\(beta=2"),
    "concatenation along tokens": (Apply(lambda m, x: m.fc(torch.cat([x, x], 1)), fc=nn.Linear(4, 2)), TOK,
                                   r"along dim=1 of tensors"),
    "concatenation with a shape": (Apply(lambda m, x: torch.cat([x, x], x.dim() - 1)), V, r"along dim="),
    "mean with a dtype": (Apply(lambda m, x: torch.mean(x, (2,), dtype=torch.float64).float()), SEQ,
                          r"mean over dim"),
    "layer norm without bias": (Apply(lambda m, x: m.ln(x), ln=nn.LayerNorm(4, bias=False)), V,
                                r"LayerNorm\(4,\) \(bias=False\)"),
    "batch norm on tokens": (Apply(lambda m, x: m.bn(m.fc(x)), fc=nn.Linear(4, 5), bn=nn.BatchNorm1d(5)), TOK,
                             r"also reads as channels"),                   # the Linear gives way to the BatchNorm
    "linear and conv on one tensor": (Apply(lambda m, x: m.fc(x) + m.c(x), fc=nn.Linear(6, 6), c=nn.Conv1d(4, 4, 1)),
                                      SEQ, r"also reads as channels"),
    "pooling of tokens": (Apply(lambda m, x: F.max_pool1d(m.fc(x), 2), fc=nn.Linear(4, 4)), TOK,
                          r"also reads as channels"),
    "flatten of tokens": (Apply(lambda m, x: m.out(torch.flatten(m.fc(x), 1)), fc=nn.Linear(4, 2),
                                out=nn.Linear(10, 2)), TOK, r"changes the shape"),
    "an in-place method": (Apply(lambda m, x: m.fc((x + x).mul_(2.0)), fc=nn.Linear(4, 2)), V,
                           r"\.mul_\(\) \(call_method mul_\), which works in place"),
    "activation of a 5-d input": (Apply(lambda m, x: torch.relu(x)), torch.randn(3, 2, 2, 2, 2),
                                   r"input `x` of shape \(3, 2, 2, 2, 2\)"),
    "a tuple leaf called twice": (Apply(lambda m, x: m.gru(x)[0] + m.gru(x)[0], gru=nn.GRU(4, 4, batch_first=True)),
                                  TOK, r"returns several tensors"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_strict_names_the_reason(case):
    model, x, pattern = CASES[case]
    with pytest.raises(dg.TraceError) as info:
        dg.trace(model, x, strict=True)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert "input" in case or re.search(r"test_vocabulary_edges\.py:\d+", str(info.value))


@pytest.mark.parametrize("case", list(CASES))
def test_without_strict_the_case_is_exact(case):
    model, x, _ = CASES[case]
    with pytest.warns(dg.OpaqueOpWarning):
        graph = dg.trace(model.eval(), x)
    with torch.no_grad():
        torch.testing.assert_close(graph.compile().eval()(x), model(x), rtol=0, atol=1e-6)


def test_item_assignment_is_what_torch_fx_cannot_trace():
    def fn(m, x):
        h = m.fc(x)
        h[:, 0] = 0.0
        return h

    model = Apply(fn, fc=nn.Linear(4, 4))
    for strict in (False, True):
        with pytest.raises(dg.TraceError, match=r"item assignment, raised at .*test_vocabulary_edges\.py:\d+: "
                                                r"`h\[:, 0\] = 0\.0`.*\n  fix: "):
            dg.trace(model, V, strict=strict)


def test_an_in_place_method_on_a_fresh_tensor_is_written_out_of_place():
    def fn(m, x):
        noise = torch.ones_like(x).mul_(2.0)
        return m.fc(x * noise)

    model = Apply(fn, fc=nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.OpaqueOpWarning)
        graph = dg.trace(model, V)
    code = graph.compile().code
    assert ".mul(2.0)" in code and ".mul_(" not in code
    with torch.no_grad():
        torch.testing.assert_close(graph.compile()(V), model(V))
