"""Walk a shape-annotated torch.fx graph and build the IR in normal form.

Every IR node is ``h = dropout(σ(norm(Σ in-edges)))``. While walking, an fx value is one of

* an IR node name (``str``): a tensor that already is a node;
* a :class:`Pending` sum of edge terms such as ``self.b(h) + h`` (optionally followed by a
  norm), not yet a node;
* a :class:`Static` value that is not a tensor (a shape, a concrete argument).

A pending sum becomes a node only when something needs one: a Linear, conv, pooling or leaf
module reading it, an activation (the node takes that activation), the output, or a second
reader. So ``torch.relu(self.b(h) + h)`` is one node with a linear and an identity in-edge and
a relu, and no useless node appears. A scalar multiple scales identity edges or folds into the
Linear (or conv) edge's weights.

Tensors are ``(batch, features)``, ``(batch, channels, length)`` or ``(batch, channels, height,
width)``; a value's ``width`` is its features or channels and its ``shape`` the spatial rest.
Convolutions and poolings are edges into image/sequence nodes; a flatten to ``(batch,
features)`` is a pending flatten term, which a Linear reading it alone takes over: "conv →
flatten → linear" is one linear edge from the conv's node (the IR flattens implicitly).
A norm followed by a sum (``bn2(conv2(h)) + x``) makes a node of its own, since a node's
norm applies after its sum.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from ..errors import TraceError
from ..graph import (
    FlattenBlock,
    FrozenBlock,
    Graph,
    IdentityBlock,
    LinearBlock,
    NormSpec,
    PoolBlock,
)
from . import ops, spatial
from .checks import WeightOwners, check_in_place, in_place_error
from .copies import conv_copy, copy_norm_state, linear_copy
from .source import LEAF_FIX, op_name, trace_error
from .uses import live_nodes, produces_tensor, value_uses
from .values import Pending, Static, Term, first_arg, merge_identities, other_arg

SHAPES = ("daggrow traces (batch, features), (batch, channels, length) and (batch, channels, height, width) "
          "tensors")
TRACED = ("daggrow traces Linear and conv layers, poolings, flatten, activations, norms, dropout, sums and scalar "
          "multiples; ")


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
            if self.pool_kind(node) is not None:
                return self.pool(node)  # refuses return_indices=True with its own fix
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

    def layout(self, node: fx.Node) -> tuple[int, tuple[int, ...]]:
        """``(width, spatial shape)`` of a traced tensor: features or channels, then the rest."""
        shape = self.shape(node)
        if not 2 <= len(shape) <= 4:
            raise self.fail(node, f"{op_name(node)}, which gives a tensor of shape {shape}",
                            f"{SHAPES}; keep this part in a module passed with leaf_modules=[...] whose output "
                            "has one of these shapes")
        return shape[1], shape[2:]

    def pending(self, terms: list[Term], node: fx.Node, norm: Any = None) -> Pending:
        """A pending sum of ``terms`` with the layout of ``node``'s tensor."""
        width, shape = self.layout(node)
        return Pending(terms, node.name, width, shape, norm=norm)

    def identity(self, source: str, origin: str) -> Pending:
        """The pending value ``1 · h_source`` (to give a node's value an activation, norm, …)."""
        spec = self.graph.node(source)
        return Pending([Term("identity", source)], origin, spec.width, spec.shape)

    @staticmethod
    def call_name(node: fx.Node) -> str:
        """An edge name for a call: the module's qualified path, or the fx node's name."""
        return str(node.target) if node.op == "call_module" else node.name

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
        self.graph.add_node(name, pending.width, activation, shape=pending.shape, activation_params=params,
                            norm=norm_spec, dropout=dropout)
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
        elif term.kind == "conv":
            module = conv_copy(term.module, term.block, term.scale)
            self.graph.add_edge(term.source, target, term.block, name=self.fresh_edge(term.name), module=module)
        else:
            block, module = self.fixed_block(term)
            if term.scale == 1.0:
                self.graph.add_edge(term.source, target, block, name=self.fresh_edge(term.name), module=module)
                return
            middle = self.fresh(term.origin)  # the scale cannot fold into an opaque or parameter-free block
            spec = self.graph.node(target)
            self.graph.add_node(middle, spec.width, shape=spec.shape)
            self.graph.add_edge(term.source, middle, block, name=self.fresh_edge(term.name), module=module)
            self.graph.add_edge(middle, target, IdentityBlock(scale=term.scale))

    def fixed_block(self, term: Term) -> tuple[Any, nn.Module | None]:
        """The block and module of a frozen, pooling or flatten term (``None``: the default nn.Identity)."""
        if term.kind != "frozen":
            return term.block, None
        module = copy.deepcopy(term.module, self.copies)  # one copy per module, shared by its calls
        return FrozenBlock(module_type=type(module).__name__), module

    # ================================================================== placeholders and output
    def visit_placeholder(self, node: fx.Node) -> Any:
        if not produces_tensor(node):
            return Static(node.name)  # a concrete argument
        shape = self.shape(node)
        if not 2 <= len(shape) <= 4:
            raise TraceError(f"cannot trace the input `{node.target}` of shape {shape}: {SHAPES}.\n  fix: "
                             "reshape the input to one of these before calling the model, e.g. model(x.flatten(1))")
        name = self.fresh(node.name)
        self.graph.add_input(name, shape[1], shape[2:])
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
                name = self.make_node(self.identity(name, "output"), "identity", {}, "output")
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
            source = self.linear_source(node)
            return self.pending([Term("linear", source, module=module, name=str(node.target), origin=node.name)],
                                node)
        if isinstance(module, spatial.CONVS):
            return self.conv(node, module)
        if self.pool_kind(node) is not None:
            return self.pool(node)
        try:
            activation = ops.activation_of_module(module)
            rate = ops.dropout_rate(node, module) if ops.is_dropout(node, module) else None
        except ops.Unsupported as err:
            raise self.fail(node, err.what, err.fix) from None
        if activation is not None:
            return self.activation(node, first_arg(node.args, node.kwargs), *activation)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            return self.norm(node, module)
        if rate is not None:
            return self.dropout(node, rate)
        if isinstance(module, nn.Flatten):
            return self.reshape(node)
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
        return self.pending([Term("frozen", source, module=module, name=str(node.target), origin=node.name)], node)

    def linear_source(self, node: fx.Node) -> str:
        """The node an ``nn.Linear`` reads: the un-flattened node when it reads a flatten alone."""
        arg = first_arg(node.args, node.kwargs)
        value = self.tensor(node, arg)
        shape = self.shape(arg)
        if len(shape) != 2:
            what = f"the input `{arg.target}`" if arg.op == "placeholder" else f"the tensor `{arg.name}`"
            raise self.fail(node, f"the module `{node.target}` (Linear) applied to {what} of shape {shape}: a "
                            "Linear over the last dimension of a sequence/image tensor is not supported yet",
                            "flatten the input to (batch, features) first, e.g. `self.fc(torch.flatten(h, 1))` "
                            "(flatten then Linear becomes one linear edge from the un-flattened node), or mix "
                            "channels with a 1×1 nn.Conv1d/nn.Conv2d; else " + LEAF_FIX)
        if isinstance(value, Pending) and value.open and value.norm is None and len(value.terms) == 1:
            term = value.terms[0]
            if term.kind == "flatten" and term.scale == 1.0:
                return term.source  # the linear edge flattens its image/sequence source itself
        return self.node_of(value, node)

    # ================================================================== convolutions, pooling, flatten
    def conv(self, node: fx.Node, module: nn.Module) -> Pending:
        arg = first_arg(node.args, node.kwargs)
        self.tensor(node, arg)
        label = f"the module `{node.target}` ({type(module).__name__})"
        try:
            block = spatial.conv_block(module, self.shape(arg), self.shape(node), label)
        except ops.Unsupported as err:
            raise self.fail(node, err.what, err.fix) from None
        self.owners.claim(node, module, "conv")
        source = self.node_of(arg, node)
        return self.pending([Term("conv", source, module=module, name=str(node.target), origin=node.name,
                                  block=block)], node)

    def pool_kind(self, node: fx.Node) -> tuple[str, int] | None:
        """``(op, dim)`` of a pooling module or function call, ``None`` for anything else."""
        if node.op == "call_module" and node.target not in self.leaf_targets:
            return spatial.POOL_MODULES.get(type(self.module(node)))
        if node.op == "call_function":
            try:
                return spatial.POOL_FUNCTIONS.get(node.target)
            except TypeError:  # an unhashable target
                return None
        return None

    def pool(self, node: fx.Node) -> Pending:
        op, dim = self.pool_kind(node)
        arg = first_arg(node.args, node.kwargs)
        self.tensor(node, arg)
        if node.op == "call_module":
            label = f"the module `{node.target}` ({type(self.module(node)).__name__})"
            options = spatial.module_pool_options(self.module(node), op)
        else:
            label = op_name(node)
            options = spatial.call_pool_options(op, node.args, node.kwargs, node.target)
        out = self.shape(node) if isinstance(node.meta["tensor_meta"], TensorMetadata) else ()
        try:
            block = spatial.pool_block(op, dim, options, self.shape(arg), out, label)
        except ops.Unsupported as err:
            raise self.fail(node, err.what, err.fix) from None
        source = self.node_of(arg, node)
        return self.pending([Term("pool", source, name=self.call_name(node), origin=node.name, block=block)], node)

    def flatten(self, node: fx.Node, arg: Any) -> Pending:
        """``torch.flatten(h, 1)`` of an image/sequence tensor: a flatten term (a Linear may take it over)."""
        source = self.node_of(arg, node)
        return self.pending([Term("flatten", source, name=self.call_name(node), origin=node.name,
                                  block=FlattenBlock())], node)

    def mean(self, node: fx.Node, args: tuple, kwargs: dict) -> Pending:
        """A mean over every spatial dimension: global average pooling (then a flatten unless ``keepdim``)."""
        arg = first_arg(args, kwargs)
        self.tensor(node, arg)
        shape = self.shape(arg)
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if not spatial.is_spatial_mean(dims, keepdim, len(shape)) or kwargs.get("dtype") is not None:
            raise self.fail(node, f"{op_name(node)} over dim={dims!r} of a tensor of shape {shape}",
                            "a mean over every spatial dimension of a (batch, channels, ...) tensor is read as "
                            "global average pooling (e.g. `h.mean((2, 3))`); other means are not sums of edges: "
                            + LEAF_FIX)
        ones = (1,) * (len(shape) - 2)
        block = PoolBlock(op="adaptive_avg", dim=len(ones), output_size=ones)
        source = self.node_of(arg, node)
        pooled = Pending([Term("pool", source, name=node.name, origin=node.name, block=block)], node.name,
                         shape[1], ones)
        if keepdim:
            return pooled
        return self.flatten(node, pooled)

    def norm(self, node: fx.Node, module: nn.Module) -> Pending:
        if isinstance(module, nn.LayerNorm) and len(self.shape(node)) != 2:
            raise self.fail(node, f"the module `{node.target}` (LayerNorm) applied to a tensor of shape "
                            f"{self.shape(node)}", "LayerNorm is supported on (batch, features) tensors: use "
                            "nn.BatchNorm1d/nn.BatchNorm2d on sequence/image tensors; else " + LEAF_FIX)
        if isinstance(module, nn.LayerNorm) and (len(module.normalized_shape) != 1
                                                 or (module.weight is not None and module.bias is None)):
            raise self.fail(node, f"nn.LayerNorm{tuple(module.normalized_shape)} "
                            f"(bias={module.bias is not None})",
                            "use nn.LayerNorm(features) with its bias, over the last dimension")
        self.owners.claim(node, module, "norm")
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            spec = NormSpec(kind="batchnorm", eps=module.eps, momentum=module.momentum, affine=module.affine,
                            track_running_stats=module.track_running_stats)
        else:
            spec = NormSpec(kind="layernorm", eps=module.eps, affine=module.elementwise_affine)
        value = self.tensor(node, first_arg(node.args, node.kwargs))
        if isinstance(value, Pending) and value.open and value.norm is None:
            return Pending(list(value.terms), node.name, value.width, value.shape, norm=(spec, module))
        return self.pending([Term("identity", self.node_of(value, node))], node, norm=(spec, module))

    # ================================================================== activations and dropout
    def activation(self, node: fx.Node, arg: Any, activation: str, params: dict) -> Any:
        value = self.tensor(node, arg)
        if activation == "identity":
            return value
        rate, dropout_node = self.dropout_after(node)
        if not (isinstance(value, Pending) and value.open):
            value = self.identity(self.node_of(value, node), node.name)
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
        pending = self.identity(self.node_of(value, node), node.name)
        return self.make_node(pending, "identity", {}, node.name, dropout=rate)

    def reshape(self, node: fx.Node) -> Any:
        """A view that keeps the shape (the value itself), or one that flattens (batch, C, ...) to (batch, C·...)."""
        source = first_arg(node.args, node.kwargs)
        before = self.shape(source) if isinstance(source, fx.Node) and produces_tensor(source) else None
        after = self.shape(node)
        if before == after:
            return self.tensor(node, source)
        if before is not None and len(before) > 2 and after == (before[0], math.prod(before[1:])):
            return self.flatten(node, source)
        fix = ("daggrow accepts reshapes that keep the shape, and flattening (batch, channels, ...) to (batch, "
               "features) (`torch.flatten(h, 1)`, `h.view(h.size(0), -1)`, nn.Flatten()); ")
        if isinstance(source, fx.Node) and source.op == "placeholder" and len(after) > len(before or ()):
            fix += (f"give the model inputs already shaped {after} (reshape them before calling it; this "
                    "reshape then keeps the shape), or ")
        raise self.fail(node, f"{op_name(node)}, which changes the shape {before or ''} to {after}", fix + LEAF_FIX)

    # ================================================================== functions and methods
    def visit_method(self, node: fx.Node) -> Any:
        method = node.target
        activation = ops.activation_of_method(method)
        if activation is not None:
            return self.activation(node, node.args[0], activation, {})
        if method in ops.METHOD_FUNCTIONS:
            return self.visit_function(node, ops.METHOD_FUNCTIONS[method], node.args, node.kwargs)
        if method in ops.SHAPE_METHODS:
            return self.reshape(node)
        if method == "mean":
            return self.mean(node, node.args, node.kwargs)
        if ops.mutates_input(node, None):
            raise in_place_error(node)
        raise self.fail(node, op_name(node), TRACED + LEAF_FIX)

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
            return self.reshape(node)
        if self.pool_kind(node) is not None:
            return self.pool(node)
        if fn is torch.mean:
            return self.mean(node, args, kwargs)
        if fn is torch.nn.functional.linear:
            raise self.fail(node, "torch.nn.functional.linear with weights held as attributes",
                            "use an nn.Linear module (its weights become the edge's weights)")
        if ops.mutates_input(node, None):
            raise in_place_error(node)
        raise self.fail(node, f"the operation {op_name(node)}", TRACED + LEAF_FIX)

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
                                f"to {self.shape(node)}", "make both operands of the same shape (e.g. with an "
                                "nn.Linear, or a 1×1 convolution for channels)")
            terms += [t.scaled(sign) for t in self.terms_of(self.values[operand], node)]
        return self.pending(terms, node)

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
        return self.pending(terms, node)

