"""Walk a shape-annotated torch.fx graph and build the IR in normal form.

Every IR node is ``h = dropout(σ(norm(Σ in-edges)))``. While walking, an fx value is one of

* an IR node name (``str``): a tensor that already is a node;
* a :class:`Pending` sum of edge terms such as ``self.b(h) + h`` (optionally followed by a
  norm), not yet a node;
* a :class:`Static` value that is not a tensor (a shape, a concrete argument).

A pending sum becomes a node only when something needs one: a Linear or leaf module reading
it, an activation (the node takes that activation), the output, or a second reader. So
``torch.relu(self.b(h) + h)`` is one node with a linear and an identity in-edge and a relu,
and no useless node appears. A scalar multiple scales identity edges or folds into the
Linear edge's weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from ..errors import TraceError
from ..graph import FrozenBlock, Graph, IdentityBlock, LinearBlock, NormSpec
from . import ops
from .checks import WeightOwners, check_in_place, in_place_error
from .copies import copy_norm_state, linear_copy
from .source import LEAF_FIX, op_name, trace_error
from .uses import live_nodes, produces_tensor, value_uses
from .values import Pending, Static, Term, first_arg, merge_identities, other_arg


class GraphBuilder:
    """Turns one shape-propagated ``fx.GraphModule`` into a :class:`Graph` (see the module doc)."""

    def __init__(self, gm: fx.GraphModule, leaf_targets: set[str]) -> None:
        self.gm, self.leaf_targets = gm, leaf_targets
        self.graph = Graph()
        self.values: dict[fx.Node, Any] = {}
        self.uses = value_uses(gm.graph)
        self.absorbed: dict[fx.Node, str] = {}          # dropout fx node → node that took its rate
        self.owners = WeightOwners()
        self.copies: dict[int, Any] = {}                # deepcopy memo shared by the frozen modules
        self.live: set[fx.Node] = set(gm.graph.nodes)

    # ================================================================== driver
    def run(self) -> Graph:
        check_in_place(self.gm, self.uses, self.leaf_targets)
        self.live = live_nodes(self.gm.graph)
        self.uses = value_uses(self.gm.graph, among=self.live)
        for node in self.gm.graph.nodes:
            if node not in self.live:
                continue
            value = self.visit(node)
            if isinstance(value, Pending) and self.uses[node] > 1:
                self.node_of(value, node)  # several readers share one node
            self.values[node] = value
        self.check_inputs_used()
        return self.graph

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self.visit_placeholder(node)
        if node.op == "output":
            return self.visit_output(node)
        if not produces_tensor(node):
            return Static(node.name)
        if not isinstance(node.meta["tensor_meta"], TensorMetadata):
            raise self.fail(node, f"{op_name(node)}, which returns several tensors",
                            "a daggrow edge carries one tensor: move the code that uses the several outputs into "
                            "one module mapping a tensor to a tensor, and pass that module in leaf_modules=[...]")
        if node.op == "get_attr":
            raise self.fail(node, f"the direct use of the attribute `self.{node.target}`",
                            "wrap parameters in a module such as nn.Linear, or keep the module that uses them "
                            "with leaf_modules=[...]")
        if node.op != "call_module" and not any(self.is_tensor(a) for a in node.all_input_nodes):
            raise self.fail(node, f"{op_name(node)}, which creates a new tensor inside forward",
                            "pass the tensor as an input of the model, or keep the module that creates it "
                            "with leaf_modules=[...]")
        if node.op == "call_module":
            return self.visit_module(node)
        if node.op == "call_function":
            return self.visit_function(node, node.target, node.args, node.kwargs)
        return self.visit_method(node)

    # ================================================================== helpers
    fail = staticmethod(trace_error)

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    def width(self, node: fx.Node) -> int:
        shape = self.shape(node)
        if len(shape) != 2:
            raise self.fail(node, f"{op_name(node)}, which gives a tensor of shape {shape}",
                            "daggrow traces (batch, features) tensors for now (image and sequence tensors "
                            "come with convolutions); keep this part in a module passed with leaf_modules=[...] "
                            "whose output is (batch, features)")
        return shape[1]

    def is_tensor(self, node: fx.Node) -> bool:
        return isinstance(self.values.get(node), (str, Pending))

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def fresh(self, base: str) -> str:
        name, i = base, 2
        while name in self.graph.nodes:
            name, i = f"{base}_{i}", i + 1
        return name

    def fresh_edge(self, base: str) -> str:
        name, i = base, 2
        while name in self.graph.edges:
            name, i = f"{base}_{i}", i + 1
        return name

    def tensor(self, node: fx.Node, arg: Any) -> Any:
        """The builder value of a tensor argument (an IR node name or a pending sum)."""
        value = self.values.get(arg) if isinstance(arg, fx.Node) else arg
        if isinstance(value, (str, Pending)):
            return value
        if isinstance(value, Static):
            raise self.fail(node, f"{op_name(node)} applied to `{value.origin}`, a value computed while tracing "
                            "(a shape or a concrete argument), not a tensor", "pass tensors between layers")
        raise self.fail(node, f"{op_name(node)} applied to the constant {value!r}",
                        "pass tensors between layers; constants belong inside modules")

    def node_of(self, value: Any, node: fx.Node) -> str:
        """The IR node holding ``value``, materialising a pending sum once."""
        value = self.tensor(node, value)
        if isinstance(value, str):
            return value
        if value.open:
            terms = merge_identities(value.terms)
            if value.norm is None and len(terms) == 1 and terms[0].kind == "identity" and terms[0].scale == 1.0:
                value.materialised = terms[0].source  # `h + 0`, `sum([h])`: no new node needed
            else:
                value.materialised = self.make_node(value, "identity", {}, value.origin)
        return value.materialised

    def terms_of(self, value: Any, node: fx.Node) -> list[Term]:
        """The terms ``value`` contributes to a sum (an identity edge when it already is a node)."""
        value = self.tensor(node, value)
        if isinstance(value, Pending) and value.open and value.norm is None:
            return list(value.terms)
        return [Term("identity", self.node_of(value, node))]

    # ================================================================== making nodes and edges
    def make_node(self, pending: Pending, activation: str, params: dict, name: str, dropout: float = 0.0) -> str:
        name = self.fresh(name)
        norm_spec, norm_module = pending.norm if pending.norm else (None, None)
        self.graph.add_node(name, pending.width, activation, activation_params=params, norm=norm_spec,
                            dropout=dropout)
        if norm_module is not None:
            copy_norm_state(norm_module, self.graph.norm_module(name))
        for term in merge_identities(pending.terms):
            self.add_term(term, name)
        pending.materialised = name
        return name

    def add_term(self, term: Term, target: str) -> None:
        if term.kind == "identity":
            self.graph.add_edge(term.source, target, IdentityBlock(scale=term.scale))
        elif term.kind == "linear":
            module = linear_copy(term.module, term.scale)
            self.graph.add_edge(term.source, target, LinearBlock(bias=module.bias is not None),
                                name=self.fresh_edge(term.name), module=module)
        else:
            module = copy.deepcopy(term.module, self.copies)  # one copy per module, shared by its calls
            block = FrozenBlock(module_type=type(module).__name__)
            if term.scale == 1.0:
                self.graph.add_edge(term.source, target, block, name=self.fresh_edge(term.name), module=module)
                return
            middle = self.fresh(term.origin)  # the scale cannot fold into an opaque module
            self.graph.add_node(middle, self.graph.node(target).width)
            self.graph.add_edge(term.source, middle, block, name=self.fresh_edge(term.name), module=module)
            self.graph.add_edge(middle, target, IdentityBlock(scale=term.scale))

    # ================================================================== placeholders and output
    def visit_placeholder(self, node: fx.Node) -> Any:
        if not produces_tensor(node):
            return Static(node.name)  # a concrete argument
        shape = self.shape(node)
        if len(shape) != 2:
            raise TraceError(f"cannot trace the input `{node.target}` of shape {shape}: daggrow traces "
                             "(batch, features) inputs for now; image and sequence tensors are not supported "
                             "yet (they come with convolutions).\n  fix: flatten the input to (batch, features) "
                             "before calling the model, e.g. model(x.flatten(1))")
        name = self.fresh(node.name)
        self.graph.add_input(name, shape[1])
        return name

    def visit_output(self, node: fx.Node) -> None:
        result = node.args[0]
        outs = result if isinstance(result, (tuple, list)) else (result,)
        names: list[str] = []
        for out in outs:
            if not isinstance(out, fx.Node) or not self.is_tensor(out):
                raise self.fail(node, f"a model that returns {type(result).__name__} {result!r}",
                                "return a tensor or a tuple of tensors")
            name = self.node_of(self.values[out], node)
            if name in self.graph.inputs or name in names:  # an output needs a node of its own
                name = self.make_node(Pending([Term("identity", name)], "output", self.graph.node(name).width),
                                      "identity", {}, "output")
            names.append(name)
        self.graph.set_output(*names)

    def check_inputs_used(self) -> None:
        outputs = set(self.graph.outputs)
        for name in self.graph.inputs:
            if not self.graph.descendants(name) & outputs:
                raise TraceError(f"cannot trace: the input `{name}` does not affect the output (forward never "
                                 "reads its values, or only its shape).\n  fix: remove it from forward's "
                                 "arguments, or fix it with concrete_args={...}")

    # ================================================================== modules
    def visit_module(self, node: fx.Node) -> Any:
        module = self.module(node)
        if node.target in self.leaf_targets:
            return self.visit_leaf(node, module)
        if isinstance(module, nn.Linear):
            self.owners.claim(node, module, "linear")
            source = self.node_of(first_arg(node.args, node.kwargs), node)
            return Pending([Term("linear", source, module=module, name=str(node.target), origin=node.name)],
                           node.name, self.width(node))
        try:
            activation = ops.activation_of_module(module)
            rate = ops.dropout_rate(node, module) if ops.is_dropout(node, module) else None
        except ops.Unsupported as err:
            raise self.fail(node, err.what, err.fix) from None
        if activation is not None:
            return self.activation(node, first_arg(node.args, node.kwargs), *activation)
        if isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)):
            return self.norm(node, module)
        if rate is not None:
            return self.dropout(node, rate)
        if isinstance(module, nn.Flatten):
            return self.no_op(node)
        raise self.fail(node, f"the module `{node.target}` ({type(module).__name__})",
                        f"keep it as a frozen opaque edge with leaf_modules=[{type(module).__name__}] "
                        f"(or leaf_modules=['{node.target}']); growth never touches it")

    def visit_leaf(self, node: fx.Node, module: nn.Module) -> Pending:
        arguments = [*node.args, *node.kwargs.values()]
        if len(arguments) != 1 or not isinstance(arguments[0], fx.Node):
            raise self.fail(node, f"the leaf module `{node.target}` called with {len(arguments)} arguments",
                            "a frozen edge reads exactly one tensor: wrap the call in a module that takes one "
                            "tensor and pass that module in leaf_modules")
        self.owners.claim(node, module, "leaf")
        source = self.node_of(arguments[0], node)
        return Pending([Term("frozen", source, module=module, name=str(node.target), origin=node.name)],
                       node.name, self.width(node))

    def norm(self, node: fx.Node, module: nn.Module) -> Pending:
        if isinstance(module, nn.LayerNorm) and (len(module.normalized_shape) != 1
                                                 or (module.weight is not None and module.bias is None)):
            raise self.fail(node, f"nn.LayerNorm{tuple(module.normalized_shape)} "
                            f"(bias={module.bias is not None})",
                            "use nn.LayerNorm(features) with its bias, over the last dimension")
        self.owners.claim(node, module, "norm")
        if isinstance(module, nn.BatchNorm1d):
            spec = NormSpec(kind="batchnorm", eps=module.eps, momentum=module.momentum, affine=module.affine,
                            track_running_stats=module.track_running_stats)
        else:
            spec = NormSpec(kind="layernorm", eps=module.eps, affine=module.elementwise_affine)
        value = self.tensor(node, first_arg(node.args, node.kwargs))
        if isinstance(value, Pending) and value.open and value.norm is None:
            return Pending(list(value.terms), node.name, value.width, norm=(spec, module))
        return Pending([Term("identity", self.node_of(value, node))], node.name, self.width(node),
                       norm=(spec, module))

    # ================================================================== activations and dropout
    def activation(self, node: fx.Node, arg: Any, activation: str, params: dict) -> Any:
        value = self.tensor(node, arg)
        if activation == "identity":
            return value
        rate, dropout_node = self.dropout_after(node)
        if not (isinstance(value, Pending) and value.open):
            source = self.node_of(value, node)
            value = Pending([Term("identity", source)], node.name, self.graph.node(source).width)
        name = self.make_node(value, activation, params, node.name, dropout=rate)
        if dropout_node is not None:
            self.absorbed[dropout_node] = name
        return name

    def dropout_after(self, node: fx.Node) -> tuple[float, fx.Node | None]:
        """The rate of a dropout that is the only reader of ``node`` (it then joins ``node``'s IR node)."""
        if self.uses[node] != 1:
            return 0.0, None
        reader = next(u for u in node.users if u in self.live and (u.op == "output" or produces_tensor(u)))
        if reader.op == "call_module" and reader.target in self.leaf_targets:
            return 0.0, None
        module = self.module(reader)
        if not ops.is_dropout(reader, module) or first_arg(reader.args, reader.kwargs) is not node:
            return 0.0, None
        try:
            rate = ops.dropout_rate(reader, module)
        except ops.Unsupported:
            return 0.0, None
        return (rate, reader) if rate > 0 else (0.0, None)

    def dropout(self, node: fx.Node, rate: float) -> Any:
        if node in self.absorbed:
            return self.absorbed[node]
        value = self.tensor(node, first_arg(node.args, node.kwargs))
        if rate == 0:
            return value
        if isinstance(value, Pending) and value.open:
            return self.make_node(value, "identity", {}, value.origin, dropout=rate)
        source = self.node_of(value, node)
        pending = Pending([Term("identity", source)], node.name, self.graph.node(source).width)
        return self.make_node(pending, "identity", {}, node.name, dropout=rate)

    def no_op(self, node: fx.Node) -> Any:
        source = first_arg(node.args, node.kwargs)
        if not isinstance(source, fx.Node) or self.shape(node) != self.shape(source):
            raise self.fail(node, f"{op_name(node)}, which changes the shape "
                            f"{self.shape(source) if isinstance(source, fx.Node) else ''} to {self.shape(node)}",
                            "daggrow traces (batch, features) tensors for now: only reshapes that keep "
                            "(batch, features) are accepted; " + LEAF_FIX)
        return self.tensor(node, source)

    # ================================================================== functions and methods
    def visit_method(self, node: fx.Node) -> Any:
        method = node.target
        activation = ops.activation_of_method(method)
        if activation is not None:
            return self.activation(node, node.args[0], activation, {})
        if method in ops.METHOD_FUNCTIONS:
            return self.visit_function(node, ops.METHOD_FUNCTIONS[method], node.args, node.kwargs)
        if method in ops.SHAPE_METHODS:
            return self.no_op(node)
        if ops.mutates_input(node, None):
            raise in_place_error(node)
        raise self.fail(node, op_name(node),
                        "daggrow traces Linear layers, activations, norms, dropout, sums and scalar multiples; "
                        + LEAF_FIX)

    def visit_function(self, node: fx.Node, fn: Any, args: tuple, kwargs: dict) -> Any:
        try:
            activation = ops.activation_of_function(fn, args, kwargs)
            if activation is not None:
                return self.activation(node, first_arg(args, kwargs), *activation)
            if fn is torch.nn.functional.dropout:
                return self.dropout(node, ops.dropout_rate(node, None))
        except ops.Unsupported as err:
            raise self.fail(node, err.what, err.fix) from None
        if fn in ops.ADD or fn in ops.SUB:
            alpha = kwargs.get("alpha", 1)
            if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
                raise self.fail(node, f"{op_name(node)} with alpha={alpha!r}", "write alpha as a Python number")
            second = -alpha if fn in ops.SUB else alpha
            return self.sum(node, [(first_arg(args, kwargs), 1.0), (other_arg(args, kwargs), float(second))])
        if fn in ops.MUL or fn in ops.DIV:
            if kwargs.get("rounding_mode") is not None:
                raise self.fail(node, f"{op_name(node)} with rounding_mode={kwargs['rounding_mode']!r}",
                                "rounded division is not linear; " + LEAF_FIX)
            return self.scale(node, fn, first_arg(args, kwargs), other_arg(args, kwargs))
        if fn in ops.NEG:
            return self.scaled(node, first_arg(args, kwargs), -1.0)
        if fn in ops.SHAPE_FUNCTIONS:
            return self.no_op(node)
        if fn is torch.nn.functional.linear:
            raise self.fail(node, "torch.nn.functional.linear with weights held as attributes",
                            "use an nn.Linear module (its weights become the edge's weights)")
        if ops.mutates_input(node, None):
            raise in_place_error(node)
        raise self.fail(node, f"the operation {op_name(node)}",
                        "daggrow traces Linear layers, activations, norms, dropout, sums and scalar multiples; "
                        + LEAF_FIX)

    def sum(self, node: fx.Node, operands: list[tuple[Any, float]]) -> Pending:
        """``Σ sign · operand``: the terms of the tensor operands; a literal 0 (from ``sum([...])``) is skipped."""
        terms: list[Term] = []
        for operand, sign in operands:
            if not isinstance(operand, fx.Node):
                if isinstance(operand, (int, float)) and not isinstance(operand, bool) and operand == 0:
                    continue
                raise self.fail(node, f"{op_name(node)} of a tensor and the constant {operand!r}",
                                "a node is a sum of edges: put constants in a module's bias (an nn.Linear)")
            if isinstance(self.values.get(operand), Static):
                raise self.fail(node, f"{op_name(node)} of a tensor and `{operand.name}`, a value computed while "
                                "tracing (e.g. from a shape)", "write the constant, or keep this in a leaf module")
            if self.shape(operand) != self.shape(node):
                raise self.fail(node, f"{op_name(node)} that broadcasts a tensor of shape {self.shape(operand)} "
                                f"to {self.shape(node)}", "make both operands (batch, features) of the same width "
                                "(e.g. with an nn.Linear)")
            terms += [t.scaled(sign) for t in self.terms_of(self.values[operand], node)]
        return Pending(terms, node.name, self.width(node))

    def scale(self, node: fx.Node, fn: Any, a: Any, b: Any) -> Pending:
        """``a * b`` or ``a / b`` where exactly one side is a tensor and the other a Python number."""
        tensors = [isinstance(x, fx.Node) and self.is_tensor(x) for x in (a, b)]
        statics = [isinstance(x, fx.Node) and isinstance(self.values.get(x), Static) for x in (a, b)]
        if all(tensors):
            raise self.fail(node, f"{op_name(node)} of two tensors",
                            "a node is a sum of its in-edges, so products of tensors cannot be expressed; "
                            "keep that part in a module passed with leaf_modules=[...] (a frozen edge)")
        if any(statics):
            raise self.fail(node, f"{op_name(node)} by a value computed while tracing (e.g. from a shape)",
                            "write the factor as a Python number (widths are fixed in the graph)")
        tensor, factor = (a, b) if tensors[0] else (b, a)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise self.fail(node, f"{op_name(node)} by {factor!r}", "scale tensors by Python numbers only")
        if fn in ops.DIV:
            if not tensors[0]:
                raise self.fail(node, f"{op_name(node)} of a number by a tensor", "division by a tensor is not "
                                "linear; " + LEAF_FIX)
            if factor == 0:
                raise self.fail(node, f"{op_name(node)} by zero", "divide by a non-zero number")
            factor = 1.0 / factor
        return self.scaled(node, tensor, float(factor))

    def scaled(self, node: fx.Node, arg: Any, factor: float) -> Pending:
        terms = [t.scaled(factor) for t in self.terms_of(self.tensor(node, arg), node)]
        return Pending(terms, node.name, self.width(node))

