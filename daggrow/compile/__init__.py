"""Graph → ``torch.fx.GraphModule`` with a readable generated ``forward``."""

from .codegen import Tap, compile_graph

__all__ = ["Tap", "compile_graph"]
