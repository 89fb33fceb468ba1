"""Walk a shape-annotated torch.fx graph and build the IR in normal form.

Every IR node is ``h = dropout(σ(norm(Σ in-edges)))``, or an op node ``h = program(inputs)``.
While walking, an fx value is one of

* an IR node name (``str``): a tensor that already is a node;
* a :class:`Pending` sum of edge terms such as ``self.b(h) + h`` (optionally followed by a
  norm), not yet a node;
* a :class:`Fragment`: ops outside the growable vocabulary (``a * b``, ``x.permute(...)``,
  ``self.attn(x, x, x)``, ``x.size(0)``) not yet an op node;
* a :class:`Static` value that is not a tensor (a concrete argument).

A pending sum becomes a node only when something needs one: a Linear, conv, pooling or leaf
module reading it, an activation (the node takes that activation), the output, or a second
reader. So ``torch.relu(self.b(h) + h)`` is one node with a linear and an identity in-edge and
a relu, and no useless node appears. A scalar multiple scales identity edges or folds into the
Linear (or conv) edge's weights. Fragments grow the same way: an op outside the vocabulary
that reads a fragment read by nobody else extends it, so ``permute → layer_norm → permute``
is one op node; a fragment becomes an op node when a vocabulary op reads it.

Tensors are ``(batch, features)``, ``(batch, channels, length)``, ``(batch, channels, height,
width)``, or ``(batch, *tokens, features)`` (:mod:`daggrow.trace.layouts` decides which);
a value's ``width`` is its features or channels and its ``shape`` the spatial rest or the
token grid. Anything else lives inside op nodes.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from ..errors import TraceError
from ..graph import FrozenBlock, Graph, IdentityBlock, LinearBlock, PlaceBlock
from . import ops
from .arith import Arithmetic
from .checks import WeightOwners, check_in_place, shared_calls
from .copies import conv_copy, copy_norm_state, linear_copy
from .layers import LayerOps
from .layouts import batch_first, infer_layouts
from .programs import build_op
from .source import op_name, source_line, trace_error
from .uses import live_nodes, produces_tensor, value_uses
from .values import Fragment, Pending, Static, Term, merge_identities

SHAPES = ("daggrow's nodes are (batch, features), (batch, channels, length), (batch, channels, height, width) "
          "or (batch, tokens, features) tensors")


class GraphBuilder(LayerOps, Arithmetic):
    """Turns one shape-propagated ``fx.GraphModule`` into a :class:`Graph` (see the module doc).

    ``strict``: refuse every op outside the vocabulary with a :class:`TraceError` instead of
    keeping it in an op node. ``opaque_reasons`` lists ``(node, what and where)`` for each op
    kept in an op node, for the trace's warning.
    """

    def __init__(self, gm: fx.GraphModule, leaf_targets: set[str], batch: int = 1, strict: bool = False) -> None:
        self.gm, self.leaf_targets, self.batch, self.strict = gm, leaf_targets, batch, strict
        self.graph = Graph()
        self.values: dict[fx.Node, Any] = {}
        self.uses = value_uses(gm.graph)
        self.absorbed: dict[fx.Node, str] = {}          # dropout fx node → node that took its rate
        self.owners = WeightOwners()
        self.copies: dict[int, Any] = {}                # deepcopy memo shared by frozen and opaque modules
        self.live: set[fx.Node] = set(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.layouts: dict[fx.Node, str] = {}
        self.shared: set[fx.Node] = set()               # calls of modules whose weights another call uses
        self.traced_shapes: dict[str, tuple[int, ...]] = {}
        self.opaque_reasons: list[tuple[str, str]] = []

    # ================================================================== driver
    def run(self) -> Graph:
        check_in_place(self.gm, self.uses, self.leaf_targets)
        self.live = live_nodes(self.gm.graph)
        self.uses = value_uses(self.gm.graph, among=self.live)
        self.layouts = infer_layouts(self.gm, self.leaf_targets)
        if not self.strict:
            self.shared = shared_calls(self.gm, self.live, self.leaf_targets)
        for node in self.gm.graph.nodes:
            if node not in self.live:
                continue
            value = self.visit(node)
            if isinstance(value, (Pending, Fragment)) and value.open and self.uses[node] > 1 and (
                    not isinstance(value, Fragment) or value.tensor):
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
            return self.fragment(node, [])  # x.size(0), x.shape: copied into the ops that use them
        if node.op == "get_attr":
            if self.strict:
                raise self.fail(node, f"the direct use of the attribute `self.{node.target}`",
                                "wrap parameters in a module such as nn.Linear, or keep the module that uses "
                                "them with leaf_modules=[...]")
            return self.fragment(node, [])  # a parameter or buffer: inside the op that reads it
        try:
            if not isinstance(node.meta["tensor_meta"], TensorMetadata) and self.pool_kind(node) is None:
                raise ops.Unsupported(f"{op_name(node)}, which returns several tensors",
                                      "a daggrow edge carries one tensor: keep the code that uses the several "
                                      "outputs in one module passed with leaf_modules=[...]")
            if node.op != "call_module" and not any(self.is_tensor(a) for a in node.all_input_nodes):
                raise ops.Unsupported(f"{op_name(node)}, which creates a new tensor inside forward",
                                      "pass the tensor as an input of the model, or keep the module that creates "
                                      "it with leaf_modules=[...]")
            if node.op == "call_module":
                return self.visit_module(node)
            if node.op == "call_function":
                return self.visit_function(node, node.target, node.args, node.kwargs)
            return self.visit_method(node)
        except ops.Unsupported as err:
            return self.opaque(node, err.what, err.fix)

    # ================================================================== helpers
    fail = staticmethod(trace_error)

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    def layout(self, node: fx.Node) -> tuple[int, tuple[int, ...], str]:
        """``(width, shape, layout)`` of a traced tensor: features or channels, then the spatial rest
        (or the token grid); :class:`ops.Unsupported` for a tensor that cannot be a node."""
        meta = node.meta.get("tensor_meta")
        shape = tuple(meta.shape) if isinstance(meta, TensorMetadata) else None
        if shape is None or not 2 <= len(shape) <= 4 or not batch_first(shape, self.batch):
            raise ops.Unsupported(f"{op_name(node)}, which gives a tensor of shape {shape}",
                                  f"{SHAPES}; keep this part in a module passed with leaf_modules=[...]")
        if len(shape) > 2 and self.layouts.get(node) == "tokens":
            return shape[-1], shape[1:-1], "tokens"
        return shape[1], shape[2:], "channels"

    def pending(self, terms: list[Term], node: fx.Node, norm: Any = None) -> Pending:
        """A pending sum of ``terms`` with the layout of ``node``'s tensor."""
        width, shape, layout = self.layout(node)
        return Pending(terms, node.name, width, shape, norm=norm, layout=layout)

    def identity(self, source: str, origin: str) -> Pending:
        """The pending value ``1 · h_source`` (to give a node's value an activation, norm, …)."""
        spec = self.graph.node(source)
        return Pending([Term("identity", source)], origin, spec.width, spec.shape, layout=spec.layout)

    @staticmethod
    def call_name(node: fx.Node) -> str:
        """An edge name for a call: the module's qualified path, or the fx node's name."""
        return str(node.target) if node.op == "call_module" else node.name

    def is_tensor(self, node: Any) -> bool:
        value = self.values.get(node) if isinstance(node, fx.Node) else None
        return isinstance(value, (str, Pending)) or (isinstance(value, Fragment) and value.tensor)

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
        """The builder value of a tensor argument (an IR node name, a pending sum or a fragment)."""
        value = self.values.get(arg) if isinstance(arg, fx.Node) else arg
        if isinstance(value, (str, Pending)) or (isinstance(value, Fragment) and value.tensor):
            return value
        what = f"`{value.output.name}`, a value computed while tracing" if isinstance(value, Fragment) else \
            f"`{value.origin}`, a concrete argument" if isinstance(value, Static) else f"the constant {value!r}"
        raise ops.Unsupported(f"{op_name(node)} applied to {what}, not a tensor",
                              "pass tensors between layers; constants belong inside modules")

    def node_of(self, value: Any, node: fx.Node) -> str:
        """The IR node holding ``value``, materialising a pending sum or a fragment once."""
        value = self.tensor(node, value)
        if isinstance(value, str):
            return value
        if isinstance(value, Fragment):
            if value.open:
                value.materialised = self.make_op_node(value)
            return value.materialised
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
            value.taken = True
            return list(value.terms)
        return [Term("identity", self.node_of(value, node))]

    # ================================================================== making nodes and edges
    def make_node(self, pending: Pending, activation: str, params: dict, name: str, dropout: float = 0.0,
                  dropout_mode: str = "element") -> str:
        name = self.fresh(name)
        norm_spec, norm_module = pending.norm if pending.norm else (None, None)
        self.graph.add_node(name, pending.width, activation, shape=pending.shape, layout=pending.layout,
                            activation_params=params, norm=norm_spec, dropout=dropout, dropout_mode=dropout_mode)
        if norm_module is not None:
            copy_norm_state(norm_module, self.graph.norm_module(name))
        for term in merge_identities(pending.terms):
            self.add_term(term, name)
        pending.materialised = name
        return name

    def add_term(self, term: Term, target: str) -> None:
        if term.kind == "identity":
            self.graph.add_edge(term.source, target, IdentityBlock(scale=term.scale))
        elif term.kind == "place":
            self.graph.add_edge(term.source, target, PlaceBlock(offset=term.block.offset, scale=term.scale))
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
            self.graph.add_node(middle, spec.width, shape=spec.shape, layout=spec.layout)
            self.graph.add_edge(term.source, middle, block, name=self.fresh_edge(term.name), module=module)
            self.graph.add_edge(middle, target, IdentityBlock(scale=term.scale))

    def fixed_block(self, term: Term) -> tuple[Any, nn.Module | None]:
        """The block and module of a frozen, pooling or flatten term (``None``: the default nn.Identity)."""
        if term.kind != "frozen":
            return term.block, None
        module = copy.deepcopy(term.module, self.copies)  # one copy per module, shared by its calls
        return FrozenBlock(module_type=type(module).__name__), module

    # ================================================================== opaque ops
    def opaque(self, node: fx.Node, what: str, fix: str) -> Fragment:
        """``node`` outside the vocabulary: a fragment (the :class:`TraceError` when strict)."""
        if self.strict:
            raise self.fail(node, what, fix)
        return self.fragment(node, [(node, what)])

    def fragment(self, node: fx.Node, reasons: list[tuple[fx.Node, str]]) -> Fragment:
        """A fragment computing ``node``, extended by the open fragments it reads: a tensor one read
        only here (its body moves in), and values that are not tensors (copied)."""
        tensor = produces_tensor(node)
        body, inputs, aliases = [node], [], {}
        for arg in node.all_input_nodes:
            value = self.values.get(arg)
            copied = isinstance(value, Fragment) and value.open and not value.tensor
            moved = isinstance(value, Fragment) and value.open and tensor and not value.merged and self.uses[arg] <= 1
            if copied or moved:
                body += value.body; inputs += value.inputs; reasons = reasons + value.reasons  # noqa: E702
                aliases.update(value.aliases)
                if value.output is not arg:  # `h.contiguous()`, eval-mode dropout: ``arg`` is the fragment's value
                    aliases[arg] = value.output
                value.merged = value.merged or moved
            elif isinstance(value, (str, Pending, Fragment)):
                inputs.append(arg)
            else:
                raise self.fail(node, f"{op_name(node)} reading `{arg.name}`, a concrete argument",
                                "pass it as a Python value, not through concrete_args")
        inside = set(body)
        return Fragment(sorted(inside, key=self.order.__getitem__),
                        [i for i in dict.fromkeys(inputs) if i not in inside], node, tensor, reasons, aliases=aliases)

    def make_op_node(self, fragment: Fragment) -> str:
        """An op node running the fragment's program on the nodes of its inputs."""
        out = fragment.output
        positions: dict[fx.Node, int] = {}
        sources: list[str] = []
        for arg in fragment.inputs:
            name = self.input_node(arg, fragment)
            if name not in sources:
                sources.append(name)
            positions[arg] = sources.index(name)
        if not sources:
            raise self.fail(out, f"{op_name(out)}, a tensor computed without the model's inputs, read by a layer",
                            "every node of a daggrow graph depends on an input: keep the module that uses this "
                            "tensor whole with leaf_modules=[...]")
        op = build_op(self.gm, fragment.body, positions, len(sources), out, self.copies, fragment.aliases)
        try:
            width, shape, layout = self.layout(out)
        except ops.Unsupported:
            width, shape, layout = 1, (), "opaque"
        name = self.fresh(out.name)
        self.graph.add_op_node(name, sources, op, width=width, shape=shape, layout=layout)
        if isinstance(out.meta.get("tensor_meta"), TensorMetadata):
            self.traced_shapes[name] = self.shape(out)
        self.opaque_reasons += [(name, f"{what}{source_line(n)}") for n, what in fragment.reasons]
        return name

    def input_node(self, arg: fx.Node, fragment: Fragment) -> str:
        """The node an op's input ``arg`` is. When ``arg``'s value already went into another node
        (its terms, or its body), the op only reads its shape: any node of that shape serves."""
        value = self.values[arg]
        gone = (isinstance(value, Pending) and value.open and value.taken) or (
            isinstance(value, Fragment) and value.open and value.merged)
        if not gone:
            return self.node_of(value, arg)
        shape = self.shape(arg)
        twin = next((n for n, s in self.traced_shapes.items() if s == shape), None)
        if twin is None:
            raise self.fail(fragment.output, f"{op_name(fragment.output)}, which reads the shape of `{arg.name}` "
                            "after that value was merged into another node",
                            "read the shape from a tensor that is a node (e.g. the model's input), or keep this "
                            "code in a module passed with leaf_modules=[...]")
        return twin

    # ================================================================== placeholders and output
    def visit_placeholder(self, node: fx.Node) -> Any:
        if not produces_tensor(node):
            return Static(node.name)  # a concrete argument
        try:
            width, shape, layout = self.layout(node)
        except ops.Unsupported:  # e.g. a 5-d tensor: only op nodes may read it
            if self.strict:
                raise TraceError(f"cannot trace the input `{node.target}` of shape {self.shape(node)}: {SHAPES}.\n  "
                                 "fix: reshape the input to one of these before calling the model, e.g. "
                                 "model(x.flatten(1))") from None
            width, shape, layout = 1, (), "opaque"
        name = self.fresh(node.name)
        self.graph.add_input(name, width, shape, layout=layout)
        self.traced_shapes[name] = self.shape(node)
        return name

    def visit_output(self, node: fx.Node) -> None:
        result = node.args[0]
        outs = result if isinstance(result, (tuple, list)) else (result,)
        names: list[str] = []
        for out in outs:
            if not isinstance(out, fx.Node) or not self.is_tensor(out) or not isinstance(
                    out.meta.get("tensor_meta"), TensorMetadata):
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
