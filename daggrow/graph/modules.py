"""Describe opaque modules as data, and rebuild them from data without running saved code.

A graph's frozen edges and op nodes hold modules daggrow did not write (an ``nn.GRU``, an
``nn.MultiheadAttention``, a user's leaf module, an op's program). Saving them by pickle would
make loading run whatever the file says. Instead each module gets a :class:`ModuleRecord`:

* ``torch``: a class of the ``torch.nn`` namespace (``torch.nn.GRU``) and the constructor
  arguments that rebuild it (recovered from its attributes, then checked: the rebuilt module
  must have the same attributes, submodule types and tensor shapes);
* ``container``: ``nn.Sequential`` / ``ModuleList`` / ``ModuleDict`` of described children;
* ``opaque``: an :class:`~daggrow.graph.opaque.OpaqueOp`, whose program is the node's JSON
  ``op`` (allow-listed names only) and whose modules are described children;
* ``pickled``: anything else (user classes, hooks, programs calling functions outside the
  allow-list): kept by pickle in ``frozen.pt``, loaded only when the caller trusts the folder.

Tensors are saved apart (``weights.pt``, read with ``weights_only=True``). Loading resolves a
``torch`` class by name in ``torch.nn`` only and never imports anything.

>>> record, _ = describe(torch.nn.GRU(4, 8, batch_first=True), {})
>>> record.kind, record.cls, record.kwargs["hidden_size"], record.kwargs["batch_first"]
('torch', 'torch.nn.GRU', 8, True)
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import PersistenceError
from .opaque import EncodeError, OpaqueOp, UnsafeOpError, decode, encode

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NOT_REBUILT = {"Module", "DataParallel", "Parameter", "UninitializedParameter", "UninitializedBuffer"}
_MISSING = object()


class ModuleRecord(BaseModel):
    """How to rebuild one module (see the module doc); ``children`` name other records by id."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["torch", "container", "opaque", "pickled"]
    cls: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    children: dict[str, str] = Field(default_factory=dict)


# ------------------------------------------------------------------------------------------ describe
def describe(module: nn.Module, ids: dict[int, str], records: dict[str, ModuleRecord] | None = None
             ) -> tuple[ModuleRecord, str]:
    """The record of ``module`` and its id; ``ids`` (id(module) → record id) and ``records``
    collect it and its children, so a module used in several places is recorded once."""
    records = {} if records is None else records
    if id(module) in ids:
        return records[ids[id(module)]], ids[id(module)]
    key = str(len(ids))
    ids[id(module)] = key
    record = _record(module, ids, records)
    records[key] = record
    return record, key


def _record(module: nn.Module, ids: dict[int, str], records: dict[str, ModuleRecord]) -> ModuleRecord:
    if _has_hooks(module):
        return ModuleRecord(kind="pickled", cls=_path(type(module)))
    if isinstance(module, OpaqueOp):
        if not module.describable:
            return ModuleRecord(kind="pickled", cls=_path(type(module)))
        children = {slot: describe(child, ids, records)[1] for slot, child in module.named_children()}
        return ModuleRecord(kind="opaque", cls="daggrow.OpaqueOp", children=children)
    if type(module) in _CONTAINERS:
        children = {name: describe(child, ids, records)[1] for name, child in module.named_children()}
        return ModuleRecord(kind="container", cls=_path(type(module)), children=children)
    kwargs = torch_arguments(module)
    if kwargs is None:
        return ModuleRecord(kind="pickled", cls=_path(type(module)))
    return ModuleRecord(kind="torch", cls=_path(type(module)), kwargs=kwargs)


def _path(cls: type) -> str:
    """``torch.nn.GRU`` for a class of the torch.nn namespace, else its module path (for messages)."""
    return f"torch.nn.{cls.__name__}" if getattr(nn, cls.__name__, None) is cls else f"{cls.__module__}.{cls.__qualname__}"


def _torch_class(name: str) -> type | None:
    """A module class of the ``torch.nn`` namespace by its name, else ``None``."""
    cls = getattr(nn, name, None)
    if name in _NOT_REBUILT or not isinstance(cls, type) or not issubclass(cls, nn.Module) or cls in _CONTAINERS:
        return None
    return cls


def _has_hooks(module: nn.Module) -> bool:
    return any(len(getattr(m, name, ())) for m in module.modules() for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
        "_load_state_dict_pre_hooks"))


def _recover(module: nn.Module, name: str) -> Any:
    """A constructor argument's value, read back from the module's attributes."""
    if name == "bias" and isinstance(module, nn.MultiheadAttention):
        return module.in_proj_bias is not None
    if name == "add_bias_kv" and isinstance(module, nn.MultiheadAttention):
        return module.bias_k is not None
    if name == "bias" and (getattr(module, "bias", 0) is None or isinstance(getattr(module, "bias", 0), nn.Parameter)):
        return module.bias is not None
    value = getattr(module, name, _MISSING)
    if isinstance(value, (torch.Tensor, nn.Module)) or callable(value):
        return _MISSING
    return value


def torch_arguments(module: nn.Module) -> dict[str, Any] | None:
    """JSON constructor arguments that rebuild ``module`` (a ``torch.nn`` class), checked by
    rebuilding it on the meta device; ``None`` when they cannot be recovered."""
    cls = type(module)
    if _torch_class(cls.__name__) is not cls:
        return None
    kwargs: dict[str, Any] = {}
    for p in _parameters(cls):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("device", "dtype"):
            continue
        value = _recover(module, p.name)
        if value is _MISSING:
            if p.default is p.empty:
                return None
            continue
        try:
            kwargs[p.name] = encode(value)
        except EncodeError:
            return None
    try:
        with torch.device("meta"):
            rebuilt = cls(**{k: decode(v) for k, v in kwargs.items()})
    except Exception:  # a constructor that refuses the recovered arguments: keep the module by pickle
        return None
    return kwargs if _same(module, rebuilt) else None


def _parameters(cls: type) -> list[inspect.Parameter]:
    """The constructor's parameters; the recurrent layers take ``*args`` and pass them to
    ``nn.RNNBase`` (after their ``mode``), whose parameters these are."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if issubclass(cls, nn.RNNBase) and cls is not nn.RNNBase:
        params = [p for p in list(inspect.signature(nn.RNNBase.__init__).parameters.values())[1:]
                  if p.name != "mode" and (p.name != "proj_size" or cls is nn.LSTM)]
        if cls is nn.RNN:
            params.insert(2, inspect.Parameter("nonlinearity", inspect.Parameter.KEYWORD_ONLY, default="tanh"))
    return params


def _same(a: nn.Module, b: nn.Module) -> bool:
    """Same types, plain attributes, children and tensor shapes (values are loaded afterwards)."""
    if type(a) is not type(b) or [n for n, _ in a.named_children()] != [n for n, _ in b.named_children()]:
        return False
    skip = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}
    for name in set(vars(a)) | set(vars(b)):
        if name in skip or name.endswith("_hooks") or name.endswith("_hooks_with_kwargs") or \
                name.endswith("_hooks_always_called"):
            continue
        x, y = vars(a).get(name, _MISSING), vars(b).get(name, _MISSING)
        if _is_state(x) and _is_state(y):
            continue  # tensors (compared by the state dicts) and the RNNs' lists of weight references
        try:
            if x is not y and not bool(x == y):
                return False
        except Exception:
            return False
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or any(tuple(sa[k].shape) != tuple(sb[k].shape) for k in sa):
        return False
    return all(_same(x, y) for (_, x), (_, y) in zip(a.named_children(), b.named_children()))


def _is_state(value: Any) -> bool:
    if isinstance(value, (torch.Tensor, nn.Module, weakref.ref)):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(_is_state(v) for v in value)


def own_tensors(module: nn.Module, record: ModuleRecord) -> dict[str, tuple[torch.Tensor, bool | None]]:
    """The tensors saved for a record: a torch module's whole state dict; an op's own constants
    (its modules are records of their own); nothing for containers and pickled modules.
    Values are ``(tensor, requires_grad or None for a buffer)``."""
    if record.kind == "torch":
        params = dict(module.named_parameters())
        return {k: (t, params[k].requires_grad if k in params else None) for k, t in module.state_dict().items()}
    if record.kind == "opaque":
        out = {k: (t, t.requires_grad) for k, t in module.named_parameters(recurse=False)}
        out.update({k: (t, None) for k, t in module.named_buffers(recurse=False)})
        return out
    return {}


# ------------------------------------------------------------------------------------------ rebuild
def rebuild(records: dict[str, ModuleRecord], key: str, tensors: dict[str, torch.Tensor],
            grads: dict[str, bool | None], pickled: dict[str, nn.Module], programs: dict[str, Any],
            built: dict[str, nn.Module]) -> nn.Module:
    """Module ``key`` from its record: tensors under ``module:<key>.``, ``grads`` their
    ``requires_grad`` (None: buffer), ``programs[key]`` the OpSpec of an op, ``pickled`` the
    trusted modules read from ``frozen.pt``. ``built`` memoises (shared modules stay shared)."""
    if key in built:
        return built[key]
    record = records.get(key)
    if record is None:
        raise PersistenceError(f"module record {key!r} is missing")
    prefix = f"module:{key}."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if record.kind == "pickled":
        if key not in pickled:
            raise PersistenceError(f"the pickled module {key!r} ({record.cls}) is not in frozen.pt")
        module = pickled[key]
    elif record.kind == "container":
        cls = {f"torch.nn.{c.__name__}": c for c in _CONTAINERS}.get(record.cls)
        if cls is None:
            raise PersistenceError(f"unknown container class {record.cls!r}")
        module = cls()
        for name, child in record.children.items():
            module.add_module(name, rebuild(records, child, tensors, grads, pickled, programs, built))
    elif record.kind == "opaque":
        if key not in programs:
            raise PersistenceError(f"op module {key!r} belongs to no op node")
        children = {slot: rebuild(records, c, tensors, grads, pickled, programs, built)
                    for slot, c in record.children.items()}
        constants = {k: nn.Parameter(v, requires_grad=bool(grads[prefix + k])) if grads.get(prefix + k) is not None
                     else v for k, v in state.items()}
        try:
            module = OpaqueOp(programs[key], children, constants)
        except UnsafeOpError as err:
            raise PersistenceError(f"op module {key!r}: {err}; daggrow refuses to run it") from None
    else:
        module = _rebuild_torch(record, key, state, grads, prefix)
    built[key] = module
    return module


def _rebuild_torch(record: ModuleRecord, key: str, state: dict[str, torch.Tensor], grads: dict[str, bool | None],
                   prefix: str) -> nn.Module:
    cls = _torch_class(record.cls.removeprefix("torch.nn.")) if record.cls.startswith("torch.nn.") else None
    if cls is None:
        raise PersistenceError(f"module {key!r}: {record.cls!r} is not a module class of torch.nn; daggrow rebuilds "
                               "only those without trust")
    try:
        kwargs = {k: decode(v) for k, v in record.kwargs.items()}
        with torch.device("meta"):
            shell = cls(**kwargs)
        expected = {k: tuple(t.shape) for k, t in shell.state_dict().items()}
        if expected != {k: tuple(t.shape) for k, t in state.items()}:
            raise PersistenceError(f"module {key!r} ({record.cls}): its saved tensors do not match its arguments")
        module = cls(**kwargs)
        module.load_state_dict(state, strict=True, assign=True)
    except PersistenceError:
        raise
    except Exception as err:  # bad arguments from a damaged file
        raise PersistenceError(f"module {key!r} ({record.cls}) cannot be rebuilt: {type(err).__name__}: "
                               f"{' '.join(str(err).split())}") from None
    for name, param in module.named_parameters():
        if grads.get(prefix + name) is not None:
            param.requires_grad_(bool(grads[prefix + name]))
    return module
