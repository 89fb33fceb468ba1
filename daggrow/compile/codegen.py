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

An op node's program is written out inline (``mul = sigmoid * relu``, ``permute = h.permute(0,
2, 3, 1)``), its modules and tensors registered under the node's ``op_<name>`` attribute; a
node that concatenates its in-edges (placements tiling its features) is one ``torch.cat``.
Functions appear under their public names (``torch.nn.functional.gelu``, never ``torch._C``).
"""

from __future__ import annotations

import keyword
import operator
import re
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from ..graph.activations import get_activation
from ..graph.blocks import flattens_source, parameter_free_function, tiles
from ..graph.opaque import public_callable, substitute
from ..graph.spec import PARAMETER_FREE_KINDS, IdentityBlock, PlaceBlock

if TYPE_CHECKING:
    from ..graph import Graph


class Tap(nn.Identity):
    """An identity placed on a node's pre-activation (``kind="pre"``) or value (``kind="value"``)."""

    def __init__(self, node: str, kind: str) -> None:
        super().__init__()
        self.node, self.kind = node, kind

    def extra_repr(self) -> str:
        return f"node={self.node!r}, kind={self.kind!r}"


class StochasticDepth(nn.Module):
    """Drops whole samples (``mode="row"``) or the whole batch (``"batch"``) with probability p in
    training, scaling what survives by 1/(1 − p); the identity in eval mode (torchvision's
    ``stochastic_depth``)."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        keep = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        return x * keep.div_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}"


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
        if taps and graph.node(name).layout != "opaque":
            values[name] = tap(name, "value", values[name])

    def emit_program(name: str, operands: list[fx.Node]) -> fx.Node:
        """The op node's program, inline; its modules and tensors live under ``op_<name>``."""
        attr = add_module(f"op_{name}", graph.op_module(name))
        program: list[fx.Node] = list(operands)
        for call in graph.op_module(name).calls:
            args, kwargs = substitute(call.args, program), substitute(call.kwargs, program)
            if call.call == "function":
                program.append(code.call_function(public_callable(call.target), args, kwargs))
            elif call.call == "method":
                program.append(code.call_method(call.target, args, kwargs))
            elif call.call == "module":
                program.append(code.call_module(f"{attr}.{call.target}", args, kwargs))
            else:
                program.append(code.get_attr(f"{attr}.{call.target}"))
        return program[graph.op_module(name).spec.output]

    for name in graph.topological_order():
        if name in values:
            continue
        spec = graph.node(name)
        observed = taps and spec.layout != "opaque"
        ins = graph.in_edges(name)
        order = tiles([e.block for e in ins], [graph.node(e.source) for e in ins], spec)
        terms: list[fx.Node] = []
        if spec.op is not None:
            terms.append(emit_program(name, [values[s] for s in graph.operands(name)]))
        elif order is not None and len(ins) > 1:
            parts = [values[ins[i].source] for i in order]
            terms.append(code.call_function(torch.cat, (parts, spec.feature_dim)))
        for edge in ins if spec.op is None and (order is None or len(ins) == 1) else []:
            source = values[edge.source]
            if isinstance(edge.block, IdentityBlock) and edge.block.scale == 1.0:
                terms.append(source)
            elif edge.block.kind in PARAMETER_FREE_KINDS:
                fn, args, kwargs = parameter_free_function(edge.block, graph.node(edge.source), spec)
                term = code.create_node("call_function", fn, (source, *args), kwargs, name=_identifier(edge.name))
                if isinstance(edge.block, PlaceBlock) and edge.block.scale != 1.0:
                    term = code.call_function(operator.mul, (term, edge.block.scale))
                terms.append(term)
            else:
                if flattens_source(edge.block, graph.node(edge.source)):
                    source = code.call_function(torch.flatten, (source, 1))
                attr = add_module(edge.name, graph.module(edge.name))
                edge_attrs[edge.name] = attr
                terms.append(code.create_node("call_module", attr, (source,), name=_identifier(edge.name)))
        value = terms[0]
        plain = spec.norm is None and spec.activation == "identity" and spec.dropout == 0 and not observed
        for i, term in enumerate(terms[1:], start=2):
            last = i == len(terms)
            value = code.create_node("call_function", operator.add, (value, term),
                                     name=_identifier(name if plain else f"{name}_sum") if last else None)
        if observed:
            value = tap(name, "pre", value)
        if spec.norm is not None:
            attr = add_module(f"norm_{name}", graph.norm_module(name))
            value = code.create_node("call_module", attr, (value,), name=_identifier(f"{name}_norm"))
        if spec.activation != "identity":
            act = get_activation(spec.activation)
            value = code.create_node("call_function", public_callable(act.function), (value,),
                                     dict(spec.activation_params), name=_identifier(name))
        if spec.dropout > 0:
            drop = nn.Dropout(spec.dropout) if spec.dropout_mode == "element" else \
                StochasticDepth(spec.dropout, spec.dropout_mode)
            attr = add_module(f"dropout_{name}", drop)
            value = code.create_node("call_module", attr, (value,), name=_identifier(f"{name}_dropout"))
        if observed:
            value = tap(name, "value", value)
        values[name] = value

    outputs = [values[o] for o in graph.outputs]
    code.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    module = fx.GraphModule(root, code, class_name="DaggrowModule")
    module._code = module._code.lstrip("\n")  # fx starts its source with blank lines
    module.daggrow_edge_attrs = edge_attrs
    module.daggrow_tap_attrs = tap_attrs
    if device is not None:
        module.to(device)
    return module
