"""A model on the meta device (shapes, no values) is refused by trace with a clear error."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_model_on_the_meta_device_is_refused():
    with torch.device("meta"):
        model = _MLP()
    with pytest.raises(dg.TraceError, match=r"(?s)_MLP: its tensors \['a.weight', 'a.bias', 'b.weight'\] are on the meta "
                                            r"device.*to_empty"):
        dg.trace(model, torch.randn(2, 4))


def test_meta_example_inputs_are_refused():
    with pytest.raises(dg.TraceError, match="the example inputs are on the meta device"):
        dg.trace(_MLP(), torch.empty(2, 4, device="meta"))


def test_a_materialised_model_traces():
    with torch.device("meta"):
        model = _MLP()
    model.to_empty(device="cpu")
    for p in model.parameters():
        torch.nn.init.normal_(p)
    g = dg.trace(model, torch.randn(2, 4))
    x = torch.randn(5, 4)
    torch.testing.assert_close(g.compile()(x), model(x))
