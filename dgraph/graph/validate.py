"""Static validation: a form-checked spec becomes a :class:`Graph`, or every problem at once.

The passes run in order: resolve (components and wiring), the pure checks, shape inference.
Checks that reason about whole paths are skipped when some nodes could not be built: they
would only report consequences of the first problem.
"""

from __future__ import annotations

from dgraph.errors import Problem, ValidationError
from dgraph.graph.checks import (
    check_cycles,
    check_dangling,
    check_distributed,
    check_export,
    check_stages,
    check_types,
    check_unused,
    check_updates,
)
from dgraph.graph.model import Graph
from dgraph.graph.resolve import build_graph
from dgraph.graph.shapes import infer_shapes
from dgraph.spec._gc import collector_paused
from dgraph.spec.model import Spec

__all__ = ["check_graph", "validate"]


def check_graph(graph: Graph) -> list[Problem]:
    """Every static check over a built graph; returns problems (errors and warnings).

    Stores the inferred symbolic shapes in ``graph.shapes`` (the only change to the graph).
    """
    problems = check_dangling(graph) + check_types(graph) + check_cycles(graph)
    if not any(p.code == "cycle" for p in problems):
        graph.shapes, shape_problems = infer_shapes(graph)
        problems += shape_problems
    if len(graph.nodes) == len(graph.spec.nodes):
        problems += check_updates(graph) + check_unused(graph)
    return problems + check_stages(graph) + check_export(graph) + check_distributed(graph)


def validate(spec: Spec) -> tuple[Graph, list[Problem]]:
    """Build and check; raise :class:`ValidationError` on errors, return graph and warnings."""
    with collector_paused():  # nothing made here is a cycle (see dgraph.spec._gc)
        graph, problems = build_graph(spec)
        if graph is not None:
            problems = problems + check_graph(graph)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ValidationError(problems)
    return graph, problems  # type: ignore[return-value]

