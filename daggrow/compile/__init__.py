"""Graph → ``torch.fx.GraphModule`` with a readable generated ``forward``; node-by-node evaluation."""

from .codegen import Tap, compile_graph
from .evaluate import eval_mode, node_values

__all__ = ["Tap", "compile_graph", "eval_mode", "node_values"]
