"""Which torch operations the tracer recognises, and what each one means in the IR.

Activations (as modules, ``torch.*`` / ``F.*`` functions or tensor methods, in-place variants
included) map to a node activation name of :mod:`daggrow.graph.activations` and its
parameters:

>>> activation_of_module(nn.LeakyReLU(0.2))
('leaky_relu', {'negative_slope': 0.2})
>>> activation_of_function(F.elu, (None,), {"alpha": 0.5})
('elu', {'alpha': 0.5})
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn


class Unsupported(Exception):
    """A recognised op used in a way the IR cannot express: ``what`` went wrong, ``fix`` says what to do."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what)
        self.what, self.fix = what, fix


# ----------------------------------------------------------------------------- activations
_MODULE_ACTIVATIONS: dict[type, str] = {
    nn.Identity: "identity", nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SELU: "selu",
    nn.GELU: "gelu", nn.SiLU: "silu", nn.ELU: "elu", nn.LeakyReLU: "leaky_relu", nn.Softplus: "softplus",
    nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.Mish: "mish",
}

# function → (activation, [(parameter, position in args, default)])
_FUNCTION_ACTIVATIONS: dict[Callable, tuple[str, list[tuple[str, int, float]]]] = {
    torch.relu: ("relu", []), F.relu: ("relu", []), torch.relu_: ("relu", []),
    torch.tanh: ("tanh", []), torch.tanh_: ("tanh", []),
    torch.sigmoid: ("sigmoid", []), torch.sigmoid_: ("sigmoid", []),
    torch.selu: ("selu", []), F.selu: ("selu", []), torch.selu_: ("selu", []),
    F.gelu: ("gelu", []), F.silu: ("silu", []),
    F.elu: ("elu", [("alpha", 1, 1.0)]), F.elu_: ("elu", [("alpha", 1, 1.0)]),
    F.leaky_relu: ("leaky_relu", [("negative_slope", 1, 0.01)]),
    F.leaky_relu_: ("leaky_relu", [("negative_slope", 1, 0.01)]),
    F.softplus: ("softplus", [("beta", 1, 1.0), ("threshold", 2, 20.0)]),
    F.relu6: ("relu6", []), F.hardswish: ("hardswish", []), F.hardsigmoid: ("hardsigmoid", []),
    F.mish: ("mish", []),
    F.hardtanh: ("hardtanh", [("min_val", 1, -1.0), ("max_val", 2, 1.0)]),
    F.hardtanh_: ("hardtanh", [("min_val", 1, -1.0), ("max_val", 2, 1.0)]),
}
_FUNCTION_ACTIVATIONS.update({fn: _FUNCTION_ACTIVATIONS[base] for fn, base in [(F.tanh, torch.tanh),
                                                                              (F.sigmoid, torch.sigmoid)]})

_METHOD_ACTIVATIONS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh",
                       "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}

_SOFTPLUS_FIX = "use softplus with its defaults (beta=1, threshold=20), or keep it in a leaf module"


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unsupported(f"{what} given as {value!r}, not a number fixed at trace time",
                          "pass the parameter as a Python number")
    return float(value)


def activation_of_module(module: nn.Module) -> tuple[str, dict[str, float]] | None:
    """``(activation, params)`` for an activation module, ``None`` for any other module."""
    name = next((a for t, a in _MODULE_ACTIVATIONS.items() if type(module) is t), None)
    if name is None:
        return None
    if name == "leaky_relu":
        return name, {"negative_slope": float(module.negative_slope)}
    if name == "elu":
        return name, {"alpha": float(module.alpha)}
    if name == "hardtanh":
        return name, {"min_val": float(module.min_val), "max_val": float(module.max_val)}
    if name == "softplus" and (module.beta != 1 or module.threshold != 20):
        raise Unsupported(f"nn.Softplus(beta={module.beta}, threshold={module.threshold})", _SOFTPLUS_FIX)
    if name == "gelu" and module.approximate != "none":
        raise Unsupported(f"nn.GELU(approximate={module.approximate!r})",
                          "use the exact nn.GELU(), or keep this one in a leaf module")
    return name, {}


def activation_of_function(fn: Any, args: tuple, kwargs: dict) -> tuple[str, dict[str, float]] | None:
    """``(activation, params)`` for an activation function call, ``None`` for other functions."""
    try:
        name, params = _FUNCTION_ACTIVATIONS[fn]
    except (KeyError, TypeError):
        return None
    values = {p: _number(kwargs[p] if p in kwargs else args[i] if len(args) > i else default, p)
              for p, i, default in params}
    if name == "softplus":
        if values != {"beta": 1.0, "threshold": 20.0}:
            raise Unsupported(f"torch.nn.functional.softplus with beta={values['beta']:g}, "
                              f"threshold={values['threshold']:g}", _SOFTPLUS_FIX)
        values = {}
    if name == "gelu" and kwargs.get("approximate", "none") != "none":
        raise Unsupported(f"torch.nn.functional.gelu(approximate={kwargs['approximate']!r})",
                          "use the exact gelu, or keep it in a leaf module")
    return name, values


def activation_of_method(method: str) -> str | None:
    """The activation of a tensor method such as ``x.relu()``, ``None`` for other methods."""
    return _METHOD_ACTIVATIONS.get(method)


# ----------------------------------------------------------------------------- arithmetic
ADD = {operator.add, torch.add}
SUB = {operator.sub, torch.sub}
MUL = {operator.mul, torch.mul}
DIV = {operator.truediv, torch.div, torch.true_divide}
NEG = {operator.neg, torch.neg}
ARITHMETIC = ADD | SUB | MUL | DIV | NEG
CONCATS = {torch.cat, torch.concat, torch.concatenate}
METHOD_FUNCTIONS = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
                    "true_divide": torch.div, "neg": torch.neg}

# ----------------------------------------------------------------------------- no-ops on (batch, d)
SHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "clone"}
SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.clone}


def is_dropout(node: fx.Node, module: nn.Module | None) -> bool:
    """True for ``nn.Dropout`` modules and ``F.dropout`` calls."""
    if node.op == "call_module":
        return type(module) is nn.Dropout
    return node.op == "call_function" and node.target is F.dropout


def is_stochastic_depth(fn: Any) -> bool:
    """A function named ``stochastic_depth`` (torchvision's, kept whole by ``torch.fx.wrap``), taken
    to have its signature and meaning: ``stochastic_depth(input, p, mode, training=True)`` drops
    whole samples (``mode="row"``) or the whole batch (``"batch"``) with probability p in training
    and scales the rest by 1/(1 − p); it is the identity when not training."""
    return callable(fn) and getattr(fn, "__name__", None) == "stochastic_depth"


def stochastic_depth_options(node: fx.Node) -> tuple[float, str]:
    """``(p, mode)`` of a stochastic-depth call, with p = 0 when ``training`` is False."""
    names = ("input", "p", "mode", "training")
    values = dict(zip(names, node.args))
    values.update({k: v for k, v in node.kwargs.items() if k in names})
    training = values.get("training", True)
    if training is not True and training is not False:
        raise Unsupported("stochastic_depth with a `training` flag computed while tracing",
                          "pass training=self.training (a Python bool)")
    rate = _number(values.get("p"), "p")
    mode = values.get("mode")
    if mode not in ("row", "batch"):
        raise Unsupported(f"stochastic_depth with mode={mode!r}", "use mode='row' or 'batch'")
    if not 0.0 <= rate < 1.0:
        raise Unsupported(f"stochastic_depth with p={rate:g}", "use a drop probability in [0, 1)")
    return (rate if training else 0.0), mode


def dropout_rate(node: fx.Node, module: nn.Module | None) -> float:
    """The drop probability a dropout applies in training (0 when ``training=False`` was passed)."""
    if node.op == "call_module":
        rate = float(module.p)
    else:
        training = node.kwargs["training"] if "training" in node.kwargs else (
            node.args[2] if len(node.args) > 2 else True)
        if training is False:
            return 0.0
        if training is not True:
            raise Unsupported("F.dropout with a `training` flag computed while tracing",
                              "pass training=self.training (a Python bool) or use nn.Dropout")
        rate = _number(node.kwargs["p"] if "p" in node.kwargs else node.args[1] if len(node.args) > 1 else 0.5, "p")
    if not 0.0 <= rate < 1.0:
        raise Unsupported(f"a dropout with p={rate:g}", "use a drop probability in [0, 1)")
    return rate


# ----------------------------------------------------------------------------- in-place ops
def mutates_input(node: fx.Node, module: nn.Module | None) -> bool:
    """True when ``node`` writes into its first argument (``x.add_(y)``, ``inplace=True``, …)."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    if node.op == "call_function":
        if node.target is operator.setitem:
            return True
        name = getattr(node.target, "__name__", "")
        return (name.endswith("_") and not name.startswith("_")) or node.kwargs.get("inplace") is True
    if node.op == "call_module":
        return getattr(module, "inplace", False) is True
    return False


def is_allowed_in_place(node: fx.Node, module: nn.Module | None) -> bool:
    """An op that writes into its input and returns it is fine when nothing else reads that input
    (then out of place gives the same values): in-place activations, dropouts, ``inplace=True``
    flags, tensor methods such as ``.bernoulli_()`` on a fresh tensor. Item assignment is not
    (its result is not the tensor; the tensor itself is read afterwards)."""
    if node.op == "call_module":
        return getattr(module, "inplace", False) is True
    return node.target is not operator.setitem


def is_alias(node: fx.Node, module: nn.Module | None) -> bool:
    """True when the op may return its input itself (a view, an identity, a dropout in eval)."""
    if node.op == "call_method":
        return node.target in SHAPE_METHODS
    if node.op == "call_function":
        return node.target in SHAPE_FUNCTIONS or node.target is F.dropout
    if node.op == "call_module":
        return isinstance(module, (nn.Flatten, nn.Identity, nn.Dropout))
    return False
