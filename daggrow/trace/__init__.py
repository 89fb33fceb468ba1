"""torch.fx tracing of plain ``nn.Module`` models into the graph IR (see docs/ir.md)."""

from .tracer import trace

__all__ = ["trace"]
