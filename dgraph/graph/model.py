"""The graph's primitives: nodes (one use of a component), edges (output port -> input port).

Kept apart from building and checking so that every later layer can import them freely.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dgraph.errors import Location
from dgraph.ports import Port, Shape
from dgraph.registry import Component
from dgraph.spec.model import NodeSpec, Spec

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["CycleError", "Edge", "Graph", "Node", "Reference"]


class CycleError(ValueError):
    """The graph has a cycle, so it has no topological order."""


@dataclass(slots=True)
class Node:
    """One component instance in the graph."""

    name: str
    spec: NodeSpec
    component: Component
    inputs: dict[str, Port]
    outputs: dict[str, Port]
    location: Location
    taps: dict[str, Port] = field(default_factory=dict)  # submodule path -> port

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def frozen(self) -> bool:
        return self.spec.is_frozen

    def output_port(self, name: str) -> Port:
        return self.outputs[name] if name in self.outputs else self.taps[name]


@dataclass(frozen=True, slots=True)  # slots: a spec of a million nodes has millions of edges
class Edge:
    """``src.src_port -> dst.dst_port``; ``tap`` is True when src_port is a submodule path."""

    src: str
    src_port: str
    dst: str
    dst_port: str
    location: Location
    tap: bool = False

    def __str__(self) -> str:
        return f"{self.src}.{self.src_port} -> {self.dst}.{self.dst_port}"


@dataclass(frozen=True, slots=True)
class Reference:
    """Node ``dst`` names node ``src`` in its parameter ``param`` (an EMA target's ``source``).

    Not a data flow within a step: ``dst`` receives ``src``'s module when it is built. Drawn
    by ``viz``, checked by validation, and ordered before ``dst`` when nodes are built.
    """

    src: str
    dst: str
    param: str
    location: Location

    def __str__(self) -> str:
        return f"{self.dst}.params.{self.param} -> {self.src}"


@dataclass
class Graph:
    """A spec whose nodes are built and whose wiring has been resolved."""

    spec: Spec
    nodes: dict[str, Node]
    edges: list[Edge]
    references: list[Reference] = field(default_factory=list)
    shapes: dict[tuple[str, str], Shape | None] = field(default_factory=dict)
    dry_run: bool = False  # True once shapes come from running the graph on the meta device

    def __post_init__(self) -> None:
        # Edges by node, in edge order; names that only edges mention come after the nodes
        # (networkx's order). networkx's graph itself is built only when asked for (about
        # 1 kB a node): validation and compilation use these lists.
        self._nx: nx.MultiDiGraph | None = None
        self._into: dict[str, list[Edge]] = {name: [] for name in self.nodes}
        self._from: dict[str, list[Edge]] = {name: [] for name in self.nodes}
        for edge in self.edges:
            self._from.setdefault(edge.src, []).append(edge)
            self._into.setdefault(edge.src, [])
            self._into.setdefault(edge.dst, []).append(edge)
            self._from.setdefault(edge.dst, [])

    @property
    def nx(self) -> nx.MultiDiGraph:
        """The wiring as a networkx multigraph (each edge's ``edge`` attribute the Edge);
        networkx is imported only then."""
        if self._nx is None:
            import networkx

            graph = networkx.MultiDiGraph()
            graph.add_nodes_from(self._into)
            for edge in self.edges:
                graph.add_edge(edge.src, edge.dst, edge=edge)
            self._nx = graph
        return self._nx

    def edges_into(self, node: str) -> list[Edge]:
        return self._into.get(node, [])

    def edges_from(self, node: str) -> list[Edge]:
        return self._from.get(node, [])

    def topological_order(self) -> list[str]:
        """Nodes in the unique topological order that breaks ties by name (networkx's
        ``lexicographical_topological_sort``); :class:`CycleError` on a cycle."""
        waiting = {name: len(into) for name, into in self._into.items() if into}
        ready = [name for name, into in self._into.items() if not into]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            name = heapq.heappop(ready)
            order.append(name)
            for edge in self._from[name]:
                waiting[edge.dst] -= 1
                if not waiting[edge.dst]:
                    del waiting[edge.dst]
                    heapq.heappush(ready, edge.dst)
        if waiting:
            raise CycleError(f"the graph has a cycle: {len(waiting)} nodes cannot be ordered")
        return order

    def is_acyclic(self) -> bool:
        try:
            self.topological_order()
        except CycleError:
            return False
        return True

    def ancestors(self, node: str) -> set[str]:
        """Every node from which a path of edges leads to ``node``."""
        return self._reached(node, self._into, "src")

    def descendants(self, node: str) -> set[str]:
        """Every node to which a path of edges leads from ``node``."""
        return self._reached(node, self._from, "dst")

    @staticmethod
    def _reached(node: str, edges: dict[str, list[Edge]], end: str) -> set[str]:
        if node not in edges:
            raise KeyError(f"node {node!r} is not in the graph")
        seen: set[str] = set()
        stack = [node]
        while stack:
            for edge in edges[stack.pop()]:
                other = getattr(edge, end)
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        seen.discard(node)
        return seen

    def trained_by(self) -> dict[str, list[str]]:
        """Node -> the updates whose parameter sets include it."""
        out: dict[str, list[str]] = {}
        for update_name, update in self.spec.updates.items():
            for entry in update.params:
                node = entry if isinstance(entry, str) else entry.node
                out.setdefault(node, []).append(update_name)
        return out

    @property
    def export_node(self) -> str | None:
        if self.spec.export.node:
            return self.spec.export.node
        students = [n for n, node in self.nodes.items() if node.kind == "student"]
        return students[0] if students else None
