"""Opaque ops: the programs of op nodes, and the allow-list that makes them safe to load.

An op node's value is a short program of torch calls (an :class:`~daggrow.graph.spec.OpSpec`)
applied to its inputs, with the modules and tensors it uses kept in an :class:`OpaqueOp`
module. A program is plain JSON: functions are named (``torch.cat``, ``operator.mul``,
``torch.nn.functional.layer_norm``), arguments are numbers, strings, tagged tuples, slices,
dtypes and references ``{"ref": i}`` to earlier values. Loading one resolves every name through
an allow-list (ATen functions of ``torch``, ``torch.functional``, ``torch.nn.functional``, the
``operator`` module, ``getattr`` of tensor metadata, public tensor methods), so a saved program
can compute but never import, open files or run other code.

>>> op = OpaqueOp(OpSpec(inputs=2, steps=[OpStep(call="function", target="operator.mul",
...                                               args=[{"ref": 0}, {"ref": 1}])], output=2))
>>> op(torch.tensor([2.0]), torch.tensor([3.0]))
tensor([6.])
"""

from __future__ import annotations

import builtins
import inspect
import math
import operator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GraphError
from .spec import OpSpec, OpStep


class UnsafeOpError(GraphError):
    """A program names a function, method or attribute outside the allow-list."""


@dataclass(frozen=True)
class Ref:
    """Value ``index`` of a program (its inputs first, then one per step)."""

    index: int


# ----------------------------------------------------------------------------- allow-list
_DENIED_FUNCTIONS = {"torch.from_file"}
_DENIED_OPERATORS = {"setitem", "delitem", "attrgetter", "itemgetter", "methodcaller", "call"}
_DENIED_METHODS = {"numpy", "tolist", "storage", "untyped_storage", "share_memory_", "pin_memory",
                   "register_hook", "register_post_accumulate_grad_hook", "backward", "apply_", "map_", "map2_",
                   "record_stream", "set_", "data_ptr", "untyped_storage", "module_load", "as_subclass"}
ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "T", "mT", "H", "mH", "is_cuda", "requires_grad"})


@lru_cache(maxsize=None)
def _functions() -> dict[str, Callable]:
    """Allowed function name → function."""
    table: dict[str, Callable] = {}
    for name in dir(torch._C._VariableFunctions):
        if not name.startswith("_") and callable(getattr(torch, name, None)):
            table[f"torch.{name}"] = getattr(torch, name)
    import torch.functional as torch_functional

    for name in torch_functional.__all__:
        table[f"torch.{name}"] = getattr(torch, name)
    for name in dir(F):
        obj = getattr(F, name)
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isbuiltin(obj)) and \
                getattr(obj, "__module__", "") in ("torch", "torch.nn.functional", "torch._C._nn"):  # not helpers
            table[f"torch.nn.functional.{name}"] = obj
    for name in dir(operator):
        obj = getattr(operator, name)
        in_place = name.startswith("i") and any(hasattr(operator, name[1:] + s) for s in ("", "_"))  # iadd, iand
        if not name.startswith("_") and inspect.isbuiltin(obj) and name not in _DENIED_OPERATORS and not in_place:
            table[f"operator.{name}"] = obj
    table["getattr"] = builtins.getattr
    for name in _DENIED_FUNCTIONS:
        table.pop(name, None)
    return table


@lru_cache(maxsize=None)
def _names() -> dict[int, str]:
    """id(function) → its allowed name (the first name found: ``torch.nn.functional.gelu``
    rather than nothing for ``torch._C._nn.gelu``)."""
    out: dict[int, str] = {}
    for name, fn in _functions().items():
        out.setdefault(id(fn), name)
    return out


@lru_cache(maxsize=None)
def _methods() -> frozenset[str]:
    names = {n for n in dir(torch.Tensor) if not n.startswith("_") and callable(getattr(torch.Tensor, n, None))}
    return frozenset(names - _DENIED_METHODS)


def function_name(fn: Any) -> str | None:
    """The allow-listed name of ``fn`` (``torch.cat``, ``operator.mul``), ``None`` if it has none."""
    try:
        return _names().get(id(fn)) if _functions().get(_names().get(id(fn), "")) is fn else None
    except TypeError:
        return None


def qualified_name(fn: Any) -> str:
    """A readable name for any callable (allow-listed or not), for labels and messages."""
    name = function_name(fn)
    if name is not None:
        return name
    module = getattr(fn, "__module__", None) or ""
    return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}".lstrip(".")


def resolve_function(name: str) -> Callable:
    try:
        return _functions()[name]
    except KeyError:
        raise UnsafeOpError(f"the function {name!r} is not in daggrow's allow-list of torch functions") from None


def check_method(name: str) -> None:
    if name not in _methods():
        raise UnsafeOpError(f"the tensor method {name!r} is not in daggrow's allow-list")


@lru_cache(maxsize=None)
def public_callable(fn: Callable) -> Callable:
    """``fn`` as fx should print it: a built-in such as ``torch._C._nn.gelu`` gets a thin wrapper
    named by its public name (``torch.nn.functional.gelu``), so generated code never shows a
    private ``torch._C`` path (the code fx generates calls the public function itself)."""
    name = function_name(fn)
    module = getattr(fn, "__module__", "") or ""
    if name is None or not name.startswith("torch.") or not module.startswith("torch._C"):
        return fn
    public_module, _, short = name.rpartition(".")

    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    call.__module__, call.__name__, call.__qualname__ = public_module, short, short
    return call


# ----------------------------------------------------------------------------- JSON arguments
class EncodeError(ValueError):
    """A constant argument that has no JSON form (the op is then kept only in memory or by pickle)."""


def encode(value: Any) -> Any:
    """A Python argument (with :class:`Ref` values) as tagged JSON."""
    if isinstance(value, Ref):
        return {"ref": value.index}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (tuple, torch.Size)):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [encode(value.start), encode(value.stop), encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise EncodeError(f"{type(value).__name__} {value!r}")


_TAGS = {"ref", "float", "tuple", "dict", "slice", "ellipsis", "dtype", "device", "memory_format"}


def decode(value: Any) -> Any:
    """Tagged JSON back to the Python argument; raises :class:`UnsafeOpError` on anything unknown."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in _TAGS:
        raise UnsafeOpError(f"unknown argument {value!r} in an op program")
    (tag, inner), = value.items()
    if tag == "ref":
        if not isinstance(inner, int) or isinstance(inner, bool) or inner < 0:
            raise UnsafeOpError(f"bad reference {inner!r}")
        return Ref(inner)
    if tag == "float":
        if inner not in ("inf", "-inf", "nan"):
            raise UnsafeOpError(f"bad float {inner!r}")
        return float(inner)
    if tag == "tuple":
        return tuple(decode(v) for v in _list(inner))
    if tag == "dict":
        if not isinstance(inner, dict):
            raise UnsafeOpError(f"bad dict {inner!r}")
        return {str(k): decode(v) for k, v in inner.items()}
    if tag == "slice":
        parts = _list(inner)
        if len(parts) != 3:
            raise UnsafeOpError(f"bad slice {inner!r}")
        return slice(*(decode(v) for v in parts))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "dtype":
        dtype = getattr(torch, str(inner), None)
        if not isinstance(dtype, torch.dtype):
            raise UnsafeOpError(f"unknown dtype {inner!r}")
        return dtype
    if tag == "device":
        try:
            return torch.device(str(inner))
        except RuntimeError:
            raise UnsafeOpError(f"unknown device {inner!r}") from None
    fmt = getattr(torch, str(inner), None)
    if not isinstance(fmt, torch.memory_format):
        raise UnsafeOpError(f"unknown memory format {inner!r}")
    return fmt


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise UnsafeOpError(f"expected a list, got {value!r}")
    return value


def refs_in(value: Any) -> list[int]:
    """The value indices an argument refers to."""
    if isinstance(value, Ref):
        return [value.index]
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in refs_in(v)]
    if isinstance(value, dict):
        return [i for v in value.values() for i in refs_in(v)]
    if isinstance(value, slice):
        return refs_in([value.start, value.stop, value.step])
    return []


def substitute(value: Any, values: list[Any]) -> Any:
    """``value`` with every :class:`Ref` replaced by the value it names."""
    if isinstance(value, Ref):
        return values[value.index]
    if isinstance(value, list):
        return [substitute(v, values) for v in value]
    if isinstance(value, tuple):
        return tuple(substitute(v, values) for v in value)
    if isinstance(value, dict):
        return {k: substitute(v, values) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(substitute(value.start, values), substitute(value.stop, values), substitute(value.step, values))
    return value


# ----------------------------------------------------------------------------- the module
@dataclass(frozen=True)
class Call:
    """One decoded step: ``call`` kind, the target (a function, a method or slot name) and arguments."""

    call: str
    target: Any
    args: tuple
    kwargs: dict


class OpaqueOp(nn.Module):
    """The function of an op node: runs its program on the node's inputs.

    ``modules`` (slot → module) and ``constants`` (slot → tensor; ``nn.Parameter`` values stay
    trainable parameters, others are buffers) are what the program's ``module`` and
    ``constant`` steps read. ``calls`` are the decoded steps when they come from the tracer
    (they may hold functions outside the allow-list); without them the spec is decoded through
    the allow-list, raising :class:`UnsafeOpError` on any other name.
    """

    def __init__(self, spec: OpSpec, modules: dict[str, nn.Module] | None = None,
                 constants: dict[str, torch.Tensor] | None = None, calls: list[Call] | None = None) -> None:
        super().__init__()
        self.spec = spec
        for slot, module in (modules or {}).items():
            self.add_module(slot, module)
        for slot, tensor in (constants or {}).items():
            if isinstance(tensor, nn.Parameter):
                self.register_parameter(slot, tensor)
            else:
                self.register_buffer(slot, tensor)
        self.calls = calls if calls is not None else [self._decode(step) for step in spec.steps]
        self._check_references()

    def _decode(self, step: OpStep) -> Call:
        args, kwargs = tuple(decode(a) for a in step.args), {k: decode(v) for k, v in step.kwargs.items()}
        if step.call == "function":
            target = resolve_function(step.target)
            if target is builtins.getattr and (len(args) != 2 or args[1] not in ATTRIBUTES):
                raise UnsafeOpError(f"getattr of {args[1:]!r}: only tensor metadata ({', '.join(sorted(ATTRIBUTES))}) "
                                    "may be read")
        elif step.call == "method":
            check_method(step.target)
            target = step.target
        else:
            target = step.target
        return Call(step.call, target, args, kwargs)

    def _check_references(self) -> None:
        names = dict(self.named_children())
        tensors = {**dict(self.named_parameters(recurse=False)), **dict(self.named_buffers(recurse=False))}
        for i, call in enumerate(self.calls):
            index = self.spec.inputs + i
            if any(r >= index for r in refs_in([call.args, call.kwargs])):
                raise UnsafeOpError(f"step {i} of an op program reads a value computed after it")
            if call.call == "module" and call.target not in names:
                raise UnsafeOpError(f"step {i} calls the module slot {call.target!r}, which the op does not hold")
            if call.call == "constant" and call.target not in tensors:
                raise UnsafeOpError(f"step {i} reads the tensor slot {call.target!r}, which the op does not hold")

    @property
    def describable(self) -> bool:
        """True when the program is allow-listed JSON (it can be saved and loaded without pickle)."""
        try:
            for step in self.spec.steps:
                self._decode(step)
        except UnsafeOpError:
            return False
        return True

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) != self.spec.inputs:
            raise TypeError(f"the op takes {self.spec.inputs} input(s), got {len(inputs)}")
        values: list[Any] = list(inputs)
        for call in self.calls:
            args, kwargs = substitute(call.args, values), substitute(call.kwargs, values)
            if call.call == "function":
                out = call.target(*args, **kwargs)
            elif call.call == "method":
                out = getattr(args[0], call.target)(*args[1:], **kwargs)
            elif call.call == "module":
                out = getattr(self, call.target)(*args, **kwargs)
            else:
                out = getattr(self, call.target)
            values.append(out)
        return values[self.spec.output]

    def extra_repr(self) -> str:
        return f"{self.spec.label or 'op'}, {self.spec.inputs} input(s), {len(self.spec.steps)} step(s)"
