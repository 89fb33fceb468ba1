"""Op nodes in the graph API (a mixin of :class:`~daggrow.graph.graph.Graph`).

An op node's value is ``op(h_{u_0}, …, h_{u_{k−1}})``: an :class:`~daggrow.graph.opaque.OpaqueOp`
(a program of torch calls with its modules and tensors) applied to the sources of its operand
edges, in position order, then the node's norm, activation and dropout as for any node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from torch import nn

from ..errors import DuplicateNameError, GraphError
from .spec import EdgeSpec, Layout, NodeSpec, NormSpec, OperandBlock

if TYPE_CHECKING:
    from .graph import Graph


class OpNodes:
    """Adding op nodes, reading their operands, checking their invariants."""

    def add_op_node(
        self: "Graph",
        name: str,
        sources: list[str],
        module: nn.Module,
        *,
        width: int = 1,
        shape: tuple[int, ...] = (),
        layout: Layout = "channels",
        activation: str = "identity",
        activation_params: dict[str, float] | None = None,
        norm: NormSpec | Literal["batchnorm", "layernorm"] | None = None,
        dropout: float = 0.0,
        dropout_mode: Literal["element", "row", "batch"] = "element",
        edge_names: list[str] | None = None,
    ) -> list[str]:
        """Add an op node: ``z = module(h_{sources[0]}, …)``, then norm, activation and dropout.

        ``module`` is an :class:`~daggrow.graph.opaque.OpaqueOp` (its program is the node's
        ``op``); each source gets an operand edge (``OperandBlock(position=i)``), returned in
        order. The node is opaque to growth: its operand edges are not growable, and a node
        read by an op is never widened. ``layout="opaque"`` for a value only ops read (a tuple).
        ``edge_names`` names the operand edges (default ``<source>_to_<name>``).
        """
        from .opaque import OpaqueOp

        if not isinstance(module, OpaqueOp):
            raise GraphError(f"op node {name!r} needs an OpaqueOp module, got {type(module).__name__}")
        if len(sources) != module.spec.inputs:
            raise GraphError(f"op node {name!r}: its program takes {module.spec.inputs} input(s), got "
                             f"{len(sources)} source(s)")
        for s in sources:
            self._require_node(s)
        spec = self._node_spec(name=name, width=width, shape=tuple(shape), layout=layout, activation=activation,
                               activation_params=dict(activation_params or {}), norm=_norm_spec(norm),
                               dropout=dropout, dropout_mode=dropout_mode, op=module.spec, born=self.step)
        if len(set(sources)) != len(sources):
            raise GraphError(f"op node {name!r}: a source appears twice in {sources}; give the program one "
                             "input per distinct node")
        if name in self._nodes:
            raise DuplicateNameError(f"a node named {name!r} already exists")
        taken: set[str] = set()
        edges = []
        if edge_names is not None and (len(edge_names) != len(sources) or len(set(edge_names)) != len(sources)
                                       or set(edge_names) & set(self._edges)):
            raise GraphError(f"op node {name!r}: edge_names {edge_names} must be {len(sources)} new distinct names")
        for i, s in enumerate(sources):
            edge = edge_names[i] if edge_names is not None else self._fresh_edge_name(s, name, taken)
            taken.add(edge)
            edges.append(EdgeSpec(name=edge, source=s, target=name, block=OperandBlock(position=i), born=self.step))
        self._insert_node(spec)
        self._op_modules[name] = module
        for e in edges:
            self._attach_edge(e, nn.Identity())
        return [e.name for e in edges]

    def operands(self: "Graph", node: str) -> list[str]:
        """The sources of an op node's operand edges, by position (its program's inputs)."""
        ins = sorted((e for e in self.in_edges(node) if isinstance(e.block, OperandBlock)),
                     key=lambda e: e.block.position)
        return [e.source for e in ins]

    def _check_op(self: "Graph", name: str, spec: NodeSpec) -> None:
        """An op node holds a module with its program and exactly one operand per input position."""
        module = self._op_modules.get(name)
        if spec.op is None:
            if module is not None:
                raise GraphError(f"node {name!r} holds an op module but has no op")
            return
        if module is None or getattr(module, "spec", None) != spec.op:
            raise GraphError(f"op node {name!r} has no module computing its program")
        positions = sorted(e.block.position for e in self.in_edges(name))
        if positions != list(range(spec.op.inputs)):
            raise GraphError(f"op node {name!r} takes {spec.op.inputs} input(s) but its operand edges have "
                             f"positions {positions}")


def _norm_spec(norm: NormSpec | str | None) -> NormSpec | None:
    return NormSpec(kind=norm) if isinstance(norm, str) else norm
