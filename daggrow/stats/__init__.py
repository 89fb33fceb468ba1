"""Streaming statistics S, P, M, g (MATH.md §3) in one pass with hooks and batched GEMMs."""
