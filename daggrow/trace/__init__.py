"""torch.fx tracing of plain ``nn.Module`` models into the graph IR (see docs/ir.md)."""
