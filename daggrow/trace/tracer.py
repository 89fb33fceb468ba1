"""Trace a plain ``nn.Module`` with torch.fx into a :class:`Graph` in normal form.

Normal form: every IR node is ``h = dropout(σ(norm(Σ in-edges)))``. While walking the fx graph,
a value is either an IR node or a *pending sum* of edge terms (e.g. ``self.a(x) + h``); a
pending sum becomes a node only when something needs one: a Linear or opaque module reading
it, an activation (the node takes that activation), a norm, the output, or a second user.
So ``torch.relu(self.b(h) + h)`` is one node with two in-edges (linear and identity) and a
relu, and no useless nodes appear.

>>> g = dg.trace(Net(), example_inputs=torch.randn(4, 40))     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import operator
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import GraphError, TraceError
from ..graph import FrozenBlock, Graph, IdentityBlock, NormSpec

ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SELU: "selu", nn.GELU: "gelu",
    nn.SiLU: "silu", nn.ELU: "elu", nn.LeakyReLU: "leaky_relu", nn.Softplus: "softplus", nn.Identity: "identity",
}
ACTIVATION_FUNCTIONS: dict[Any, str] = {
    torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", torch.selu: "selu", F.selu: "selu", F.gelu: "gelu", F.silu: "silu", F.elu: "elu",
    F.leaky_relu: "leaky_relu", F.softplus: "softplus", torch.relu_: "relu", F.relu_: "relu",
}
ACTIVATION_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "relu_": "relu", "tanh_": "tanh",
                      "sigmoid_": "sigmoid"}
ADD = {operator.add, torch.add, operator.iadd}
SUB = {operator.sub, torch.sub, operator.isub}
MUL = {operator.mul, torch.mul, operator.imul}
DIV = {operator.truediv, torch.div, operator.itruediv}
SHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze"}


@dataclass
class Term:
    """One edge of a pending sum: ``scale · f(h_source)``."""

    kind: str                    # "linear" | "identity" | "frozen"
    source: str                  # IR node name
    scale: float = 1.0
    module: nn.Module | None = None
    name: str | None = None      # edge name (the module's qualified path)


@dataclass
class Pending:
    """A sum of terms not yet materialised as a node, optionally followed by a norm."""

    terms: list[Term]
    origin: str                  # fx node name, used to name the node if one is made
    width: int
    norm: tuple[NormSpec, nn.Module] | None = None
    materialised: str | None = field(default=None, repr=False)


def _where(node: fx.Node) -> str:
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File ") and "/torch/" not in lines[i] and "/daggrow/" not in lines[i]:
            code = lines[i + 1] if i + 1 < len(lines) else ""
            return f" at {lines[i].removeprefix('File ')}: `{code}`"
    return ""


def _op_name(node: fx.Node) -> str:
    if node.op == "call_function":
        t = node.target
        mod = getattr(t, "__module__", None) or ""
        name = getattr(t, "__name__", str(t))
        return f"{'torch' if mod.startswith('torch') and mod != 'torch.nn.functional' else mod}.{name}".lstrip(".")
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    return f"{node.op} {node.target}"


class _Builder:
    def __init__(self, gm: fx.GraphModule, leaf: set[str]) -> None:
        self.gm, self.leaf = gm, leaf
        self.graph = Graph()
        self.values: dict[fx.Node, Any] = {}
        self.used_modules: dict[int, str] = {}

    # -------------------------------------------------------------- helpers
    def fail(self, node: fx.Node, what: str, fix: str) -> TraceError:
        return TraceError(f"cannot trace {what}{_where(node)}.\n  fix: {fix}")

    def width(self, node: fx.Node) -> int:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self.fail(node, f"{_op_name(node)} (it does not produce a single tensor)",
                            "daggrow graphs carry tensors between blocks; keep tuples/lists out of the traced path")
        if len(meta.shape) != 2:
            raise self.fail(node, f"a tensor of shape {tuple(meta.shape)} ({_op_name(node)})",
                            "daggrow traces (batch, features) tensors for now; convolutional/sequence tensors "
                            "are not supported yet — flatten the input first or keep that part in leaf_modules")
        return int(meta.shape[1])

    def fresh(self, base: str) -> str:
        name, i = base, 2
        while name in self.graph.nodes:
            name, i = f"{base}_{i}", i + 1
        return name

    def node_of(self, value: Any, node: fx.Node) -> str:
        """The IR node holding ``value`` (materialising a pending sum once)."""
        if isinstance(value, str):
            return value
        if isinstance(value, Pending):
            if value.materialised is None:
                value.materialised = self.make_node(value, "identity", {}, value.origin)
            return value.materialised
        raise self.fail(node, f"a non-tensor argument {value!r} to {_op_name(node)}",
                        "pass tensors between layers; constants belong inside modules")

    def terms_of(self, value: Any, node: fx.Node) -> list[Term]:
        if isinstance(value, Pending) and value.norm is None and value.materialised is None:
            return list(value.terms)
        return [Term("identity", self.node_of(value, node))]

    def make_node(self, pending: Pending, activation: str, params: dict, name: str) -> str:
        name = self.fresh(name)
        norm_spec, norm_module = pending.norm if pending.norm else (None, None)
        self.graph.add_node(name, pending.width, activation, activation_params=params, norm=norm_spec)
        if norm_module is not None:
            self.graph._replace_node(self.graph.node(name), copy.deepcopy(norm_module))
        for term in pending.terms:
            self.add_term(term, name)
        return name

    def add_term(self, term: Term, target: str) -> None:
        if term.kind == "identity":
            self.graph.add_edge(term.source, target, IdentityBlock(scale=term.scale))
            return
        module = copy.deepcopy(term.module)
        if term.scale != 1.0:
            with torch.no_grad():
                for p in module.parameters():
                    p.mul_(term.scale)
        name = term.name if term.name not in self.graph.edges else None
        if term.kind == "linear":
            self.graph.add_edge(term.source, target, "linear", name=name, bias=module.bias is not None, module=module)
        else:
            self.graph.add_edge(term.source, target, FrozenBlock(module_type=type(module).__name__), name=name,
                                module=module)

    def activation(self, node: fx.Node, value: Any, act: str, params: dict) -> str:
        if act == "identity":
            return value
        if isinstance(value, Pending) and value.materialised is None:
            return self.make_node(value, act, params, node.name)
        source = self.node_of(value, node)
        pending = Pending([Term("identity", source)], node.name, self.graph.node(source).width)
        return self.make_node(pending, act, params, node.name)

    def scaled(self, value: Any, factor: float, node: fx.Node) -> Pending:
        terms = [replace(t, scale=t.scale * factor) for t in self.terms_of(value, node)]
        return Pending(terms, node.name, self.width(node))

    # -------------------------------------------------------------- walking
    def run(self) -> Graph:
        for node in self.gm.graph.nodes:
            value = self.visit(node)
            if isinstance(value, Pending) and len(node.users) > 1:
                self.node_of(value, node)  # several users share one node
            self.values[node] = value
        return self.graph

    def arg(self, node: fx.Node, a: Any) -> Any:
        return self.values[a] if isinstance(a, fx.Node) else a

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            name = self.fresh(node.name)
            self.graph.add_input(name, self.width(node))
            return name
        if node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
            names = []
            for o in outs:
                value = self.values[o]
                if isinstance(value, str) and value in self.graph.inputs or value in names:
                    value = Pending([Term("identity", value)], "output", self.graph.node(value).width)
                names.append(self.node_of(value, node))
            self.graph.set_output(*names)
            return None
        if node.op == "get_attr":
            raise self.fail(node, f"direct use of the attribute `self.{node.target}`",
                            "wrap parameters in a module such as nn.Linear, or keep the module that uses them "
                            "opaque with leaf_modules=[...]")
        if node.op == "call_module":
            return self.visit_module(node)
        if node.op == "call_function":
            return self.visit_function(node)
        return self.visit_method(node)

    def visit_module(self, node: fx.Node) -> Any:
        mod = self.gm.get_submodule(node.target)
        args = [self.arg(node, a) for a in node.args]
        if node.target in self.leaf:
            self.claim(mod, node)
            source = self.node_of(args[0], node)
            if len(node.args) != 1 or node.kwargs:
                raise self.fail(node, f"the leaf module `{node.target}` with several inputs",
                                "a frozen edge reads exactly one tensor")
            return Pending([Term("frozen", source, module=mod, name=node.target)], node.name, self.width(node))
        if isinstance(mod, nn.Linear):
            self.claim(mod, node)
            source = self.node_of(args[0], node)
            return Pending([Term("linear", source, module=mod, name=node.target)], node.name, self.width(node))
        if type(mod) in ACTIVATION_MODULES:
            params = {}
            if isinstance(mod, nn.LeakyReLU):
                params = {"negative_slope": float(mod.negative_slope)}
            elif isinstance(mod, nn.ELU):
                params = {"alpha": float(mod.alpha)}
            elif isinstance(mod, nn.Softplus) and (mod.beta != 1 or mod.threshold != 20):
                raise self.fail(node, "nn.Softplus with beta/threshold other than 1/20", "use the defaults")
            elif isinstance(mod, nn.GELU) and mod.approximate != "none":
                raise self.fail(node, "nn.GELU(approximate='tanh')", "use nn.GELU() (exact)")
            return self.activation(node, args[0], ACTIVATION_MODULES[type(mod)], params)
        if isinstance(mod, (nn.BatchNorm1d, nn.LayerNorm)):
            return self.norm(node, mod, args[0])
        if isinstance(mod, nn.Dropout):
            return self.dropout(node, args[0], float(mod.p))
        if isinstance(mod, nn.Flatten):
            return args[0]
        raise self.fail(node, f"the module `{node.target}` ({type(mod).__name__})",
                        f"keep it as a frozen opaque edge with leaf_modules=[{type(mod).__name__}] "
                        f"(or leaf_modules=['{node.target}']); growth will not touch it")

    def claim(self, mod: nn.Module, node: fx.Node) -> None:
        if id(mod) in self.used_modules:
            raise self.fail(node, f"the module `{node.target}`, called a second time (first as "
                            f"`{self.used_modules[id(mod)]}`): shared weights are not growable as-is",
                            "give each call its own module (e.g. copy.deepcopy of the layer) so that each "
                            "call becomes its own growable edge")
        self.used_modules[id(mod)] = str(node.target)

    def norm(self, node: fx.Node, mod: nn.Module, value: Any) -> Pending:
        if isinstance(mod, nn.LayerNorm) and (len(mod.normalized_shape) != 1 or mod.bias is None and mod.weight is not None):
            raise self.fail(node, "a LayerNorm over several dimensions or without bias",
                            "use nn.LayerNorm(features) over the last dimension")
        if isinstance(mod, nn.BatchNorm1d):
            spec = NormSpec(kind="batchnorm", eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                            track_running_stats=mod.track_running_stats)
        else:
            spec = NormSpec(kind="layernorm", eps=mod.eps, affine=mod.elementwise_affine)
        if isinstance(value, Pending) and value.norm is None and value.materialised is None:
            return Pending(list(value.terms), node.name, value.width, norm=(spec, mod))
        return Pending([Term("identity", self.node_of(value, node))], node.name, self.width(node), norm=(spec, mod))

    def dropout(self, node: fx.Node, value: Any, p: float) -> str:
        name = self.node_of(value, node)
        spec = self.graph.node(name)
        producer = node.args[0]
        if (p > 0 and spec.dropout == 0 and name not in self.graph.inputs and isinstance(producer, fx.Node)
                and len(producer.users) == 1):
            self.graph._replace_node(spec.model_copy(update={"dropout": p}), self.graph.norm_module(name))
            return name
        if p == 0:
            return name
        new = self.fresh(node.name)
        self.graph.add_node(new, spec.width, dropout=p)
        self.graph.add_edge(name, new, "identity")
        return new

    def visit_function(self, node: fx.Node) -> Any:
        fn = node.target
        args = [self.arg(node, a) for a in node.args]
        kwargs = {k: self.arg(node, v) for k, v in node.kwargs.items()}
        if fn in ACTIVATION_FUNCTIONS:
            act = ACTIVATION_FUNCTIONS[fn]
            params = {}
            if act == "leaky_relu":
                params = {"negative_slope": float(args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01))}
            elif act == "elu":
                params = {"alpha": float(args[1] if len(args) > 1 else kwargs.get("alpha", 1.0))}
            elif act == "gelu" and kwargs.get("approximate", "none") != "none":
                raise self.fail(node, "F.gelu(approximate='tanh')", "use the exact gelu")
            elif act == "softplus" and (len(args) > 1 or kwargs.get("beta", 1) != 1 or kwargs.get("threshold", 20) != 20):
                raise self.fail(node, "F.softplus with non-default beta/threshold", "use the defaults")
            return self.activation(node, args[0], act, params)
        if fn in ADD or fn in SUB:
            if kwargs.get("alpha", 1) != 1:
                raise self.fail(node, f"{_op_name(node)} with alpha", "write the scale as a multiplication")
            a, b = args[0], args[1]
            sign = -1.0 if fn in SUB else 1.0
            terms = []
            for value, s in ((a, 1.0), (b, sign)):
                if isinstance(value, (int, float)):
                    if value != 0:
                        raise self.fail(node, f"adding the constant {value} to a tensor",
                                        "constants belong in a module's bias")
                    continue
                terms += [replace(t, scale=t.scale * s) for t in self.terms_of(value, node)]
            return Pending(terms, node.name, self.width(node))
        if fn in MUL or fn in DIV:
            a, b = args[0], args[1]
            if fn in MUL and isinstance(a, (int, float)) and not isinstance(b, (int, float)):
                a, b = b, a
            if not isinstance(b, (int, float)) or isinstance(a, (int, float)):
                raise self.fail(node, f"{_op_name(node)} of two tensors",
                                "daggrow nodes sum their in-edges; products of tensors are not supported: keep that "
                                "part in a module passed with leaf_modules=[...]")
            return self.scaled(a, float(b) if fn in MUL else 1.0 / float(b), node)
        if fn is operator.neg:
            return self.scaled(args[0], -1.0, node)
        if fn is torch.flatten and self.width(node) == self.width(node.args[0]):
            return args[0]
        if fn is F.dropout:
            return self.dropout(node, args[0], float(args[1] if len(args) > 1 else kwargs.get("p", 0.5)))
        if fn is F.linear:
            raise self.fail(node, "F.linear with tensors held as attributes",
                            "use an nn.Linear module (its weights become the edge's weights)")
        raise self.fail(node, f"the operation {_op_name(node)}",
                        "daggrow traces Linear layers, activations, sums and scalar multiples; keep the module "
                        "that does this as a frozen opaque edge with leaf_modules=[...]")

    def visit_method(self, node: fx.Node) -> Any:
        method = node.target
        args = [self.arg(node, a) for a in node.args]
        if method in ACTIVATION_METHODS:
            return self.activation(node, args[0], ACTIVATION_METHODS[method], {})
        if method in ("add", "sub"):
            fn = torch.add if method == "add" else torch.sub
            fake = fx.Node(node.graph, node.name, "call_function", fn, node.args, node.kwargs)
            fake.meta = node.meta
            return self.visit_function(fake)
        if method in SHAPE_METHODS and self.width(node) == self.width(node.args[0]):
            return args[0]
        if method.endswith("_"):
            raise self.fail(node, f"the in-place operation .{method}()",
                            "write it out of place (e.g. `x = x + y` instead of `x.add_(y)`)")
        raise self.fail(node, f"the {_op_name(node)}",
                        "daggrow traces Linear layers, activations, sums and scalar multiples; keep the module "
                        "that does this as a frozen opaque edge with leaf_modules=[...]")


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...], leaf_names: set[str]) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.leaf_types, self.leaf_names = leaf_types, leaf_names

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


def _user_frame(err: BaseException) -> str:
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if "/torch/" not in frame.filename and "/daggrow/" not in frame.filename:
            return f" at {frame.filename}:{frame.lineno}: `{(frame.line or '').strip()}`"
    return ""


def trace(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...], *,
          leaf_modules: Iterable[type | str] = (), concrete_args: dict[str, Any] | None = None) -> Graph:
    """Trace ``model`` into a :class:`Graph` whose compiled module gives the same outputs.

    ``leaf_modules``: module classes or qualified names kept as frozen opaque edges.
    ``concrete_args``: forwarded to torch.fx (fix arguments that steer Python control flow).
    Raises :class:`TraceError` naming the unsupported op, its source line and what to do.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    leaf_types = tuple(x for x in leaf_modules if isinstance(x, type))
    leaf_names = {x for x in leaf_modules if isinstance(x, str)}
    tracer = _Tracer(leaf_types, leaf_names)
    try:
        fx_graph = tracer.trace(model, concrete_args=concrete_args)
    except torch.fx.proxy.TraceError as err:
        raise TraceError(f"cannot trace {type(model).__name__}: {err}{_user_frame(err)}.\n  fix: data-dependent "
                         "control flow cannot be traced; fix the deciding arguments with concrete_args={...}, "
                         "or move that code into a module passed with leaf_modules=[...]") from None
    except Exception as err:
        raise TraceError(f"cannot trace {type(model).__name__}: {type(err).__name__}: {err}{_user_frame(err)}.\n"
                         "  fix: keep the module that does this as a frozen edge with leaf_modules=[...]") from None
    gm = fx.GraphModule(model, fx_graph)
    leaf = {n.target for n in fx_graph.nodes if n.op == "call_module"
            and (n.target in leaf_names or (leaf_types and isinstance(gm.get_submodule(n.target), leaf_types)))}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as err:
        raise TraceError(f"running {type(model).__name__} on example_inputs failed: {type(err).__name__}: {err}") from None
    finally:
        model.train(was_training)
    try:
        graph = _Builder(gm, leaf).run()
        graph.validate(complete=True)
    except GraphError as err:
        raise TraceError(f"the traced graph is invalid: {err}") from None
    return graph
