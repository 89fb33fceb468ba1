"""Small plain-PyTorch models in the style of the torchvision/timm families that used to stop the
tracer (issue #10): each is written here, not imported (torchvision is not a dependency).

``FAMILIES``: name → (factory, input shape without the batch). Batches of 3 and 5 samples are
used: no other dimension of these models is 3 or 5, as :func:`daggrow.trace` asks.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth, rewritten: drop whole samples ("row") or the batch."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    survival = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival)
    return input * noise.div_(survival)


torch.fx.wrap("stochastic_depth")  # as torchvision does: one call in the traced graph


class StochasticDepth(nn.Module):
    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        return stochastic_depth(x, self.p, self.mode, self.training)


# ------------------------------------------------------------------------------------------ DenseNet
class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bn_size: int = 2) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, c_in: int, growth: int) -> None:
        super().__init__({f"layer{i}": DenseLayer(c_in + i * growth, growth) for i in range(layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNetLike(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.block1 = DenseBlock(2, 8, 4)
        self.transition = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.Conv2d(16, 8, 1, bias=False),
                                        nn.AvgPool2d(2, 2))
        self.block2 = DenseBlock(2, 8, 4)
        self.norm = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        h = self.block2(self.transition(self.block1(self.stem(x))))
        h = F.relu(self.norm(h), inplace=True)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, (1, 1)), 1))


# ------------------------------------------------------------------------------------------ MobileNetV2
class ConvBNReLU6(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers = [ConvBNReLU6(c_in, hidden, 1)] if expand != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Like(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvBNReLU6(3, 8, stride=2), InvertedResidual(8, 8, 1, 1),
                                      InvertedResidual(8, 12, 2, 4), InvertedResidual(12, 12, 1, 4),
                                      ConvBNReLU6(12, 32, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


# ------------------------------------------------------------------------------------------ EfficientNet (SE)
class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = nn.SiLU(), nn.Sigmoid()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, p: float) -> None:
        super().__init__()
        hidden = c_in * expand
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(inplace=True)),
            nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                          nn.SiLU(inplace=True)),
            SqueezeExcitation(hidden, max(1, c_in // 4)),
            nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)))
        self.use_res = stride == 1 and c_in == c_out
        self.stochastic_depth = StochasticDepth(p, "row")

    def forward(self, x):
        result = self.block(x)
        if self.use_res:
            result = self.stochastic_depth(result)
            result += x
        return result


class EfficientNetLike(nn.Module):
    """MBConv blocks with squeeze-excitation, SiLU and stochastic depth; a Hardswish head."""

    def __init__(self, classes: int = 4, p: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU(inplace=True))
        self.blocks = nn.Sequential(MBConv(8, 8, 1, 2, p), MBConv(8, 12, 2, 4, p), MBConv(12, 12, 1, 4, p))
        self.head = nn.Sequential(nn.Conv2d(12, 24, 1, bias=False), nn.BatchNorm2d(24), nn.Hardswish(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(24, 16), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(16, classes))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------------------------------------------ Inception
class BasicConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, **kwargs) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c_out, bias=False, **kwargs), nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, c_in: int, ch1: int, ch3_red: int, ch3: int, ch5_red: int, ch5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(c_in, ch1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(c_in, ch3_red, kernel_size=1),
                                     BasicConv2d(ch3_red, ch3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(c_in, ch5_red, kernel_size=1),
                                     BasicConv2d(ch5_red, ch5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(c_in, pool_proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionLike(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(3, 8, kernel_size=3, stride=2, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)   # 8×8 → 4×4 → 2×2 (ceil: 2, floor: 1)
        self.inception3a = Inception(8, 4, 4, 6, 2, 4, 2)
        self.maxpool2 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception3b = Inception(16, 4, 4, 8, 2, 4, 4)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout, self.fc = nn.Dropout(0.2), nn.Linear(20, classes)

    def forward(self, x):
        x = self.maxpool2(self.inception3a(self.maxpool1(self.conv1(x))))
        x = torch.flatten(self.avgpool(self.inception3b(x)), 1)
        return self.fc(self.dropout(x))


# ------------------------------------------------------------------------------------------ ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """A LayerNorm over channels: permute, layer_norm, permute back (torchvision's)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float, p: float) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(p, "row")

    def forward(self, x):
        result = self.stochastic_depth(self.layer_scale * self.block(x))
        return result + x


class ConvNeXtLike(nn.Module):
    def __init__(self, classes: int = 4, p: float = 0.1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), LayerNorm2d(8, eps=1e-6))
        self.stage1 = nn.Sequential(CNBlock(8, 0.5, p), CNBlock(8, 0.5, p))
        self.down = nn.Sequential(LayerNorm2d(8, eps=1e-6), nn.Conv2d(8, 16, 2, stride=2))
        self.stage2 = CNBlock(16, 0.5, p)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Flatten(1), nn.Linear(16, classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.stage2(self.down(self.stage1(self.stem(x))))))


# ------------------------------------------------------------------------------------------ ViT
class ViT(nn.Module):
    """Patch embedding conv → tokens → class token and position embedding → nn.TransformerEncoder
    (pre-norm, batch first) → the class token → head."""

    def __init__(self, classes: int = 4, d: int = 16, patch: int = 4, tokens: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, img):
        x = self.patch(img)
        n = x.shape[0]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1) + self.pos
        x = self.norm(self.encoder(x))
        return self.head(x[:, 0])


class Attention(nn.Module):
    """timm-style multi-head attention written out: qkv Linear, reshape, softmax, projection."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (d // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), Attention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """Hand-written transformer blocks on (batch, tokens, features) inputs, mean pooling."""

    def __init__(self, classes: int = 4, d: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.blocks = nn.Sequential(*[Block(d, 2, 2 * d) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


# ------------------------------------------------------------------------------------------ RNNs
class GRUClassifier(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 12, num_layers=2, batch_first=True)
        self.head = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class LSTMClassifier(nn.Module):
    """The last hidden state and the mean output, concatenated, into an MLP head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 10, batch_first=True)
        self.head = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, classes))

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.head(torch.cat([h[-1], out.mean(1)], dim=1))


# ------------------------------------------------------------------------------------------ MLP-Mixer
class MixerBlock(nn.Module):
    def __init__(self, tokens: int, d: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(d, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, d))

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)   # token mixing
        return x + self.channel_mlp(self.norm2(x))                              # channel mixing


class MLPMixer(nn.Module):
    def __init__(self, classes: int = 4, d: int = 16, patch: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, d, patch, stride=patch)
        tokens = (8 // patch) ** 2
        self.blocks = nn.Sequential(MixerBlock(tokens, d, 8, 24), MixerBlock(tokens, d, 8, 24))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, img):
        x = self.stem(img).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


IMAGE, SEQUENCE = (3, 8, 8), (7, 6)
FAMILIES = {
    "densenet": (DenseNetLike, IMAGE),
    "mobilenet_v2": (MobileNetV2Like, IMAGE),
    "efficientnet_se": (EfficientNetLike, IMAGE),
    "inception": (InceptionLike, IMAGE),
    "convnext": (ConvNeXtLike, IMAGE),
    "vit": (ViT, IMAGE),
    "timm_vit": (TimmViT, SEQUENCE),
    "gru": (GRUClassifier, SEQUENCE),
    "lstm": (LSTMClassifier, SEQUENCE),
    "mlp_mixer": (MLPMixer, IMAGE),
}


def no_dropout(model: nn.Module) -> nn.Module:
    """Every dropout and stochastic depth of ``model`` off (to compare in training mode)."""
    for m in model.modules():
        if isinstance(m, (nn.Dropout, StochasticDepth)):
            m.p = 0.0
        if isinstance(m, (nn.MultiheadAttention, nn.GRU, nn.LSTM)):
            m.dropout = 0.0
    return model
