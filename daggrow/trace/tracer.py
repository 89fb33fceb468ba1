"""Trace a plain ``nn.Module`` with torch.fx into a :class:`Graph` in normal form.

>>> class Net(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b, self.c = nn.Linear(40, 8), nn.Linear(8, 8), nn.Linear(8, 10)
...     def forward(self, x):
...         h = torch.relu(self.a(x))
...         return self.c(torch.relu(self.b(h)) + h)
>>> g = trace(Net(), torch.randn(4, 40))
>>> [(n, s.width, s.activation) for n, s in g.nodes.items()]
[('x', 40, 'identity'), ('relu', 8, 'relu'), ('relu_1', 8, 'relu'), ('add', 8, 'identity'), ('c', 10, 'identity')]

Convolutional models trace too: Conv1d/Conv2d, poolings and flatten become edges between
image/sequence nodes (see :mod:`daggrow.trace.builder`).

Steps: unwrap ``DataParallel``; trace symbolically (torch.fx, stack traces recorded, leaf
modules kept whole); run ``ShapeProp`` on the example inputs (model in eval mode, no grad)
to learn every tensor's shape; walk the fx graph with :class:`GraphBuilder`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from typing import Any, Iterable

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import GraphError, TraceError
from ..graph import Graph
from .builder import GraphBuilder
from .source import exception_line


class _Tracer(fx.Tracer):
    """torch.fx tracer that records stack traces and keeps the requested modules whole."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: set[str]) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.leaf_types, self.leaf_names = leaf_types, leaf_names

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DataParallel``/``DistributedDataParallel`` (and ``torch.compile``) wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _leaf_spec(model: nn.Module, leaf_modules: Iterable[type | str]) -> tuple[tuple[type, ...], set[str]]:
    types, names = [], set()
    submodules = dict(model.named_modules())
    for item in leaf_modules:
        if isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)  # a class the model does not use is harmless (a shared policy list)
        elif isinstance(item, str):
            if item not in submodules or not item:
                raise TraceError(f"leaf_modules names '{item}', which is not a submodule of "
                                 f"{type(model).__name__}.\n  fix: use a qualified name such as "
                                 f"{_some_names(submodules)}")
            names.add(item)
        else:
            raise TraceError(f"leaf_modules got {item!r}.\n  fix: pass nn.Module classes or qualified module names")
    return tuple(types), names


def _some_names(submodules: dict[str, nn.Module]) -> str:
    return ", ".join(f"'{n}'" for n in list(submodules)[1:6]) or "(the model has no submodules)"


def _symbolic_trace(model: nn.Module, tracer: _Tracer, concrete_args: dict[str, Any] | None) -> fx.Graph:
    name = type(model).__name__
    try:
        return tracer.trace(model, concrete_args=concrete_args)
    except Exception as err:  # torch.fx raises many kinds; each becomes one clear TraceError
        where = exception_line(err)
        if "control flow" in str(err):
            raise TraceError(
                f"cannot trace {name}: data-dependent control flow{where} (torch.fx: {err}).\n  fix: pin the "
                "arguments that decide the branch with concrete_args={'flag': value}, or move the branching code "
                "into a submodule passed with leaf_modules=[...] (a frozen edge)") from None
        raise TraceError(f"cannot trace {name}: {type(err).__name__}: {err}{where}.\n  fix: keep the code that "
                         "does this in a submodule passed with leaf_modules=[...] (a frozen edge), or fix "
                         "Python-level arguments with concrete_args={...}") from None


def _placeholder_values(model: nn.Module, fx_graph: fx.Graph, inputs: tuple[torch.Tensor, ...],
                        concrete_args: dict[str, Any] | None) -> tuple[Any, ...]:
    """The example inputs, with each concrete argument's value at its place in ``forward``'s signature."""
    if not concrete_args:
        return inputs
    code = inspect.unwrap(model.forward).__code__
    names = code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount]  # as torch.fx does: skip self
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    if len(names) != len(placeholders):
        return inputs
    tensors = iter(inputs)
    return tuple(concrete_args[name] if name in concrete_args else next(tensors, None) for name in names)


def _propagate_shapes(model: nn.Module, gm: fx.GraphModule, args: tuple[Any, ...],
                      inputs: tuple[torch.Tensor, ...]) -> None:
    """Record every fx node's output shape, running the model once in eval mode without gradients."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints failures
            ShapeProp(gm).propagate(*args)
    except Exception as err:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise TraceError(f"cannot trace {type(model).__name__}: running it on example_inputs of shapes {shapes} "
                         f"failed: {type(err).__name__}: {err}.\n  fix: pass example inputs that forward accepts "
                         "(one tensor per tensor argument)") from None
    finally:
        for m, training in modes.items():
            m.training = training


def trace(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...], *,
          leaf_modules: Iterable[type | str] = (), concrete_args: dict[str, Any] | None = None) -> Graph:
    """Trace ``model`` into a :class:`Graph` whose compiled module computes the same outputs.

    ``example_inputs``: one tensor per tensor argument of ``forward``: ``(batch, features)``, or
    ``(batch, channels, length)`` / ``(batch, channels, height, width)`` for convolutional models
    (the graph's image/sequence nodes keep the example's spatial sizes).
    ``leaf_modules``: module classes or qualified names (``"body.gate"``) kept whole as frozen
    opaque edges (each holds a deep copy of the module; growth never touches it).
    ``concrete_args``: passed to torch.fx to fix Python arguments that steer control flow; the
    traced graph then takes only the tensor inputs.
    Raises :class:`TraceError` naming the unsupported op, the source line and what to do.
    The graph holds copies of the weights: training it leaves ``model`` untouched.
    """
    model = _unwrap(model)
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        got = ", ".join(type(x).__name__ for x in inputs) or "nothing"
        raise TraceError(f"cannot trace {type(model).__name__}: example_inputs must be a tensor or a tuple of "
                         f"tensors, got {got}.\n  fix: pass one tensor (batch, ...) per tensor argument of "
                         "forward")
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta or any(x.is_meta for x in inputs):
        what = f"its tensors {meta[:3]} are" if meta else "the example inputs are"
        raise TraceError(f"cannot trace {type(model).__name__}: {what} on the meta device (shapes without "
                         "values), and a graph holds real weights.\n  fix: materialise the model first, e.g. "
                         "model.to_empty(device='cpu') then initialise it or load a state dict, and pass real "
                         "example inputs")
    leaf_types, leaf_names = _leaf_spec(model, leaf_modules)
    fx_graph = _symbolic_trace(model, _Tracer(leaf_types, leaf_names), concrete_args)
    gm = fx.GraphModule(model, fx_graph)
    _propagate_shapes(model, gm, _placeholder_values(model, fx_graph, inputs, concrete_args), inputs)
    leaf_targets = {str(n.target) for n in fx_graph.nodes if n.op == "call_module" and (
        n.target in leaf_names or isinstance(gm.get_submodule(n.target), leaf_types))}
    try:
        graph = GraphBuilder(gm, leaf_targets).run()
        graph.validate(complete=True)
    except GraphError as err:
        raise TraceError(f"the traced graph of {type(model).__name__} is invalid: {err} (this is a daggrow bug: "
                         "please report it with the model)") from None
    return graph
