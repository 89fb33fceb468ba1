"""Which fx nodes reach the output, and how many times each tensor is read.

A pending sum is turned into an IR node once it is read more than once, so uses are counted
with multiplicity (``s + s`` reads ``s`` twice) and only by readers of its *value*: shape
queries such as ``x.size(0)`` or ``x.shape`` (whose results are not tensors) do not count.
"""

from __future__ import annotations

from collections import Counter

from torch import fx


def produces_tensor(node: fx.Node) -> bool:
    """True when shape propagation saw this node return a tensor (or tensors)."""
    return "tensor_meta" in node.meta


def live_nodes(graph: fx.Graph) -> set[fx.Node]:
    """The placeholders and every node the output depends on."""
    live = {n for n in graph.nodes if n.op == "placeholder"}
    stack = [n for n in graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node not in live or node.op == "placeholder":
            live.add(node)
            stack.extend(n for n in node.all_input_nodes if n not in live)
    return live


def _reads(user: fx.Node) -> Counter:
    counts: Counter = Counter()
    fx.node.map_arg((user.args, user.kwargs), lambda n: counts.update([n]) or n)
    return counts


def value_uses(graph: fx.Graph, among: set[fx.Node] | None = None) -> Counter:
    """``uses[n]``: how many times the value of ``n`` is read by the nodes ``among`` (all by default).

    The output counts as a reader; nodes that return no tensor (shape queries) do not.
    """
    uses: Counter = Counter()
    for user in graph.nodes:
        if among is not None and user not in among:
            continue
        if user.op == "output" or produces_tensor(user):
            uses.update(_reads(user))
    return uses
