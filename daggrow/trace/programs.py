"""Turn a run of fx nodes outside the growable vocabulary into the program of an op node.

The fx nodes of a :class:`~daggrow.trace.values.Fragment` become the steps of an
:class:`~daggrow.graph.opaque.OpaqueOp`: calls of functions and tensor methods, calls of the
modules they use (deep copies, through the trace's one memo so that shared modules stay
shared) and reads of parameters and buffers (``self.cls_token``: copied, still trainable).
An argument that has no JSON form is kept in memory (the op then saves only by pickle).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from ..graph.opaque import Call, EncodeError, OpaqueOp, Ref, encode, function_name, qualified_name
from ..graph.spec import OpSpec, OpStep
from .source import source_line


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def step_name(node: fx.Node) -> str:
    """A short name of what an fx node does: ``mul``, ``permute``, ``layer_norm``, ``mha``."""
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_module":
        return str(node.target).rsplit(".", 1)[-1]
    return str(node.target)


def build_op(gm: fx.GraphModule, body: list[fx.Node], positions: dict[fx.Node, int], inputs: int,
             output: fx.Node, memo: dict[int, Any], aliases: dict[fx.Node, fx.Node] | None = None) -> OpaqueOp:
    """The op computing ``output`` by ``body`` from ``inputs`` values: ``positions`` gives the
    program input each outside fx node is (two fx values of one graph node share a position).

    ``aliases`` maps fx nodes the tracer passed through (``h.contiguous()``, eval-mode dropout) to the
    body node whose value they are. Modules and tensors are deep-copied through ``memo`` (one per trace). A module called with
    ``inplace=True`` gets ``inplace=False`` on its copy, and an ``inplace=True`` keyword becomes
    ``False``: the tracer only lets an op work in place when nothing else reads its input, and
    the graph keeps values that other code (statistics, the line search) may read afterwards.
    """
    index = dict(positions)
    count = inputs
    modules: dict[str, nn.Module] = {}
    constants: dict[str, torch.Tensor] = {}
    slots: dict[int, str] = {}
    calls: list[Call] = []
    steps: list[OpStep] = []

    def slot_of(obj: Any, prefix: str) -> str:
        if id(obj) not in slots:
            slots[id(obj)] = f"{prefix}{sum(1 for s in slots.values() if s.startswith(prefix))}"
            copied = copy.deepcopy(obj, memo)
            if isinstance(copied, nn.Module):
                if getattr(copied, "inplace", False) is True:
                    copied.inplace = False
                modules[slots[id(obj)]] = copied
            else:
                constants[slots[id(obj)]] = copied
        return slots[id(obj)]

    aliases = aliases or {}

    def ref(n: fx.Node) -> Ref:
        return Ref(index[aliases.get(n, n)])

    for node in body:
        args = fx.node.map_arg(node.args, ref)
        kwargs = dict(fx.node.map_arg(node.kwargs, ref))
        if kwargs.get("inplace") is True:
            kwargs["inplace"] = False
        if node.op == "call_function":
            target: Any = node.target
            name = function_name(target) or qualified_name(target)
            call = "function"
        elif node.op == "call_method":
            target = name = _out_of_place(str(node.target))
            call = "method"
        elif node.op == "call_module":
            target = name = slot_of(gm.get_submodule(str(node.target)), "m")
            call = "module"
        else:  # get_attr: a parameter, buffer or tensor constant (or a submodule)
            value = _fetch(gm, str(node.target))
            call = "module" if isinstance(value, nn.Module) else "constant"
            target = name = slot_of(value, "m" if call == "module" else "p")
        calls.append(Call(call, target, tuple(args), kwargs))
        steps.append(OpStep(call=call, target=name, args=[_encoded(a) for a in args],
                            kwargs={k: _encoded(v) for k, v in kwargs.items()}))
        index[node] = count
        count += 1
    spec = OpSpec(inputs=inputs, steps=steps, output=index[output], label=label(body),
                  modules={slot: type(m).__name__ for slot, m in modules.items()},
                  source=_sources(body))
    return OpaqueOp(spec, modules, constants, calls=calls)


def _out_of_place(method: str) -> str:
    """``add_`` → ``add``, ``bernoulli_`` → ``bernoulli``, ``view`` → ``reshape`` (same values): the tracer lets a method write in place only
    when nothing else reads its input, so the out-of-place method gives the same values without
    writing into a node's value that statistics or the line search may still read."""
    if method.endswith("_") and not method.endswith("__") and callable(getattr(torch.Tensor, method[:-1], None)):
        return method[:-1]
    if method == "view":  # the tracer passes `.contiguous()` through: a view after a transpose must copy
        return "reshape"
    return method


def _encoded(value: Any) -> Any:
    try:
        return encode(value)
    except EncodeError as err:
        return {"object": str(err)}  # not JSON: the op runs, but saves only by pickle


def label(body: list[fx.Node]) -> str:
    """``permute → layer_norm → permute`` (the tensor ops of the program, at most five)."""
    names = [step_name(n) for n in body if n.op != "get_attr" and "tensor_meta" in n.meta]
    names = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]
    return " → ".join(names[:5]) + (" → …" if len(names) > 5 else "")


def _sources(body: list[fx.Node]) -> str:
    lines = list(dict.fromkeys(source_line(n).removeprefix(" at ") for n in body if source_line(n)))
    return "; ".join(lines[:3]) + ("; …" if len(lines) > 3 else "")
