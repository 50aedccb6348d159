"""Layer 3, the graph: nodes and edges built from a spec, and every static check. No torch.

Small passes: :mod:`~dgraph.graph.resolve` builds the graph, :mod:`~dgraph.graph.checks` and
:mod:`~dgraph.graph.shapes` are pure functions from a graph to problems, and
:mod:`~dgraph.graph.validate` runs them in order.
"""

from dgraph.graph.model import Edge, Graph, Node
from dgraph.graph.resolve import build_graph
from dgraph.graph.shapes import infer_shapes
from dgraph.graph.validate import check_graph, validate

__all__ = ["Edge", "Graph", "Node", "build_graph", "check_graph", "infer_shapes", "validate"]
