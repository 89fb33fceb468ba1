"""Generate a ``torch.fx.GraphModule`` from a :class:`~daggrow.graph.Graph`.

For ``x → h (relu) → y`` with linear edges ``a`` and ``b`` the generated code reads::

    def forward(self, x):
        a = self.a(x)
        h = torch.relu(a)
        b = self.b(h)
        return b

The module's submodules *are* the graph's edge modules, so training the compiled module
trains the graph. With ``taps=True`` every node's pre-activation sum ``z_v`` and value
``h_v`` pass through a :class:`Tap` (an identity module) that the statistics room hooks.
"""

from __future__ import annotations

import keyword
import operator
import re
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from ..graph.activations import get_activation
from ..graph.blocks import flattens_source, parameter_free_function
from ..graph.spec import PARAMETER_FREE_KINDS, IdentityBlock

if TYPE_CHECKING:
    from ..graph import Graph


class Tap(nn.Identity):
    """An identity placed on a node's pre-activation (``kind="pre"``) or value (``kind="value"``)."""

    def __init__(self, node: str, kind: str) -> None:
        super().__init__()
        self.node, self.kind = node, kind

    def extra_repr(self) -> str:
        return f"node={self.node!r}, kind={self.kind!r}"


class _Names:
    """Unique Python identifiers for submodule attributes."""

    _reserved = set(dir(nn.Module())) | {"forward", "code", "graph"}

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, raw: str) -> str:
        name = re.sub(r"\W", "_", raw)
        if not name or name[0].isdigit() or keyword.iskeyword(name) or name in self._reserved:
            name = f"m_{name}"
        base, i = name, 2
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def _identifier(raw: str) -> str:
    name = re.sub(r"\W", "_", raw)
    return name if name and not name[0].isdigit() and not keyword.iskeyword(name) else f"v_{name}"


def compile_graph(graph: "Graph", device: torch.device | str | None = None, *, taps: bool = False) -> fx.GraphModule:
    """Compile ``graph`` into a ``torch.fx.GraphModule``; parameters are shared, not copied.

    The module takes the inputs positionally in declaration order and returns the output
    (a tuple when several outputs are declared). ``device`` moves the shared parameters.
    """
    graph.validate(complete=True)
    root, code, names = nn.Module(), fx.Graph(), _Names()
    edge_attrs: dict[str, str] = {}
    tap_attrs: dict[tuple[str, str], str] = {}
    values: dict[str, fx.Node] = {}

    def add_module(raw: str, module: nn.Module) -> str:
        attr = names(raw)
        root.add_module(attr, module)
        return attr

    def tap(node: str, kind: str, value: fx.Node) -> fx.Node:
        attr = add_module(f"tap_{kind}_{node}", Tap(node, kind))
        tap_attrs[(node, kind)] = attr
        return code.create_node("call_module", attr, (value,), name=_identifier(f"{node}_{kind}"))

    for name in graph.inputs:
        values[name] = code.placeholder(_identifier(name))
        if taps:
            values[name] = tap(name, "value", values[name])

    for name in graph.topological_order():
        if name in values:
            continue
        spec = graph.node(name)
        terms: list[fx.Node] = []
        for edge in graph.in_edges(name):
            source = values[edge.source]
            if isinstance(edge.block, IdentityBlock) and edge.block.scale == 1.0:
                terms.append(source)
            elif edge.block.kind in PARAMETER_FREE_KINDS:
                fn, args, kwargs = parameter_free_function(edge.block)
                terms.append(code.create_node("call_function", fn, (source, *args), kwargs,
                                              name=_identifier(edge.name)))
            else:
                if flattens_source(edge.block, graph.node(edge.source)):
                    source = code.call_function(torch.flatten, (source, 1))
                attr = add_module(edge.name, graph.module(edge.name))
                edge_attrs[edge.name] = attr
                terms.append(code.create_node("call_module", attr, (source,), name=_identifier(edge.name)))
        value = terms[0]
        plain = spec.norm is None and spec.activation == "identity" and spec.dropout == 0 and not taps
        for i, term in enumerate(terms[1:], start=2):
            last = i == len(terms)
            value = code.create_node("call_function", operator.add, (value, term),
                                     name=_identifier(name if plain else f"{name}_sum") if last else None)
        if taps:
            value = tap(name, "pre", value)
        if spec.norm is not None:
            attr = add_module(f"norm_{name}", graph.norm_module(name))
            value = code.create_node("call_module", attr, (value,), name=_identifier(f"{name}_norm"))
        if spec.activation != "identity":
            act = get_activation(spec.activation)
            value = code.create_node("call_function", act.function, (value,), dict(spec.activation_params),
                                     name=_identifier(name))
        if spec.dropout > 0:
            attr = add_module(f"dropout_{name}", nn.Dropout(spec.dropout))
            value = code.create_node("call_module", attr, (value,), name=_identifier(f"{name}_dropout"))
        if taps:
            value = tap(name, "value", value)
        values[name] = value

    outputs = [values[o] for o in graph.outputs]
    code.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    module = fx.GraphModule(root, code, class_name="DaggrowModule")
    module.daggrow_edge_attrs = edge_attrs
    module.daggrow_tap_attrs = tap_attrs
    if device is not None:
        module.to(device)
    return module
