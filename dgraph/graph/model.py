"""The graph's primitives: nodes (one use of a component), edges (output port -> input port).

Kept apart from building and checking so that every later layer can import them freely.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dgraph.errors import Location
from dgraph.ports import Port, Shape
from dgraph.registry import Component
from dgraph.spec.model import NodeSpec, Spec
from dgraph.spec.source import SourceMap

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["NO_TAPS", "TAP_PORT", "CycleError", "Edge", "Graph", "Node", "Reference"]

TAP_PORT = Port("Features", None, "a tapped submodule's output")


class _NoTaps(Mapping[str, Port]):
    """The taps of a node that nothing taps: one empty mapping that nothing can change,
    shared by those nodes (a dict each would cost 64 bytes a node)."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Port:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"

    def __reduce__(self) -> str:
        return "NO_TAPS"  # pickled as the one instance


NO_TAPS: Mapping[str, Port] = _NoTaps()


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
    # Where the node is defined: its Location, or the spec's SourceMap, which gives it (the
    # node's key) when asked: a spec of a million nodes would otherwise keep a million.
    located: Location | SourceMap = field(repr=False)
    # submodule path -> port; nodes that nothing taps share one empty, read-only mapping
    taps: Mapping[str, Port] = field(default_factory=lambda: NO_TAPS)

    @property
    def location(self) -> Location:
        """Where the node is defined (its key under ``nodes``)."""
        where = self.located
        if isinstance(where, Location):
            return where
        return where.key_where(("nodes", self.name))

    def tap(self, path: str) -> None:
        """Record that an edge taps the submodule at ``path`` (a :data:`TAP_PORT`)."""
        if not isinstance(self.taps, dict):
            self.taps = {}
        self.taps.setdefault(path, TAP_PORT)

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
    # Where the input is written: its Location, or the spec's SourceMap, which gives it
    # (``nodes.<dst>.inputs.<dst_port>``) when asked.
    located: Location | SourceMap = field(repr=False, compare=False)
    tap: bool = False

    @property
    def location(self) -> Location:
        """Where the input that makes this edge is written."""
        where = self.located
        if isinstance(where, Location):
            return where
        return where.where(("nodes", self.dst, "inputs", self.dst_port))

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
        into: dict[str, list[Edge]] = {name: [] for name in self.nodes}
        from_: dict[str, list[Edge]] = {name: [] for name in self.nodes}
        for edge in self.edges:
            from_.setdefault(edge.src, []).append(edge)
            into.setdefault(edge.src, [])
            into.setdefault(edge.dst, []).append(edge)
            from_.setdefault(edge.dst, [])
        # Kept as () for no edge, the Edge itself for one, a tuple for more: most nodes of a
        # large spec have one edge in and one out, and a list for each costs 64 bytes.
        self._into = _compact(into)
        self._from = _compact(from_)
        # The order of these edges, or the CycleError, once computed (validation and
        # compilation ask several times)
        self._order: list[str] | CycleError | None = None

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
        """The edges into ``node``, in edge order (a new list)."""
        return _listed(self._into.get(node, ()))

    def edges_from(self, node: str) -> list[Edge]:
        """The edges from ``node``, in edge order (a new list)."""
        return _listed(self._from.get(node, ()))

    def topological_order(self) -> list[str]:
        """Nodes in the unique topological order that breaks ties by name (networkx's
        ``lexicographical_topological_sort``); :class:`CycleError` on a cycle."""
        if self._order is None:
            try:
                self._order = self._ordered()
            except CycleError as exc:
                self._order = exc
        if isinstance(self._order, CycleError):
            raise CycleError(*self._order.args)
        return list(self._order)

    def _ordered(self) -> list[str]:
        waiting = {name: 1 if isinstance(into, Edge) else len(into)
                   for name, into in self._into.items() if into}
        ready = [name for name, into in self._into.items() if not into]
        heapq.heapify(ready)
        order: list[str] = []
        leaving = self._from
        while ready:
            name = heapq.heappop(ready)
            order.append(name)
            out = leaving[name]
            for edge in (out,) if isinstance(out, Edge) else out:
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
    def _reached(node: str, edges: dict[str, _Edges], end: str) -> set[str]:
        if node not in edges:
            raise KeyError(f"node {node!r} is not in the graph")
        seen: set[str] = set()
        stack = [node]
        while stack:
            found = edges[stack.pop()]
            for edge in (found,) if isinstance(found, Edge) else found:
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


_Edges = Edge | tuple[Edge, ...]  # a node's edges in or out: none, one, or several


def _compact(lists: dict[str, list[Edge]]) -> dict[str, _Edges]:
    """Each list of edges as (), its one Edge, or a tuple (one list let go at a time)."""
    compact: dict[str, _Edges] = {}
    for name in list(lists):
        edges = lists.pop(name)
        compact[name] = edges[0] if len(edges) == 1 else tuple(edges)
    return compact


def _listed(edges: _Edges) -> list[Edge]:
    return [edges] if isinstance(edges, Edge) else list(edges)
