"""What an fx value is while the builder walks the graph: a node, a pending sum, an opaque
fragment, or not a tensor.

A value has the layout of an IR node: ``width`` features (channels of an image/sequence
tensor) over a spatial ``shape`` (``()`` for a ``(batch, features)`` tensor), or ``width``
features per token over a token grid ``shape`` (``layout="tokens"``).

>>> p = Pending([Term("identity", "h"), Term("identity", "h", scale=-2.0)], origin="sub", width=8)
>>> [(t.source, t.scale) for t in merge_identities(p.terms)]     # h - 2h: one edge of scale -1
[('h', -1.0)]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from torch import fx, nn

from ..graph import NormSpec


@dataclass(frozen=True)
class Term:
    """One in-edge of a pending sum: ``scale · f(h_source)``; ``module`` is the user's module.

    ``block`` is the edge's spec for the kinds that need one (conv, pool, flatten, place).
    """

    kind: Literal["linear", "identity", "frozen", "conv", "pool", "flatten", "place"]
    source: str
    scale: float = 1.0
    module: nn.Module | None = None
    name: str | None = None       # edge name: the module's qualified path (or the fx node's name)
    origin: str = ""              # fx node name of the call
    block: Any = None

    def scaled(self, factor: float) -> "Term":
        return replace(self, scale=self.scale * factor)


@dataclass(eq=False)
class Pending:
    """A sum of terms that is not yet a node, optionally followed by a norm.

    An open pending sum has exactly one reader left (a value read twice is made a node at
    once), so that reader may take its terms over.
    """

    terms: list[Term]
    origin: str                   # fx node name, used to name the node if one is made
    width: int                    # features, or channels when ``shape`` is not ()
    shape: tuple[int, ...] = ()   # spatial shape: (L,) for sequences, (H, W) for images, or the token grid
    norm: tuple[NormSpec, nn.Module] | None = None
    layout: str = "channels"
    materialised: str | None = field(default=None, repr=False)
    taken: bool = field(default=False, repr=False)  # its terms went into its reader's node

    @property
    def open(self) -> bool:
        """True while the terms may still be merged into the reader's node."""
        return self.materialised is None


@dataclass(eq=False)
class Fragment:
    """Ops outside the growable vocabulary, not yet a node: the fx nodes ``body`` (in graph
    order) compute ``output`` from the values of the fx nodes ``inputs``.

    A tensor fragment read once is merged into its reader when that reader is opaque too
    (``permute → layer_norm → permute`` is one op node); it becomes an op node when something
    else reads it. A fragment that is not a tensor (``x.size(0)``, ``x.shape``) is copied into
    every op that uses it. ``reasons`` are the (fx node, what) pairs the trace warning lists.
    """

    body: list[fx.Node]
    inputs: list[fx.Node]
    output: fx.Node
    tensor: bool
    reasons: list[tuple[fx.Node, str]] = field(default_factory=list)
    materialised: str | None = field(default=None, repr=False)
    merged: bool = field(default=False, repr=False)  # its body went into a reader's fragment
    aliases: dict[fx.Node, fx.Node] = field(default_factory=dict, repr=False)  # fx nodes whose value is a body node's

    @property
    def open(self) -> bool:
        return self.materialised is None


@dataclass(frozen=True)
class Static:
    """A value that is not a tensor (``x.shape[0]``, a concrete argument)."""

    origin: str


def merge_identities(terms: list[Term]) -> list[Term]:
    """Identity terms from the same source become one term whose scale is the sum of theirs."""
    merged: list[Term] = []
    where: dict[str, int] = {}
    for term in terms:
        if term.kind == "identity" and term.source in where:
            i = where[term.source]
            merged[i] = replace(merged[i], scale=merged[i].scale + term.scale)
        else:
            if term.kind == "identity":
                where[term.source] = len(merged)
            merged.append(term)
    return merged


def first_arg(args: tuple, kwargs: dict) -> Any:
    """The input tensor of a call, given positionally or as ``input=``."""
    return args[0] if args else kwargs.get("input", kwargs.get("self"))


def other_arg(args: tuple, kwargs: dict) -> Any:
    """The second operand of a binary op, given positionally or as ``other=``."""
    return args[1] if len(args) > 1 else kwargs.get("other")
