"""A zoo of plain PyTorch models: traced, compiled, equal outputs; normal form; clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import daggrow as dg


class MLP(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(10, 16, bias=bias), nn.Linear(16, 8, bias=bias), nn.Linear(8, 3, bias=bias)

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
    def __init__(self):
        super().__init__()
        self.a1, self.a2 = nn.Linear(10, 6), nn.Linear(6, 6)
        self.b1 = nn.Linear(10, 4)
        self.skip = nn.Linear(10, 3)
        self.head = nn.Linear(10, 3)
        self.mix = nn.Linear(6, 10)
        self.mixb = nn.Linear(4, 10)

    def forward(self, x):
        a = torch.tanh(self.a2(torch.relu(self.a1(x))))
        b = torch.sigmoid(self.b1(x))
        h = F.gelu(self.mix(a) + self.mixb(b))
        return self.head(h) + self.skip(x)  # long skip from the input


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


class AllActivations(nn.Module):
    """Every activation as a module, as a torch function, as an F function and as a method."""

    def __init__(self):
        super().__init__()
        self.ls = nn.ModuleList([nn.Linear(6, 6) for _ in range(16)])
        self.mods = nn.ModuleList([nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.SELU(), nn.GELU(), nn.SiLU(), nn.ELU(0.7),
                                   nn.Softplus(), nn.ReLU(inplace=True)])

    def forward(self, x):
        h = x
        for lin, act in zip(self.ls[:9], self.mods):
            h = act(lin(h))
        h = torch.relu(self.ls[9](h))
        h = F.leaky_relu(self.ls[10](h), 0.05)
        h = F.selu(self.ls[11](h))
        h = self.ls[12](h).tanh()
        h = self.ls[13](h).sigmoid()
        h = F.gelu(self.ls[14](h))
        return self.ls[15](h).relu()


class ManySums(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(4, 5)
        self.d = nn.Linear(5, 5)

    def forward(self, x):
        s = sum([self.a(x), self.b(x), self.c(x)])
        return torch.add(self.d(torch.relu(s)), s) - 2.0 * torch.relu(s)


class NormsAndDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Linear(8, 16), nn.BatchNorm1d(16)
        self.b, self.ln = nn.Linear(16, 16), nn.LayerNorm(16)
        self.drop = nn.Dropout(0.3)
        self.c = nn.Linear(16, 3)

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.a(x))))
        h = F.gelu(self.ln(self.b(h)))
        return self.c(h)


class Weird(nn.Module):
    """Something daggrow cannot express (an elementwise product), kept opaque."""

    def forward(self, x):
        return x * torch.sigmoid(x)


class WithLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gate, self.b = nn.Linear(6, 6), Weird(), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(self.gate(self.a(x)) + x)


class ApiNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(40, 8); self.b = nn.Linear(8, 8); self.c = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(h)) + h)


def _mlp_without_bias():
    return MLP(bias=False)


ZOO = {
    "mlp": (MLP, (10,)),
    "mlp_no_bias": (_mlp_without_bias, (10,)),
    "residual": (ResidualMLP, (10,)),
    "two_branch_long_skip": (TwoBranch, (10,)),
    "three_consumers": (ThreeConsumers, (5,)),
    "two_inputs": (TwoInputs, (5, 3)),
    "nested_sequential": (Nested, (6,)),
    "all_activations": (AllActivations, (6,)),
    "many_sums": (ManySums, (4,)),
    "norms_dropout": (NormsAndDropout, (8,)),
    "api_example": (ApiNet, (40,)),
    "data_parallel": (lambda: nn.DataParallel(MLP()), (10,)),
}


def make_inputs(widths, n=9, dtype=torch.float32):
    torch.manual_seed(7)
    return tuple(torch.randn(n, w, dtype=dtype) for w in widths)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_traces_and_compiles_with_equal_outputs(name):
    factory, widths = ZOO[name]
    torch.manual_seed(0)
    model = factory().eval()
    xs = make_inputs(widths)
    g = dg.trace(model, xs)
    compiled = g.compile().eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(*xs), model(*xs), rtol=0, atol=1e-6)
    # float64 copies agree to round-off
    model64, g64 = copy.deepcopy(model).double(), dg.trace(copy.deepcopy(model).double(), make_inputs(widths, dtype=torch.float64))
    with torch.no_grad():
        torch.testing.assert_close(g64.compile().eval()(*make_inputs(widths, dtype=torch.float64)),
                                   model64(*make_inputs(widths, dtype=torch.float64)), rtol=0, atol=1e-12)


def test_leaf_modules_become_frozen_edges():
    torch.manual_seed(0)
    model = WithLeaf().eval()
    x = torch.randn(5, 6)
    with pytest.raises(dg.TraceError, match="two tensors"):
        dg.trace(model, x)
    for leaf in ([Weird], ["gate"]):
        g = dg.trace(model, x, leaf_modules=leaf)
        frozen = [e for e in g.edges.values() if e.block.kind == "frozen"]
        assert len(frozen) == 1 and frozen[0].block.module_type == "Weird"
        torch.testing.assert_close(g.compile()(x), model(x))
        assert not dg.grow.expandable(g, frozen[0].target)  # growth never touches it


def test_api_example_normal_form():
    g = dg.trace(ApiNet(), torch.randn(4, 40))
    acts = {n: s.activation for n, s in g.nodes.items()}
    assert len(g.nodes) == 5  # x, relu(a x), relu(b h), the residual sum, the output
    assert sorted(acts.values()) == ["identity", "identity", "identity", "relu", "relu"]
    residual = next(n for n in g.nodes if {e.block.kind for e in g.in_edges(n)} == {"identity"})
    assert len(g.in_edges(residual)) == 2 and g.node(residual).width == 8
    assert [e.name for e in g.edges.values() if e.block.kind == "linear"] == ["a", "b", "c"]


def test_normal_form_folds_sums_activations_and_norms():
    g = dg.trace(TwoInputs(), make_inputs((5, 3)))
    assert len(g.nodes) == 4  # x, z, elu(a x + b z), output
    hidden = next(n for n in g.nodes if g.node(n).activation == "elu")
    assert {e.source for e in g.in_edges(hidden)} == {"x", "z"}
    assert g.node(hidden).activation_params == {"alpha": 1.0}
    g = dg.trace(NormsAndDropout().eval(), make_inputs((8,)))
    norms = {s.norm.kind: s for s in g.nodes.values() if s.norm}
    assert norms["batchnorm"].activation == "relu" and norms["batchnorm"].dropout == 0.3
    assert norms["layernorm"].activation == "gelu"
    assert len(g.nodes) == 4
    g = dg.trace(MLP(), make_inputs((10,)))
    assert [g.node(n).width for n in g.topological_order()] == [10, 16, 8, 3]


def test_compiled_parameters_are_not_the_models():
    model = MLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = dg.trace(model, make_inputs((10,)))
    m = g.compile()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(*make_inputs((10,))).sum().backward()
    opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return x


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 2)

    def forward(self, x):
        return self.a(torch.cat([x, x], dim=1))


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x) * self.b(x)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(torch.relu(self.a(x)))


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        h.add_(x)
        return h


class Image(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x)


@pytest.mark.parametrize("model, x, pattern", [
    (ControlFlow(), torch.randn(2, 4), r"control flow(.|\n)*test_trace.py:\d+: `if x.sum\(\) > 0:`(.|\n)*concrete_args"),
    (Concat(), torch.randn(2, 4), r"torch.cat at (.|\n)*test_trace.py(.|\n)*leaf_modules"),
    (Product(), torch.randn(2, 4), r"of two tensors at (.|\n)*self.a\(x\) \* self.b\(x\)"),
    (Shared(), torch.randn(2, 4), r"called a second time(.|\n)*shared weights are not growable(.|\n)*deepcopy"),
    (InPlace(), torch.randn(2, 4), r"in-place operation .add_\(\)(.|\n)*out of place"),
    (Image(), torch.randn(2, 3, 4), r"shape \(2, 3, 4\)(.|\n)*not supported yet"),
])
def test_clear_errors(model, x, pattern):
    with pytest.raises(dg.TraceError, match=pattern):
        dg.trace(model, x)
