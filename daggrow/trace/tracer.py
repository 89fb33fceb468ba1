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
image/sequence nodes; Linear layers over the last dimension of ``(n, tokens, d)`` tensors
become edges between tokens nodes; ``torch.cat`` along features becomes placements; anything
else becomes an op node that runs the original code (see :mod:`daggrow.trace.builder`).

Steps: unwrap ``DataParallel``; trace symbolically (torch.fx, stack traces recorded, leaf
modules kept whole, ``nn.TransformerEncoder(Layer)`` traced through their plain path); run
``ShapeProp`` on the example inputs (model in eval mode, no grad) to learn every tensor's
shape; decide which 3-d/4-d tensors hold tokens; walk the fx graph with :class:`GraphBuilder`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import traceback
import warnings
from typing import Any, Iterable

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import GraphError, OpaqueOpWarning, TraceError
from ..graph import Graph
from .builder import GraphBuilder
from .decompose import DECOMPOSED
from .source import exception_line, frame_line


class _Tracer(fx.Tracer):
    """torch.fx tracer that records stack traces, keeps the requested modules whole and traces
    ``nn.TransformerEncoder(Layer)`` through their plain path (:mod:`daggrow.trace.decompose`)."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: set[str]) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.leaf_types, self.leaf_names = leaf_types, leaf_names

    def _user_leaf(self, m: nn.Module, name: str) -> bool:
        return name in self.leaf_names or isinstance(m, self.leaf_types)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._user_leaf(m, module_qualified_name):
            return True
        if type(m) in DECOMPOSED:
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        plain = DECOMPOSED.get(type(m))
        if plain is not None and not self._user_leaf(m, self.path_of_module(m)):
            forward = lambda *a, **k: plain(m, *a, **k)  # noqa: E731
        return super().call_module(m, forward, args, kwargs)


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
    try:
        return tracer.trace(model, concrete_args=concrete_args)
    except Exception as err:  # torch.fx (and code it runs) raises many kinds; each becomes one clear TraceError
        raise _fx_failure(model, err) from None


def _fx_failure(model: nn.Module, err: Exception) -> TraceError:
    """A TraceError for code torch.fx could not run on traced values: the user's line inside the
    innermost module that failed, the module's qualified name, and the fixes."""
    name = type(model).__name__
    paths = {id(m): p for p, m in model.named_modules()}
    module_path, where = None, exception_line(err)
    for frame, line in reversed(list(traceback.walk_tb(err.__traceback__))):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in paths:
            module_path, where = paths[id(owner)], frame_line(frame, line)
            break
    inner = exception_line(err)
    detail = f"{type(err).__name__}: {' '.join(str(err).split())}"
    if inner and inner != where:
        detail += f", raised{inner}"
    leaf = (f"keep the module that does this whole with leaf_modules=['{module_path}'] (an op node that runs "
            "it as written)" if module_path else "move the code that does this into a submodule and keep it "
            "whole with leaf_modules=[...] (an op node that runs it as written)")
    if "control flow" in str(err):
        return TraceError(
            f"cannot trace {name}: data-dependent control flow{where} ({detail}).\n  fix: pin the arguments "
            f"that decide the branch with concrete_args={{'flag': value}}, or {leaf}")
    return TraceError(
        f"cannot trace {name}: torch.fx could not run this code on traced values{where} ({detail}); it "
        "probably uses a tensor's value or shape as a Python value (an if, a dict key, a loop bound).\n  fix: "
        f"{leaf}, or wrap the function it calls with torch.fx.wrap('name') at module level so that it is "
        "recorded as one call, or fix Python-level arguments with concrete_args={...}")


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
          leaf_modules: Iterable[type | str] = (), concrete_args: dict[str, Any] | None = None,
          strict: bool = False) -> Graph:
    """Trace ``model`` into a :class:`Graph` whose compiled module computes the same outputs.

    ``example_inputs``: one tensor per tensor argument of ``forward``: ``(batch, features)``,
    ``(batch, channels, length)`` / ``(batch, channels, height, width)`` for convolutional models
    (the graph's image/sequence nodes keep the example's spatial sizes), ``(batch, tokens,
    features)`` for token models. Give the batch a size no other dimension has (e.g. 3): the
    tracer recognises batched tensors by it.
    ``leaf_modules``: module classes or qualified names (``"body.gate"``) kept whole as frozen
    opaque edges (each holds a deep copy of the module; growth never touches it).
    ``concrete_args``: passed to torch.fx to fix Python arguments that steer control flow; the
    traced graph then takes only the tensor inputs.
    Ops outside the growable vocabulary become op nodes that run the original code (one
    :class:`~daggrow.errors.OpaqueOpWarning` lists them with their source lines); with
    ``strict=True`` the first of them raises a :class:`TraceError` instead. What torch.fx itself
    cannot trace (data-dependent control flow) raises :class:`TraceError` naming the source line
    and the fix. The graph holds copies of the weights: training it leaves ``model`` untouched.
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
    for node in fx_graph.nodes:  # messages name a module call with its class: the module `features.3` (ReLU6)
        if node.op == "call_module":
            node.meta["module_type"] = type(gm.get_submodule(node.target)).__name__
    _propagate_shapes(model, gm, _placeholder_values(model, fx_graph, inputs, concrete_args), inputs)
    leaf_targets = {str(n.target) for n in fx_graph.nodes if n.op == "call_module" and (
        n.target in leaf_names or isinstance(gm.get_submodule(n.target), leaf_types))}
    builder = GraphBuilder(gm, leaf_targets, batch=inputs[0].shape[0] if inputs[0].ndim else 1, strict=strict)
    try:
        graph = builder.run()
        graph.validate(complete=True)
    except GraphError as err:
        raise TraceError(f"the traced graph of {type(model).__name__} is invalid: {err} (this is a daggrow bug: "
                         "please report it with the model)") from None
    if builder.opaque_reasons:
        warnings.warn(OpaqueOpWarning(_opaque_message(type(model).__name__, builder.opaque_reasons)), stacklevel=2)
    return graph


def _opaque_message(name: str, reasons: list[tuple[str, str]]) -> str:
    """One line per op kept opaque (ops of the same kind on the same line grouped), then what that means."""
    nodes: dict[str, list[str]] = {}
    for node, what in reasons:
        nodes.setdefault(what, []).append(node)
    lines = [f"  - {what} (node{'s' if len(ns) > 1 else ''} {', '.join(ns[:4])}{', …' if len(ns) > 4 else ''})"
             for what, ns in nodes.items()]
    return (f"{name}: {len(reasons)} op(s) outside daggrow's growable vocabulary are kept in op nodes that run "
            "the original code (exact; growth never changes them or widens what they read):\n" + "\n".join(lines)
            + "\n  trace(..., strict=True) refuses them instead")
