"""Growth: candidates, rewrites, amplitude line search, strategies and the Grower loop."""
