"""Sums, scalar multiples, concatenations and reshapes: what the tracer reads as sums of edges
(a mixin of :class:`~daggrow.trace.builder.GraphBuilder`).

``a + b`` concatenates the operands' pending terms, ``c · a`` scales them (an identity edge's
scale, a Linear's or conv's copied weights), and ``torch.cat`` along the features or channels
is a sum of placements: each operand's node written into its slice of the concatenated
features. Other products, broadcasts, constants and reshapes raise :class:`ops.Unsupported`
(the builder keeps them in op nodes).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from ..graph import PlaceBlock
from . import ops
from .source import LEAF_FIX, op_name
from .uses import produces_tensor
from .values import Fragment, Pending, Static, Term, first_arg, other_arg

if TYPE_CHECKING:
    from .builder import GraphBuilder

TRACED = ("daggrow grows Linear and conv layers, poolings, flatten, activations, norms, dropout, sums, scalar "
          "multiples and concatenations; ")


class Arithmetic:
    """Functions and tensor methods: activations, arithmetic, concatenation, reshapes."""

    # ================================================================== functions and methods
    def visit_method(self: "GraphBuilder", node: fx.Node) -> Any:
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
        if ops.mutates_input(node, None):  # nothing else reads its input (checked first): an op node runs it
            raise ops.Unsupported(f"{op_name(node)}, which works in place", "write it out of place (`h = h * 2` "
                                  "instead of `h.mul_(2)`); " + LEAF_FIX)
        raise ops.Unsupported(op_name(node), TRACED + LEAF_FIX)

    def visit_function(self: "GraphBuilder", node: fx.Node, fn: Any, args: tuple, kwargs: dict) -> Any:
        activation = ops.activation_of_function(fn, args, kwargs)
        if activation is not None:
            return self.activation(node, first_arg(args, kwargs), *activation)
        if fn is torch.nn.functional.dropout or ops.is_stochastic_depth(fn):
            return self.dropout(node, *self.dropout_of(node))
        if fn in ops.ADD or fn in ops.SUB:
            alpha = kwargs.get("alpha", 1)
            if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
                raise ops.Unsupported(f"{op_name(node)} with alpha={alpha!r}", "write alpha as a Python number")
            second = -alpha if fn in ops.SUB else alpha
            return self.sum(node, [(first_arg(args, kwargs), 1.0), (other_arg(args, kwargs), float(second))])
        if fn in ops.MUL or fn in ops.DIV:
            if kwargs.get("rounding_mode") is not None:
                raise ops.Unsupported(f"{op_name(node)} with rounding_mode={kwargs['rounding_mode']!r}",
                                      "rounded division is not linear; " + LEAF_FIX)
            return self.scale(node, fn, first_arg(args, kwargs), other_arg(args, kwargs))
        if fn in ops.NEG:
            return self.scaled(node, first_arg(args, kwargs), -1.0)
        if fn in ops.SHAPE_FUNCTIONS:
            return self.reshape(node)
        if fn in ops.CONCATS:
            return self.concat(node, args, kwargs)
        if self.pool_kind(node) is not None:
            return self.pool(node)
        if fn is torch.mean:
            return self.mean(node, args, kwargs)
        if fn is torch.nn.functional.linear:
            raise ops.Unsupported("torch.nn.functional.linear with weights held as attributes",
                                  "use an nn.Linear module (its weights become the edge's weights)")
        if ops.mutates_input(node, None):  # nothing else reads its input (checked first): an op node runs it
            raise ops.Unsupported(f"{op_name(node)}, which works in place", "write it out of place (`h = h * 2` "
                                  "instead of `h.mul_(2)`); " + LEAF_FIX)
        raise ops.Unsupported(f"the operation {op_name(node)}", TRACED + LEAF_FIX)

    # ================================================================== sums and multiples
    def sum(self: "GraphBuilder", node: fx.Node, operands: list[tuple[Any, float]]) -> Pending:
        """``Σ sign · operand``: the terms of the tensor operands; a literal 0 (from ``sum([...])``) is skipped."""
        kept = []
        for operand, sign in operands:  # check every operand before taking any terms
            if not isinstance(operand, fx.Node):
                if isinstance(operand, (int, float)) and not isinstance(operand, bool) and operand == 0:
                    continue
                raise ops.Unsupported(f"{op_name(node)} of a tensor and the constant {operand!r}",
                                      "a node is a sum of edges: put constants in a module's bias (an nn.Linear)")
            if not self.is_tensor(operand):
                raise ops.Unsupported(f"{op_name(node)} of a tensor and `{operand.name}`, a value computed while "
                                      "tracing (e.g. from a shape)", "write the constant, or keep this in a leaf "
                                                                     "module")
            if self.shape(operand) != self.shape(node):
                raise ops.Unsupported(f"{op_name(node)} that broadcasts a tensor of shape {self.shape(operand)} "
                                      f"to {self.shape(node)}", "make both operands of the same shape (e.g. with an "
                                      "nn.Linear, or a 1×1 convolution for channels)")
            kept.append((operand, sign))
        self.layout(node)
        terms: list[Term] = []
        for operand, sign in kept:
            terms += [t.scaled(sign) for t in self.terms_of(self.values[operand], node)]
        return self.pending(terms, node)

    def scale(self: "GraphBuilder", node: fx.Node, fn: Any, a: Any, b: Any) -> Pending:
        """``a * b`` or ``a / b`` where exactly one side is a tensor and the other a Python number."""
        tensors = [isinstance(x, fx.Node) and self.is_tensor(x) for x in (a, b)]
        statics = [isinstance(x, fx.Node) and isinstance(self.values.get(x), (Static, Fragment)) and not t
                   for x, t in zip((a, b), tensors)]
        if all(tensors):
            raise ops.Unsupported(f"{op_name(node)} of two tensors",
                                  "a node is a sum of its in-edges, so products of tensors cannot be expressed; "
                                  "keep that part in a module passed with leaf_modules=[...] (a frozen edge)")
        if any(statics):
            raise ops.Unsupported(f"{op_name(node)} by a value computed while tracing (e.g. from a shape)",
                                  "write the factor as a Python number (widths are fixed in the graph)")
        tensor, factor = (a, b) if tensors[0] else (b, a)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise ops.Unsupported(f"{op_name(node)} by {factor!r}", "scale tensors by Python numbers only")
        if fn in ops.DIV:
            if not tensors[0]:
                raise ops.Unsupported(f"{op_name(node)} of a number by a tensor", "division by a tensor is not "
                                      "linear; " + LEAF_FIX)
            if factor == 0:
                raise ops.Unsupported(f"{op_name(node)} by zero", "divide by a non-zero number")
            factor = 1.0 / factor
        return self.scaled(node, tensor, float(factor))

    def scaled(self: "GraphBuilder", node: fx.Node, arg: Any, factor: float) -> Pending:
        value = self.tensor(node, arg)
        self.layout(node)
        terms = [t.scaled(factor) for t in self.terms_of(value, node)]
        return self.pending(terms, node)

    # ================================================================== concatenation
    def concat(self: "GraphBuilder", node: fx.Node, args: tuple, kwargs: dict) -> Pending:
        """``torch.cat`` along the features (channels) of equally laid-out tensors: a sum of
        placements, operand k into features [offset_k, offset_k + width_k)."""
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not tensors or not all(
                isinstance(t, fx.Node) and self.is_tensor(t) for t in tensors) or not isinstance(dim, int):
            raise ops.Unsupported(f"{op_name(node)} of {tensors!r} along dim={dim!r}",
                                  "concatenate tensors along their features, with dim a Python number; " + LEAF_FIX)
        width, shape, layout = self.layout(node)
        ndim = len(self.shape(node))
        feature = ndim - 1 if layout == "tokens" else 1
        parts = [self.layout(t) for t in tensors]
        if dim % ndim != feature or any((s, lay) != (shape, layout) for _, s, lay in parts):
            raise ops.Unsupported(f"{op_name(node)} along dim={dim} of tensors of shapes "
                                  f"{[self.shape(t) for t in tensors]}",
                                  "daggrow concatenates along the features or channels (dim=1, or the last dim of "
                                  "tokens); other concatenations stay inside op nodes; " + LEAF_FIX)
        terms, offset = [], 0
        for t, (w, _, _) in zip(tensors, parts):
            terms.append(Term("place", self.node_of(t, node), origin=node.name, block=PlaceBlock(offset=offset)))
            offset += w
        return self.pending(terms, node)

    # ================================================================== reshapes
    def reshape(self: "GraphBuilder", node: fx.Node) -> Any:
        """A view that keeps the shape (the value itself), or one that flattens (batch, C, ...) to (batch, C·...)."""
        source = first_arg(node.args, node.kwargs)
        before = self.shape(source) if isinstance(source, fx.Node) and produces_tensor(source) \
            and self.is_tensor(source) else None
        after = self.shape(node)
        if before == after:
            return self.tensor(node, source)
        if before is not None and len(before) > 2 and after == (before[0], math.prod(before[1:])) \
                and self.layout(source)[2] == "channels":
            return self.flatten(node, source)
        fix = ("daggrow grows through reshapes that keep the shape, and flattening (batch, channels, ...) to (batch, "
               "features) (`torch.flatten(h, 1)`, `h.view(h.size(0), -1)`, nn.Flatten()); ")
        if isinstance(source, fx.Node) and source.op == "placeholder" and len(after) > len(before or ()):
            fix += (f"give the model inputs already shaped {after} (reshape them before calling it; this "
                    "reshape then keeps the shape), or ")
        raise ops.Unsupported(f"{op_name(node)}, which changes the shape {before or ''} to {after}", fix + LEAF_FIX)
