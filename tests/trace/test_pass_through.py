"""Ops the tracer passes through (``.contiguous()``, eval-mode dropout) inside op-node programs.

Found on real models (torchvision ``shufflenet_v2_x1_0``'s channel shuffle, timm ``mixer_s16_224``'s
``Dropout(0.)`` between transposes): the op program referred to the passed-through fx node and
tracing failed with a raw ``KeyError``. These plain-PyTorch models reproduce both patterns.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import daggrow as dg


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()     # a view after this transpose needs the copy
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(c // 2, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)


class ShuffleNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.units = nn.Sequential(ShuffleUnit(8), ShuffleUnit(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.units(self.stem(x)).mean([2, 3]))


class TokenMlp(nn.Module):
    """timm's Mlp: fc1 → GELU → Dropout → fc2 → Dropout."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.0)
        self.fc2, self.drop2 = nn.Linear(hidden, d), nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MixerWithDropout(nn.Module):
    def __init__(self, tokens: int = 16, d: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, d, 2, stride=2)
        self.norm1, self.mlp_tokens = nn.LayerNorm(d), TokenMlp(tokens, 6)
        self.head = nn.Linear(d, 4)

    def forward(self, img):
        x = self.stem(img).flatten(2).transpose(1, 2)
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return self.head(x.mean(dim=1))


@pytest.mark.parametrize("model_type", [ShuffleNetLike, MixerWithDropout])
def test_traces_computes_the_same_and_round_trips(model_type, tmp_path):
    torch.manual_seed(0)
    model = model_type().eval()
    x = torch.randn(3, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.OpaqueOpWarning)
        graph = dg.trace(model, x)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(graph.compile().eval()(x), expected, rtol=0, atol=1e-6)
    graph.save(tmp_path / "g")
    loaded = dg.Graph.load(tmp_path / "g")
    with torch.no_grad():
        torch.testing.assert_close(loaded.compile().eval()(x), expected, rtol=0, atol=1e-6)
