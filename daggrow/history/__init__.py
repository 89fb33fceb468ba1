"""Growth history: events (pydantic), JSON, Graphviz per step and the HTML report."""
