"""What the IR cannot grow becomes an op node (with one warning naming the op and the line); with
``strict=True`` it is refused with the op, the user's source line and a fix. What torch.fx cannot
trace, and writes into tensors, are refused either way."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import daggrow as dg

HERE = r"test_errors\.py:\d+"


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
        self.a, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.a(torch.relu(self.a(x))))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class InPlaceAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        h.add_(x)
        return h


class InPlaceReluReadTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        r = F.relu(h, inplace=True)
        return r + h


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x)


class UnknownModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.clip = nn.Linear(4, 4), nn.Hardtanh()

    def forward(self, x):
        return self.clip(self.a(x))


class AddConstant(nn.Module):
    def forward(self, x):
        return x + 1.0


class Broadcast(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x) + self.b(x)


class RawParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return x @ self.w


class NewTensor(nn.Module):
    def forward(self, x):
        return x + torch.ones((x.shape[0], 4))


class ShapeFactor(nn.Module):
    def forward(self, x):
        return x * x.shape[1]


class TwoOutputsLeaf(nn.Module):
    def forward(self, x):
        return x, 2 * x


class UsesTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.split = TwoOutputsLeaf()

    def forward(self, x):
        a, b = self.split(x)
        return a + b


class UnusedInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x, z):
        return self.a(x)


class Softplus2(nn.Module):
    def forward(self, x):
        return F.softplus(x, beta=2.0)


class InPlaceLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act = nn.Linear(4, 4), nn.Hardtanh(inplace=True)

    def forward(self, x):
        return self.act(self.a(x))


class InPlaceThroughView(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        h.view(-1, 4).relu_()
        return self.b(h)


class LeafSharesALinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.gate = nn.Sequential(self.a, nn.Sigmoid())

    def forward(self, x):
        return self.gate(self.a(x))


class Slice(nn.Module):
    def forward(self, x):
        return x[:, :2]


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return {"y": self.a(x)}


X = torch.randn(3, 4)

CASES = {
    "control flow": (ControlFlow(), X, {},
                     [r"control flow", HERE + r": `if x.sum\(\) > 0:`", r"fix: .*concrete_args", "leaf_modules"]),
    "product": (Product(), X, {}, [r"operator\.mul of two tensors", HERE + r": `return self.a\(x\) \* self.b\(x\)`",
                                   r"fix: .*leaf_modules"]),
    "weight sharing": (Shared(), X, {}, [r"module `a` \(Linear\), called a second time",
                                         r"shared weights are not growable as-is", HERE + r": `return self.out",
                                         r"fix: give each use its own module \(e.g. `copy.deepcopy`",
                                         r"leaf_modules=\['a'\]"]),
    "tied parameters": (Tied(), X, {}, [r"module `b` \(Linear\), which shares weights with `a`",
                                        r"leaf_modules=\['a', 'b'\]"]),
    "in-place add_": (InPlaceAdd(), X, {}, [r"tensor method \.add_\(\) \(call_method add_\), which works in place, "
                                            r"on a tensor that is also read elsewhere", HERE + r": `h.add_\(x\)`",
                                            r"fix: write it out of place"]),
    "in-place relu read twice": (InPlaceReluReadTwice(), X, {},
                                 [r"torch\.nn\.functional\.relu, which works in place, on a tensor that is also read elsewhere",
                                  HERE + r": `r = F.relu\(h, inplace=True\)`", r"fix: write it out of place"]),
    "constant": (AddConstant(), X, {}, [r"operator\.add of a tensor and the constant 1\.0", HERE + r": `return x \+ 1",
                                        r"fix: .*bias"]),
    "broadcast": (Broadcast(), X, {}, [r"broadcasts a tensor of shape \(3, 1\) to \(3, 4\)", HERE,
                                       r"fix: make both operands"]),
    "raw parameter": (RawParameter(), X, {}, [r"attribute `self.w`", HERE + r": `return x @ self.w`",
                                              r"fix: wrap parameters in a module such as nn.Linear"]),
    "new tensor": (NewTensor(), X, {}, [r"torch\.ones, which creates a new tensor inside forward", HERE,
                                        r"fix: pass the tensor as an input"]),
    "shape factor": (ShapeFactor(), X, {}, [r"operator\.mul by a value computed while tracing",
                                            HERE + r": `return x \* x.shape\[1\]`", r"fix: write the factor"]),
    "tuple leaf": (UsesTuple(), X, {"leaf_modules": [TwoOutputsLeaf]},
                   [r"module `split` \(TwoOutputsLeaf\), which returns several tensors", HERE + r": `a, b = self.split\(x\)`",
                    r"fix: .*leaf_modules"]),
    "unused input": (UnusedInput(), (X, X), {}, [r"input `z` does not affect the output",
                                                 r"fix: remove it from forward's arguments"]),
    "softplus beta": (Softplus2(), X, {}, [r"softplus with beta=2, threshold=20", HERE, r"fix: use softplus with"]),
    "in-place leaf": (InPlaceLeaf(), X, {"leaf_modules": ["act"]},
                      [r"leaf module `act`, which works in place", r"fix: create it with inplace=False"]),
    "in-place through a view": (InPlaceThroughView(), X, {},
                                [r"\.relu_\(\) \(call_method relu_\), which works in place, on a tensor that is also",
                                 HERE + r": `h.view\(-1, 4\).relu_\(\)`"]),
    "leaf shares a linear": (LeafSharesALinear(), X, {"leaf_modules": ["gate"]},
                             [r"leaf module `gate` \(Sequential\), which shares weights with `a`",
                              r"leaf_modules=\['a', 'gate'\]"]),
    "slice": (Slice(), X, {}, [r"operator\.getitem", HERE + r": `return x\[:, :2\]`", r"fix: .*leaf_modules"]),
    "dict output": (DictOutput(), X, {}, [r"returns immutable_dict", r"fix: return a tensor or a tuple of tensors"]),
    "leaf name": (Plain(), X, {"leaf_modules": ["b"]}, [r"leaf_modules names 'b', which is not a submodule",
                                                        r"fix: use a qualified name such as 'a'"]),
}


# refused with or without strict=True: fx cannot trace it, a write into a tensor, bad arguments
ALWAYS = {"control flow", "in-place add_", "in-place relu read twice", "unused input", "in-place leaf",
          "in-place through a view", "dict output", "leaf name"}


@pytest.mark.parametrize("case", list(CASES))
def test_strict_refusals_name_the_op_the_line_and_the_fix(case):
    model, x, options, patterns = CASES[case]
    with pytest.raises(dg.TraceError) as info:
        dg.trace(model, x, strict=True, **options)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in:\n{message}"


@pytest.mark.parametrize("case", sorted(ALWAYS))
def test_some_refusals_stay_without_strict(case):
    model, x, options, patterns = CASES[case]
    with pytest.raises(dg.TraceError) as info:
        dg.trace(model, x, **options)
    assert re.search(patterns[0], str(info.value))


@pytest.mark.parametrize("case", sorted(set(CASES) - ALWAYS))
def test_without_strict_each_refused_op_becomes_an_op_node(case):
    """One OpaqueOpWarning naming the op and the user's line; the graph computes the same function."""
    model, x, options, patterns = CASES[case]
    with pytest.warns(dg.OpaqueOpWarning) as record:
        graph = dg.trace(model, x, **options)
    assert len(record) == 1
    message = str(record[0].message)
    assert re.search(HERE, message) and "strict=True" in message, message
    assert any(spec.op is not None for spec in graph.nodes.values())
    xs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        torch.testing.assert_close(graph.compile().eval()(*xs), model.eval()(*xs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model, x", [(Concat(), X), (Plain(), torch.randn(2, 3, 4)), (UnknownModule(), X)])
def test_concatenation_tokens_and_hardtanh_are_first_class(model, x, recwarn):
    graph = dg.trace(model, x, strict=True)
    assert not [w for w in recwarn if issubclass(w.category, dg.OpaqueOpWarning)]
    assert all(spec.op is None for spec in graph.nodes.values())
    with torch.no_grad():
        torch.testing.assert_close(graph.compile().eval()(x), model.eval()(x), rtol=0, atol=1e-6)


def test_the_suggested_fixes_work():
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    for model, options in [(Shared(), {"leaf_modules": ["a"]}), (Tied(), {"leaf_modules": ["a", "b"]}),
                           (UnknownModule(), {"leaf_modules": [nn.Hardtanh]}), (InPlaceLeaf(), {"leaf_modules": []}),
                           (LeafSharesALinear(), {"leaf_modules": ["a", "gate"]})]:
        if isinstance(model, InPlaceLeaf):
            model.act.inplace, options = False, {"leaf_modules": ["act"]}
        graph = dg.trace(model.eval(), x, **options)
        with torch.no_grad():
            torch.testing.assert_close(graph.compile()(x), model(x), rtol=0, atol=1e-6)
    graph = dg.trace(Shared(), x, leaf_modules=["a"])
    first, second = [graph.module(e.name) for e in graph.edges.values() if e.block.kind == "frozen"]
    assert first is second  # both calls share one frozen copy, as in the model


def test_a_failed_trace_leaves_the_model_unchanged():
    model = Shared()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(dg.TraceError):
        dg.trace(model, X, strict=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------- in-place messages
class InvertedResidualHead(nn.Module):
    """MobileNetV2's in-place ReLU6 inside a Sequential: first class now."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 8), nn.ReLU6(inplace=True), nn.Linear(8, 8),
                                      nn.Hardtanh(-2.0, 3.0, inplace=True))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.features(x))


class ThresholdReadTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 4), nn.Threshold(0.1, 0.0, inplace=True))
        self.skip = nn.Linear(4, 4)

    def forward(self, x):
        h = self.features[0](x)
        return self.features[1](h) + self.skip(h)


def test_in_place_activations_inside_a_sequential_trace():
    model = InvertedResidualHead().eval()
    graph = dg.trace(model, X, strict=True)
    assert [s.activation for s in graph.nodes.values()][1:3] == ["relu6", "hardtanh"]
    assert graph.node("features_3").activation_params == {"min_val": -2.0, "max_val": 3.0}
    with torch.no_grad():
        torch.testing.assert_close(graph.compile()(X), model(X), rtol=0, atol=1e-6)


def test_an_in_place_module_whose_input_is_read_elsewhere_is_named_with_its_class():
    with pytest.raises(dg.TraceError) as info:
        dg.trace(ThresholdReadTwice(), X)
    message = str(info.value)
    assert "the module `features.1` (Threshold), which works in place, on a tensor that is also read" in message
    assert re.search(HERE + r": `return self.features\[1\]\(h\) \+ self.skip\(h\)`", message), message
    assert "in-place operation" not in message


# ---------------------------------------------------------------------------- what fx cannot trace
_SIZES = {16: "small"}


def rearrange_like(x):
    """Like einops: a traced size used as a dict key (KeyError: Proxy(...) inside torch.fx)."""
    return x.reshape(x.shape[0], _SIZES[x.shape[1]] == "small", -1)


def dtype_of(mask):
    """Like torch's _none_or_dtype: refuses anything but None or a tensor (a traced value is neither)."""
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor) and not isinstance(mask, torch.fx.Proxy):
        return mask.dtype
    raise RuntimeError("input to dtype_of() must be None or torch.Tensor")


class Mixing(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)

    def forward(self, x):
        return rearrange_like(self.a(x))


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x, mask):
        kind = dtype_of(mask)
        return self.a(x) if kind is None else self.a(x) * mask


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 16), Mixing())

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("model, x, patterns", [
    (Mixing(), torch.randn(3, 16), [r"torch\.fx could not run this code", HERE + r": `return rearrange_like",
                                    r"KeyError", r"fix: .*torch\.fx\.wrap", r"concrete_args"]),
    (Outer(), torch.randn(3, 16), [HERE + r": `return rearrange_like", r"leaf_modules=\['body\.1'\]"]),
    (Masked(), (X, X), [r"RuntimeError: input to dtype_of\(\) must be None or torch.Tensor",
                        HERE + r": `kind = dtype_of\(mask\)`", r"fix: .*leaf_modules=", r"concrete_args"]),
])
def test_what_torch_fx_cannot_trace_is_a_trace_error_naming_the_line_and_the_fix(model, x, patterns):
    with pytest.raises(dg.TraceError) as info:
        dg.trace(model, x)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in:\n{message}"


def test_the_suggested_leaf_module_fixes_the_untraceable_code(tmp_path):
    model = Outer().eval()
    x = torch.randn(3, 16)
    graph = dg.trace(model, x, leaf_modules=["body.1"])
    assert graph.edge("body.1").block == dg.FrozenBlock(module_type="Mixing")
    with torch.no_grad():
        torch.testing.assert_close(graph.compile()(x), model(x), rtol=0, atol=1e-6)
    graph.save(tmp_path / "g")
    with pytest.raises(dg.PersistenceError, match="trust=True"):  # a user's module is kept by pickle
        dg.Graph.load(tmp_path / "g")
