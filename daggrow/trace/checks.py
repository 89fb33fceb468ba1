"""Refusals that look at the whole model: shared weights and in-place writes.

* A growable block (Linear, or a node's norm) must belong to one call: growing it for one use
  would change the other. Leaf modules may be shared: they are frozen.
* An in-place op changes what other readers of its input see, which a graph of edges cannot
  express; in-place activations and dropouts are fine when nobody else reads their input.
"""

from __future__ import annotations

import operator
from collections import Counter

from torch import fx, nn

from ..errors import TraceError
from . import ops
from .source import LEAF_FIX, op_name, trace_error
from .values import first_arg


class WeightOwners:
    """Which call first used each module and parameter, to refuse shared weights."""

    def __init__(self) -> None:
        self.owners: dict[int, tuple[str, str]] = {}  # id(module or parameter) → (fx target, kind)

    def claim(self, node: fx.Node, module: nn.Module, kind: str) -> None:
        """Record that ``node`` uses ``module`` as a ``kind`` ("linear", "norm" or "leaf") block.

        Raises :class:`TraceError` when the module or one of its parameters is already used by
        another call, unless both calls are leaf modules.
        """
        parts = [*module.modules(), *module.parameters()] if kind == "leaf" else [module, *module.parameters()]
        for part in parts:
            owner = self.owners.get(id(part))
            if owner is None or (kind == "leaf" and owner[1] == "leaf"):
                continue
            first, this = owner[0], str(node.target)
            label = f"the {'leaf ' if kind == 'leaf' else ''}module `{this}` ({type(module).__name__})"
            what = (f"{label}, called a second time" if part is module and first == this else
                    f"{label}, which shares weights with {'the leaf module ' if owner[1] == 'leaf' else ''}`{first}`")
            frozen = ", ".join(f"'{n}'" for n in dict.fromkeys([first, this]))
            raise trace_error(node, f"{what}: shared weights are not growable as-is (growing one use would change "
                              "the other)",
                              f"give each use its own module (e.g. `copy.deepcopy` of the layer) so that each "
                              f"becomes its own growable edge, or keep the weights frozen and shared with "
                              f"leaf_modules=[{frozen}] (frozen edges are never grown)")
        for part in parts:
            self.owners.setdefault(id(part), (str(node.target), kind))


_GROWABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


def shared_calls(gm: fx.GraphModule, live: set[fx.Node], leaf_targets: set[str]) -> set[fx.Node]:
    """Calls of growable modules (Linear, conv, norms) whose module or a parameter another call
    (or a direct read ``self.w``) also uses: the tracer keeps them in op nodes, sharing one copy."""
    users: dict[int, set[fx.Node]] = {}
    parts_of: dict[fx.Node, list] = {}
    for node in live:
        if node.op == "call_module":
            obj = gm.get_submodule(node.target)
        elif node.op == "get_attr":
            obj = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
        else:
            continue
        parts = [*obj.modules(), *obj.parameters()] if isinstance(obj, nn.Module) else [obj]
        parts_of[node] = parts
        for part in parts:
            users.setdefault(id(part), set()).add(node)
    return {node for node, parts in parts_of.items()
            if node.op == "call_module" and node.target not in leaf_targets
            and isinstance(gm.get_submodule(node.target), _GROWABLE)
            and any(len(users[id(p)]) > 1 for p in parts)}


def check_in_place(gm: fx.GraphModule, uses: Counter, leaf_targets: set[str]) -> None:
    """Refuse in-place ops, except activations and dropouts whose input (through views) nobody else reads.

    ``uses[n]`` counts the reads of ``n``'s value by every node, dead code included.
    """
    for node in gm.graph.nodes:
        if node.op not in ("call_method", "call_function", "call_module"):
            continue
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if not ops.mutates_input(node, module):
            continue
        if node.op == "call_module" and node.target in leaf_targets:
            raise trace_error(node, f"the leaf module `{node.target}`, which works in place (inplace=True)",
                              "create it with inplace=False: a frozen edge must not write into the node it reads")
        if not ops.is_allowed_in_place(node, module):
            raise in_place_error(node, module)
        source = first_arg(node.args, node.kwargs)
        while isinstance(source, fx.Node):
            if uses[source] > 1:
                raise trace_error(node, f"{op_name(node)}, which works in place, on a tensor that is also read "
                                  "elsewhere (the in-place write changes what the other readers see)",
                                  "write it out of place (`h = h + x` instead of `h.add_(x)`, torch.relu(h), "
                                  "nn.ReLU() without inplace=True)")
            source_module = gm.get_submodule(source.target) if source.op == "call_module" else None
            if not ops.is_alias(source, source_module):
                break
            source = first_arg(source.args, source.kwargs)


def in_place_error(node: fx.Node, module: nn.Module | None = None) -> TraceError:
    """The refusal of an in-place op whose input something else reads (or of an item assignment)."""
    if node.target is operator.setitem:
        return trace_error(node, "an item assignment `x[...] = ...`",
                           "build the tensor without assignment (e.g. torch.cat or torch.where); " + LEAF_FIX)
    if node.op == "call_method":
        what = f"the in-place tensor method .{node.target}() (call_method {node.target})"
    else:
        what = f"the in-place operation {op_name(node)}"
    return trace_error(node, what, "write it out of place (e.g. `h = h + x` instead of `h.add_(x)`): a graph of "
                       "values cannot express a write into a tensor that other code reads")
