"""Layer 3, the graph: nodes and edges built from a spec, and every static check. No torch."""

from dgraph.graph.build import build_graph, check_graph, unify_shapes, validate
from dgraph.graph.model import Edge, Graph, Node

__all__ = ["Edge", "Graph", "Node", "build_graph", "check_graph", "unify_shapes", "validate"]
