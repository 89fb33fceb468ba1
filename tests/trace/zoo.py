"""Plain PyTorch models the tracer must reproduce exactly (name → factory, input widths)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.l1, self.l2 = nn.Linear(10, 16, bias=bias), nn.Linear(16, 8, bias=bias)
        self.l3 = nn.Linear(8, 3, bias=bias)

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(F.relu(self.l1(x)))))


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(10, 12)
        self.blocks = nn.ModuleList([nn.Linear(12, 12) for _ in range(3)])
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        h = F.relu(self.inp(x))
        for block in self.blocks:
            h = h + F.relu(block(h))
        return self.out(h)


class TwoBranch(nn.Module):
    """Two branches of different depths merged, plus a long skip from the input to the output."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2, self.b1 = nn.Linear(10, 6), nn.Linear(6, 6), nn.Linear(10, 4)
        self.mix, self.mixb = nn.Linear(6, 10), nn.Linear(4, 10)
        self.head, self.skip = nn.Linear(10, 3), nn.Linear(10, 3)

    def forward(self, x):
        a = torch.tanh(self.a2(torch.relu(self.a1(x))))
        b = torch.sigmoid(self.b1(x))
        h = F.gelu(self.mix(a) + self.mixb(b))
        return self.head(h) + self.skip(x)


class ThreeConsumers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b, self.c, self.d = nn.Linear(7, 4), nn.Linear(7, 4), nn.Linear(7, 4)

    def forward(self, x):
        h = F.silu(self.a(x))
        return self.b(h) + torch.relu(self.c(h)) + 0.5 * self.d(h)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 8), nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x, z):
        return self.c(F.elu(self.a(x) + self.b(z)))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Sequential(nn.Linear(6, 9), nn.ReLU()),
                                  nn.Sequential(nn.Linear(9, 9), nn.LeakyReLU(0.2), nn.Linear(9, 4)))
        self.heads = nn.ModuleDict({"main": nn.Linear(4, 2)})

    def forward(self, x):
        return self.heads["main"](self.body(x))


MODULE_ACTIVATIONS = [nn.ReLU(), nn.Tanh(), nn.GELU(), nn.SiLU(), nn.SELU(), nn.Sigmoid(), nn.LeakyReLU(0.3),
                      nn.ELU(0.7), nn.Softplus(), nn.ReLU(inplace=True), nn.LeakyReLU(0.1, inplace=True),
                      nn.ReLU6(inplace=True), nn.Hardtanh(-0.5, 2.0), nn.Hardswish(), nn.Hardsigmoid(inplace=True),
                      nn.Mish(), nn.SiLU(inplace=True), nn.Identity()]
FUNCTION_ACTIVATIONS = [torch.relu, torch.tanh, torch.sigmoid, torch.selu, F.relu, F.gelu, F.silu, F.selu,
                        lambda h: F.leaky_relu(h, 0.1), lambda h: F.elu(h, alpha=0.5), F.elu, F.softplus,
                        F.tanh, F.sigmoid, lambda h: F.relu(h, inplace=True), torch.relu_,
                        lambda h: F.leaky_relu_(h, 0.2), lambda h: F.softplus(h, 1, 20),
                        F.relu6, lambda h: F.relu6(h, inplace=True), lambda h: F.hardtanh(h, 0.0, 3.0),
                        lambda h: F.hardtanh_(h, -1.0, 1.5), F.hardswish, lambda h: F.hardsigmoid(h, inplace=True),
                        F.mish, lambda h: F.silu(h, inplace=True)]
METHOD_ACTIVATIONS = ["relu", "tanh", "sigmoid", "relu_", "tanh_", "sigmoid_"]


class AllActivations(nn.Module):
    """Every activation as a module, as a torch/F function and as a tensor method (in-place too)."""

    def __init__(self):
        super().__init__()
        count = len(MODULE_ACTIVATIONS) + len(FUNCTION_ACTIVATIONS) + len(METHOD_ACTIVATIONS) + 1
        self.ls = nn.ModuleList([nn.Linear(6, 6) for _ in range(count)])
        self.acts = nn.ModuleList(MODULE_ACTIVATIONS)

    def forward(self, x):
        h, i = x, 0
        for act in self.acts:
            h, i = act(self.ls[i](h)), i + 1
        for fn in FUNCTION_ACTIVATIONS:
            h, i = fn(self.ls[i](h)), i + 1
        for method in METHOD_ACTIVATIONS:
            h, i = getattr(self.ls[i](h), method)(), i + 1
        return self.ls[i](h)


class ManySums(nn.Module):
    """Three linear terms summed with python's sum (which starts from the int 0), torch.add and -."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(5, 5)

    def forward(self, x):
        s = sum([self.a(x), self.b(x), self.c(x)])
        return torch.add(self.d(torch.relu(s)), s) - 2.0 * s


class ScaledResidual(nn.Module):
    """Subtraction and scalar multiples: on identity edges and folded into linear weights."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        r = 0.5 * self.b(h) - h / 4 + x * 2 - (-h)
        return self.c(torch.relu(r))


class NormsAndDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Linear(8, 16), nn.BatchNorm1d(16)
        self.b, self.ln = nn.Linear(16, 16), nn.LayerNorm(16)
        self.drop, self.drop2 = nn.Dropout(0.3), nn.Dropout(0.1)
        self.c = nn.Linear(16, 3)
        with torch.no_grad():  # non-trivial running statistics and affine parameters
            self.bn.running_mean.uniform_(-1, 1), self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5), self.bn.bias.uniform_(-1, 1)
            self.ln.weight.uniform_(0.5, 1.5), self.ln.bias.uniform_(-1, 1)

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.a(x))))
        h = F.gelu(self.ln(self.b(h)))
        return self.c(self.drop2(h))


class Gate(nn.Module):
    """Something a sum of edges cannot express (a product), kept whole with leaf_modules."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return x * torch.sigmoid(self.scale * x)


class WithLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gate, self.b = nn.Linear(6, 6), Gate(), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(self.gate(self.a(x)) + x - 0.5 * self.gate(x))  # the leaf is called twice


class ApiNet(nn.Module):
    """The example of docs/api.md §1."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(40, 8); self.b = nn.Linear(8, 8); self.c = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(h)) + h)


class ShapesAndOutputs(nn.Module):
    """Reshapes that keep (batch, d), F.dropout, a dead branch and a tuple output with the input's image."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.unused = nn.Linear(5, 5), nn.Linear(5, 3), nn.Linear(5, 5)
        self.flat = nn.Flatten()

    def forward(self, x):
        h = self.a(x).view(x.size(0), -1)
        _ = torch.relu(self.unused(x))  # dead code: not in the graph
        h = torch.flatten(self.flat(h), 1).reshape(x.shape[0], 5).contiguous()
        h = F.dropout(torch.tanh(h), 0.2, training=self.training)
        s = h + h
        return self.b(s.neg().mul(0.5).div(2)), -x, s


def _mlp_without_bias():
    return MLP(bias=False)


ZOO = {
    "mlp": (MLP, (10,), {}),
    "mlp_no_bias": (_mlp_without_bias, (10,), {}),
    "residual": (ResidualMLP, (10,), {}),
    "two_branch_long_skip": (TwoBranch, (10,), {}),
    "three_consumers": (ThreeConsumers, (5,), {}),
    "two_inputs": (TwoInputs, (5, 3), {}),
    "nested_sequential": (Nested, (6,), {}),
    "all_activations": (AllActivations, (6,), {}),
    "many_sums": (ManySums, (4,), {}),
    "scaled_residual": (ScaledResidual, (6,), {}),
    "norms_dropout": (NormsAndDropout, (8,), {}),
    "leaf_module": (WithLeaf, (6,), {"leaf_modules": [Gate]}),
    "api_example": (ApiNet, (40,), {}),
    "data_parallel": (lambda: nn.DataParallel(ResidualMLP()), (10,), {}),
    "shapes_and_outputs": (ShapesAndOutputs, (5,), {}),
}
