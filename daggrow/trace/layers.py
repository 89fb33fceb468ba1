"""The layers the tracer makes growable: Linear, conv, pooling, flatten, norms, activations,
dropout and stochastic depth (a mixin of :class:`~daggrow.trace.builder.GraphBuilder`).

Each method returns the builder value of its fx node, or raises :class:`ops.Unsupported`
(before changing anything) when the call is outside what the IR expresses; the builder then
keeps it in an op node (or, with ``strict=True``, raises the :class:`TraceError`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from ..graph import FlattenBlock, NormSpec, PoolBlock
from . import ops, spatial
from .source import LEAF_FIX, op_name
from .uses import produces_tensor
from .values import Pending, Term, first_arg

if TYPE_CHECKING:
    from .builder import GraphBuilder


class LayerOps:
    """Modules, activations, norms, dropout, convolutions and poolings."""

    # ================================================================== modules
    def visit_module(self: "GraphBuilder", node: fx.Node) -> Any:
        module = self.module(node)
        label = op_name(node)
        if node.target in self.leaf_targets:
            return self.visit_leaf(node, module)
        if node in self.shared:
            raise ops.Unsupported(f"{label}, whose weights another call also uses (growing one use would change "
                                  "the other)", "give each use its own module (e.g. `copy.deepcopy` of the layer)")
        if isinstance(module, nn.Linear):
            source = self.linear_source(node)
            self.owners.claim(node, module, "linear")
            return self.pending([Term("linear", self.node_of(source, node), module=module, name=str(node.target),
                                      origin=node.name)], node)
        if isinstance(module, spatial.CONVS):
            return self.conv(node, module)
        if self.pool_kind(node) is not None:
            return self.pool(node)
        activation = ops.activation_of_module(module)
        rate = ops.dropout_rate(node, module) if ops.is_dropout(node, module) else None
        if activation is not None:
            return self.activation(node, first_arg(node.args, node.kwargs), *activation)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            return self.norm(node, module)
        if rate is not None:
            return self.dropout(node, rate)
        if isinstance(module, nn.Flatten):
            return self.reshape(node)
        raise ops.Unsupported(label, f"keep it whole with leaf_modules=[{type(module).__name__}] (or "
                                     f"leaf_modules=['{node.target}']), or trace without strict=True (it then "
                                     "becomes an op node); growth never touches it")

    def visit_leaf(self: "GraphBuilder", node: fx.Node, module: nn.Module) -> Any:
        """A leaf module: a frozen edge when it maps one tensor to one tensor, else an op node."""
        arguments = [*node.args, *node.kwargs.values()]
        one = len(arguments) == 1 and isinstance(arguments[0], fx.Node) and self.is_tensor(arguments[0]) \
            and isinstance(node.meta["tensor_meta"], TensorMetadata)
        self.owners.claim(node, module, "leaf")
        if not one:
            what = f"the leaf module `{node.target}` " + (
                "called with several arguments" if len(arguments) != 1 else "returning several tensors")
            raise ops.Unsupported(what, "a frozen edge reads one tensor and returns one: keep the code that uses "
                                        "it in one module that does, or trace without strict=True (an op node)")
        self.layout(node)  # a frozen edge's output must be a node
        source = self.node_of(arguments[0], node)
        return self.pending([Term("frozen", source, module=module, name=str(node.target), origin=node.name)], node)

    def linear_source(self: "GraphBuilder", node: fx.Node) -> Any:
        """The value an ``nn.Linear`` reads: the un-flattened node when it reads a flatten alone;
        a tokens value when it applies to the last dimension of a 3-d or 4-d tensor."""
        arg = first_arg(node.args, node.kwargs)
        value = self.tensor(node, arg)
        shape = self.shape(arg)
        if len(shape) != 2:
            _, _, layout = self.layout(arg)
            if layout != "tokens" or self.layout(node)[2] != "tokens":
                what = f"the input `{arg.target}`" if arg.op == "placeholder" else f"the tensor `{arg.name}`"
                raise ops.Unsupported(f"{op_name(node)} applied to {what} of shape {shape}, which a convolution or "
                                      "a pooling also reads as channels",
                                      "flatten the input to (batch, features) first, e.g. `self.fc(torch.flatten(h, "
                                      "1))`, or mix channels with a 1×1 nn.Conv1d/nn.Conv2d; else " + LEAF_FIX)
            return value
        if isinstance(value, Pending) and value.open and value.norm is None and len(value.terms) == 1:
            term = value.terms[0]
            if term.kind == "flatten" and term.scale == 1.0:
                value.taken = True
                return term.source  # the linear edge flattens its image/sequence source itself
        return value

    # ================================================================== convolutions, pooling, flatten
    def conv(self: "GraphBuilder", node: fx.Node, module: nn.Module) -> Pending:
        arg = first_arg(node.args, node.kwargs)
        self.tensor(node, arg)
        self._channels(node, arg)
        block = spatial.conv_block(module, self.shape(arg), self.shape(node), op_name(node))
        self.owners.claim(node, module, "conv")
        source = self.node_of(arg, node)
        return self.pending([Term("conv", source, module=module, name=str(node.target), origin=node.name,
                                  block=block)], node)

    def _channels(self: "GraphBuilder", node: fx.Node, arg: fx.Node) -> None:
        """Refuse a spatial op on a tensor the tracer reads as tokens."""
        if self.layout(arg)[2] != "channels":
            raise ops.Unsupported(f"{op_name(node)} applied to `{arg.name}`, which a Linear or LayerNorm also "
                                  "reads as tokens", "read one tensor either as channels or as tokens; " + LEAF_FIX)

    def pool_kind(self: "GraphBuilder", node: fx.Node) -> tuple[str, int] | None:
        """``(op, dim)`` of a pooling module or function call, ``None`` for anything else."""
        if node.op == "call_module" and node.target not in self.leaf_targets:
            return spatial.POOL_MODULES.get(type(self.module(node)))
        if node.op == "call_function":
            try:
                return spatial.POOL_FUNCTIONS.get(node.target)
            except TypeError:  # an unhashable target
                return None
        return None

    def pool(self: "GraphBuilder", node: fx.Node) -> Pending:
        op, dim = self.pool_kind(node)
        arg = first_arg(node.args, node.kwargs)
        self.tensor(node, arg)
        if node.op == "call_module":
            options = spatial.module_pool_options(self.module(node), op)
        else:
            options = spatial.call_pool_options(op, node.args, node.kwargs, node.target)
        out = self.shape(node) if isinstance(node.meta["tensor_meta"], TensorMetadata) else ()
        block = spatial.pool_block(op, dim, options, self.shape(arg), out, op_name(node))
        self._channels(node, arg)
        source = self.node_of(arg, node)
        return self.pending([Term("pool", source, name=self.call_name(node), origin=node.name, block=block)], node)

    def flatten(self: "GraphBuilder", node: fx.Node, arg: Any) -> Pending:
        """``torch.flatten(h, 1)`` of an image/sequence tensor: a flatten term (a Linear may take it over)."""
        self._channels(node, arg)
        self.layout(node)
        source = self.node_of(arg, node)
        return self.pending([Term("flatten", source, name=self.call_name(node), origin=node.name,
                                  block=FlattenBlock())], node)

    def mean(self: "GraphBuilder", node: fx.Node, args: tuple, kwargs: dict) -> Pending:
        """A mean over every spatial dimension: global average pooling (then a flatten unless ``keepdim``)."""
        arg = first_arg(args, kwargs)
        self.tensor(node, arg)
        shape = self.shape(arg)
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if not spatial.is_spatial_mean(dims, keepdim, len(shape)) or kwargs.get("dtype") is not None \
                or self.layout(arg)[2] != "channels":
            raise ops.Unsupported(f"{op_name(node)} over dim={dims!r} of a tensor of shape {shape}",
                                  "a mean over every spatial dimension of a (batch, channels, ...) tensor is read "
                                  "as global average pooling (e.g. `h.mean((2, 3))`); other means are not sums of "
                                  "edges: " + LEAF_FIX)
        self.layout(node)
        ones = (1,) * (len(shape) - 2)
        block = PoolBlock(op="adaptive_avg", dim=len(ones), output_size=ones)
        source = self.node_of(arg, node)
        pooled = Pending([Term("pool", source, name=node.name, origin=node.name, block=block)], node.name,
                         shape[1], ones)
        if keepdim:
            return pooled
        return Pending([Term("flatten", self.node_of(pooled, node), name=node.name, origin=node.name,
                             block=FlattenBlock())], node.name, shape[1], ())

    def norm(self: "GraphBuilder", node: fx.Node, module: nn.Module) -> Pending:
        width, shape, layout = self.layout(node)
        label = op_name(node)
        if isinstance(module, nn.LayerNorm):
            if shape and layout != "tokens":
                raise ops.Unsupported(f"{label} applied to a tensor of shape {self.shape(node)} read as channels",
                                      "LayerNorm normalises the features of a (batch, features) or (batch, tokens, "
                                      "features) tensor: use nn.BatchNorm1d/nn.BatchNorm2d on sequence/image "
                                      "tensors; else " + LEAF_FIX)
            if len(module.normalized_shape) != 1 or (module.weight is not None and module.bias is None):
                raise ops.Unsupported(f"nn.LayerNorm{tuple(module.normalized_shape)} "
                                      f"(bias={module.bias is not None})",
                                      "use nn.LayerNorm(features) with its bias, over the last dimension")
        elif layout == "tokens":
            raise ops.Unsupported(f"{label} applied to `{node.args[0]}`, read as tokens (a Linear or LayerNorm "
                                  "reads it over its last dimension)",
                                  "BatchNorm normalises channels: read this tensor as channels only; " + LEAF_FIX)
        value = self.tensor(node, first_arg(node.args, node.kwargs))
        self.owners.claim(node, module, "norm")
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            spec = NormSpec(kind="batchnorm", eps=module.eps, momentum=module.momentum, affine=module.affine,
                            track_running_stats=module.track_running_stats)
        else:
            spec = NormSpec(kind="layernorm", eps=module.eps, affine=module.elementwise_affine)
        if isinstance(value, Pending) and value.open and value.norm is None:
            value.taken = True
            return Pending(list(value.terms), node.name, width, shape, norm=(spec, module), layout=layout)
        return self.pending([Term("identity", self.node_of(value, node))], node, norm=(spec, module))

    # ================================================================== activations and dropout
    def activation(self: "GraphBuilder", node: fx.Node, arg: Any, activation: str, params: dict) -> Any:
        value = self.tensor(node, arg)
        if activation == "identity":
            return value
        self.layout(node)
        rate, mode, dropout_node = self.dropout_after(node)
        if not (isinstance(value, Pending) and value.open):
            value = self.identity(self.node_of(value, node), node.name)
        name = self.make_node(value, activation, params, node.name, dropout=rate, dropout_mode=mode)
        if dropout_node is not None:
            self.absorbed[dropout_node] = name
        return name

    def dropout_after(self: "GraphBuilder", node: fx.Node) -> tuple[float, str, fx.Node | None]:
        """The rate and mode of a dropout (or stochastic depth) that is the only reader of ``node``
        (it then joins ``node``'s IR node)."""
        if self.uses[node] != 1:
            return 0.0, "element", None
        reader = next(u for u in node.users if u in self.live and (u.op == "output" or produces_tensor(u)))
        if reader.op == "call_module" and reader.target in self.leaf_targets:
            return 0.0, "element", None
        if first_arg(reader.args, reader.kwargs) is not node:
            return 0.0, "element", None
        try:
            rate, mode = self.dropout_of(reader)
        except ops.Unsupported:
            return 0.0, "element", None
        return (rate, mode, reader) if rate > 0 else (0.0, "element", None)

    def dropout_of(self: "GraphBuilder", node: fx.Node) -> tuple[float, str]:
        """``(rate, mode)`` of a dropout or stochastic-depth call, ``(0, "")`` for other calls."""
        module = self.module(node)
        if ops.is_dropout(node, module):
            return ops.dropout_rate(node, module), "element"
        if node.op == "call_function" and ops.is_stochastic_depth(node.target):
            return ops.stochastic_depth_options(node)
        return 0.0, ""

    def dropout(self: "GraphBuilder", node: fx.Node, rate: float, mode: str = "element") -> Any:
        if node in self.absorbed:
            return self.absorbed[node]
        value = self.tensor(node, first_arg(node.args, node.kwargs))
        if rate == 0:
            return value
        self.layout(node)
        if isinstance(value, Pending) and value.open:
            return self.make_node(value, "identity", {}, value.origin, dropout=rate, dropout_mode=mode)
        pending = self.identity(self.node_of(value, node), node.name)
        return self.make_node(pending, "identity", {}, node.name, dropout=rate, dropout_mode=mode)
