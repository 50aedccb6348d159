"""Pass 2: infer the shapes that components compute, then unify every edge's symbolic shape
with its input's; conflicts name both sides.

Pure: returns the shape of every output port that feeds an edge, and the problems; the graph
is not changed (``validate`` and the dry run store the shapes). No torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dgraph.declare import _Declared
from dgraph.errors import Problem
from dgraph.graph.model import CycleError, Edge, Graph, Node
from dgraph.ports import (
    Dim,
    Port,
    Shape,
    ShapeUnifier,
    format_shape,
    is_subtype,
    parse_shape,
)
from dgraph.registry import Component

__all__ = ["infer_shapes"]

_REFERENCED = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)")
# port_params implementations that read only the component's type and its params model
_PARAMS_ONLY = (Component.port_params, _Declared.port_params)


def _frozen(value: Any) -> Any:
    """``value`` with its type, hashable where it is a list or tuple of hashables."""
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_frozen(v) for v in value))
    return (type(value), value)


class _Shapes:
    """``parse_shape`` once per shape text and values of the parameters it names: the nodes
    of one type share their parsed shapes (Shapes are tuples of frozen Dims), in time and in
    the memory of ``graph.shapes``."""

    def __init__(self) -> None:
        self.names: dict[str, tuple[str, ...]] = {}
        self.parsed: dict[tuple, Shape | None] = {}

    def parse(self, text: str | None, params: Mapping[str, Any]) -> Shape | None:
        if text is None:
            return None
        names = self.names.get(text)
        if names is None:
            names = self.names[text] = tuple(dict.fromkeys(_REFERENCED.findall(text)))
        key = (text, tuple(_frozen(params.get(name)) for name in names))
        try:
            seen = key in self.parsed
        except TypeError:  # a value that cannot be hashed: parsed every time
            return parse_shape(text, params)
        if not seen:
            self.parsed[key] = parse_shape(text, params)
        return self.parsed[key]

def infer_shapes(
    graph: Graph, shapes_of: Mapping[tuple[str, str], tuple[int, ...]] | None = None
) -> tuple[dict[tuple[str, str], Shape | None], list[Problem]]:
    """Unify every edge's output shape with its input shape; report conflicts by both sides.

    ``shapes_of`` optionally supplies concrete shapes (tuples of ints) from a dry run, keyed by
    (node, output port); they take precedence over the static ones. Otherwise an output's
    shape is what its component computes from the shapes feeding its inputs
    (:meth:`~dgraph.registry.Component.infer_output_shapes`, nodes visited in topological
    order), or else its declared symbolic shape. Edges whose semantic types do not match are
    skipped (that problem is reported on its own). The ``...`` of a node's input ports stands
    for the same dimensions in all of them.
    """
    cache = _Shapes()
    outputs, problems = _output_shapes(graph, shapes_of or {}, cache)
    # The same shapes in edge order (what graph.shapes holds); the first dict is let go
    # before the edges are unified.
    shapes: dict[tuple[str, str], Shape | None] = {}
    for edge in graph.edges:
        key = (edge.src, edge.src_port)
        if key not in shapes:
            shapes[key] = outputs[key]
    del outputs
    unifier = ShapeUnifier()
    # dst node -> (dims its inputs' '...' matched, the edge that matched them first)
    rests: dict[str, tuple[tuple[Dim, ...], Edge]] = {}

    # A node's port_params, computed once: by its component's type and params model where
    # dgraph's own port_params reads nothing else (nodes of one type with the same params
    # share their params model), else by node.
    port_params: dict[Any, dict[str, Any]] = {}

    def declared(node: Node, port: Port) -> Shape | None:
        if port.shape is None:
            return None
        component = node.component
        kind = type(component)
        key: Any = ((kind, id(component.params)) if kind.port_params in _PARAMS_ONLY
                    else node.name)
        params = port_params.get(key)
        if params is None:
            params = port_params[key] = component.port_params()
        return cache.parse(port.shape, params)

    for edge in graph.edges:
        src = graph.nodes[edge.src]
        dst = graph.nodes[edge.dst]
        dst_port = dst.inputs[edge.dst_port]
        src_port = src.output_port(edge.src_port)
        dst_shape = declared(dst, dst_port)
        src_shape = shapes[(edge.src, edge.src_port)]
        if src_shape is None or dst_shape is None:
            continue
        if not is_subtype(src_port.type, dst_port.type):
            continue  # a type mismatch, reported by check_types
        problem = _unify_edge(unifier, edge, src_shape, dst_shape, dst, dst_port)
        if problem is None:
            problem = _unify_rest(unifier, rests, edge, src_shape, dst_shape, dst_port)
        if problem is not None:
            problems.append(problem)
    return shapes, problems


def _output_shapes(graph: Graph, concrete: Mapping[tuple[str, str], tuple[int, ...]],
                   cache: _Shapes | None = None,
                   ) -> tuple[dict[tuple[str, str], Shape | None], list[Problem]]:
    """The shape of every output that feeds an edge: concrete, computed, or declared.

    Visits the nodes in topological order, so that a component computing its output shapes
    sees what its inputs' producers computed. A component's ``ValueError`` becomes a located
    ``shape-mismatch`` problem, and its outputs are then unknown.
    """
    problems: list[Problem] = []
    out: dict[tuple[str, str], Shape | None] = {}
    cache = cache or _Shapes()
    same: dict[Shape, Shape] = {}  # one tuple of each computed shape
    try:
        order, cyclic = graph.topological_order(), False
    except CycleError:  # a cycle (reported by check_cycles): declared shapes only
        order, cyclic = list(graph.nodes), True
    for name in order:
        node = graph.nodes[name]
        leaving = {edge.src_port for edge in graph.edges_from(name)}
        computed: dict[str, Shape | None] = {}
        # Also for a node that feeds nothing: inputs that cannot combine are an error there
        # too. Not where the dry run has run the node (its shapes are the real ones).
        if not cyclic and (not concrete
                           or any((name, port) not in concrete for port in node.outputs)):
            computed, problem = _computed(graph, node, out)
            if problem is not None:
                problems.append(problem)
        if not leaving:
            continue
        params = node.component.port_params()
        for port in leaving:
            if (name, port) in concrete:
                out[(name, port)] = tuple(Dim(size=int(s)) for s in concrete[(name, port)])
            elif port in computed:
                shape = computed[port]
                # Sizes read from other nodes' parameters are no parameters of this node.
                if shape is not None:
                    shape = tuple(Dim(d.symbol, d.size, d.ellipsis) for d in shape)
                    shape = same.setdefault(shape, shape)
                out[(name, port)] = shape
            else:
                out[(name, port)] = cache.parse(node.output_port(port).shape, params)
    return out, problems


def _computed(graph: Graph, node: Node, out: Mapping[tuple[str, str], Shape | None]
              ) -> tuple[dict[str, Shape | None], Problem | None]:
    """What ``node``'s component computes for its output shapes, or the located problem."""
    feeding = {edge.dst_port: edge for edge in graph.edges_into(node.name)}
    inputs = {port: out.get((edge.src, edge.src_port)) for port, edge in feeding.items()}
    try:
        computed = node.component.infer_output_shapes(inputs)
    except ValueError as exc:
        found = ", ".join(f"{port}: {format_shape(shape)} from {feeding[port].src}."
                          f"{feeding[port].src_port}" for port, shape in inputs.items())
        return {port: None for port in node.outputs}, Problem(
            code="shape-mismatch",
            message=f"the shapes of its inputs do not combine: {exc}",
            location=graph.spec.source.where(("nodes", node.name, "inputs")),
            node=node.name,
            expected=getattr(exc, "expected", None)
            or f"input shapes that '{node.spec.type}' can combine",
            found=found or "no inputs",
            suggestion=getattr(exc, "hint", None)
            or "make the shapes of the inputs agree (`dgraph viz` shows them), or reshape "
            "one of them first with an op (reshape, select, flatten)",
        )
    return dict(computed), None


def _split(shape: tuple) -> tuple[list, list, bool]:
    for i, d in enumerate(shape):
        if d.ellipsis:
            return list(shape[:i]), list(shape[i + 1:]), True
    return list(shape), [], False


def _align(src: tuple, dst: tuple) -> list[tuple] | None:
    """Pair up dims, honouring one ``...`` on either side; None when ranks cannot match."""
    s_head, s_tail, s_ell = _split(src)
    d_head, d_tail, d_ell = _split(dst)
    if not s_ell and not d_ell:
        return list(zip(src, dst, strict=True)) if len(src) == len(dst) else None
    if s_ell and d_ell:
        pairs = list(zip(s_head, d_head, strict=False))
        pairs += list(zip(reversed(s_tail), reversed(d_tail), strict=False))
        return pairs
    fixed, head, tail = (src, d_head, d_tail) if d_ell else (dst, s_head, s_tail)
    if len(fixed) < len(head) + len(tail):
        return None
    fixed_head = fixed[: len(head)]
    fixed_tail = fixed[len(fixed) - len(tail):] if tail else ()
    if d_ell:
        return list(zip(fixed_head, head, strict=True)) + list(zip(fixed_tail, tail, strict=True))
    return list(zip(head, fixed_head, strict=True)) + list(zip(tail, fixed_tail, strict=True))


def _rest_of(src: tuple, dst: tuple) -> tuple[Dim, ...] | None:
    """The source dims that the destination's ``...`` matched (None if unknown or none)."""
    d_head, d_tail, d_ell = _split(dst)
    if not d_ell or any(d.ellipsis for d in src):
        return None
    if len(src) < len(d_head) + len(d_tail):
        return None
    return tuple(src[len(d_head): len(src) - len(d_tail)])


def _unify_rest(unifier, rests, edge: Edge, src_shape, dst_shape, dst_port: Port):
    """Check that what a node's ``...`` matches agrees across its input ports."""
    rest = _rest_of(src_shape, dst_shape)
    if rest is None:
        return None
    if edge.dst not in rests:
        rests[edge.dst] = (rest, edge)
        return None
    first, first_edge = rests[edge.dst]
    if first_edge.dst_port == edge.dst_port:
        return None
    head = len(_split(dst_shape)[0])
    shown = dst_shape[:head] + first + dst_shape[head + 1:]
    expected = (f"{dst_port.type}{format_shape(shown)}, the shape of input "
                f"'{first_edge.dst_port}'")
    found = f"{format_shape(src_shape)} from {edge.src}.{edge.src_port}"
    if len(first) != len(rest):
        return Problem(
            code="shape-mismatch",
            message=f"input '{edge.dst_port}' has {len(src_shape)} dimensions but input "
            f"'{first_edge.dst_port}' has {len(shown)}; they must have the same shape",
            location=edge.location, node=edge.dst, port=edge.dst_port,
            expected=expected, found=found,
            suggestion="reshape one side with an op (e.g. flatten), or tap a matching layer",
        )
    other = f"{first_edge.src}.{first_edge.src_port} via input '{first_edge.dst_port}'"
    for offset, (mine, theirs) in enumerate(zip(rest, first, strict=True)):
        index = head + offset
        got = (mine.size, edge.src, mine.param)
        if mine.size is not None and theirs.size is not None:
            if mine.size != theirs.size:
                return _shape_problem(edge, dst_port, index, None, got,
                                      (theirs.size, first_edge.src, theirs.param),
                                      other, expected, found)
            continue
        if mine.size is not None and theirs.symbol:
            clash = unifier.assign((first_edge.src, theirs.symbol), mine.size,
                                   f"{edge.src}.{edge.src_port} via input '{edge.dst_port}'",
                                   (edge.src, mine.param) if mine.param else None)
        elif theirs.size is not None and mine.symbol:
            clash = unifier.assign((edge.src, mine.symbol), theirs.size, other,
                                   (first_edge.src, theirs.param) if theirs.param else None)
            if clash is not None:
                return _shape_problem(edge, dst_port, index, None,
                                      (clash.size, *(clash.param or (None, None))),
                                      (theirs.size, first_edge.src, theirs.param),
                                      other, expected, found, got_from=clash.origin)
            continue
        elif mine.symbol and theirs.symbol:
            conflict = unifier.union((first_edge.src, theirs.symbol), (edge.src, mine.symbol))
            if conflict is not None:
                a, b = conflict
                return _shape_problem(edge, dst_port, index, None,
                                      (b.size, *(b.param or (None, None))),
                                      (a.size, *(a.param or (None, None))),
                                      a.origin or other, expected, found, got_from=b.origin)
            continue
        else:
            continue
        if clash is not None:
            return _shape_problem(edge, dst_port, index, None, got,
                                  (clash.size, *(clash.param or (None, None))),
                                  clash.origin, expected, found)
    return None


def _unify_edge(unifier, edge: Edge, src_shape, dst_shape, dst: Node, dst_port: Port):
    where = f"{edge.src}.{edge.src_port}"
    pairs = _align(src_shape, dst_shape)
    # what a problem shows as expected and found (written out only for a problem)
    expected, found = _Shown(dst_port.type, dst_shape), _Shown(src_shape, where)
    if pairs is None:
        return Problem(
            code="shape-mismatch",
            message=f"rank mismatch at input '{edge.dst_port}': "
            f"{len(dst_shape)} dimensions expected, {len(src_shape)} found",
            location=edge.location, node=edge.dst, port=edge.dst_port,
            expected=str(expected), found=str(found),
            suggestion="reshape with an op (e.g. flatten), or tap a different layer",
        )
    via = f"{where} via input '{edge.dst_port}'"
    declared = f"the declared shape of input '{edge.dst}.{edge.dst_port}'"
    for index, (s, d) in enumerate(pairs):
        s_key = (edge.src, s.symbol) if s.symbol else None
        d_key = (edge.dst, d.symbol) if d.symbol else None
        got = (s.size, edge.src, s.param)
        if s.size is not None and d.size is not None:
            if s.size != d.size:
                return _shape_problem(edge, dst_port, index, d, got, (d.size, edge.dst, d.param),
                                      declared, expected, found)
            continue
        if s.size is not None and d_key is not None:
            clash = unifier.assign(d_key, s.size, via, (edge.src, s.param) if s.param else None)
            if clash is not None:
                return _shape_problem(edge, dst_port, index, d, got,
                                      (clash.size, *(clash.param or (None, None))),
                                      clash.origin, expected, found)
        elif d.size is not None and s_key is not None:
            clash = unifier.assign(s_key, d.size, declared,
                                   (edge.dst, d.param) if d.param else None)
            if clash is not None:
                return _shape_problem(edge, dst_port, index, d,
                                      (clash.size, *(clash.param or (None, None))),
                                      (d.size, edge.dst, d.param), declared, expected, found,
                                      got_from=clash.origin)
        elif s_key is not None and d_key is not None:
            conflict = unifier.union(d_key, s_key)
            if conflict is not None:
                mine, theirs = conflict
                return _shape_problem(edge, dst_port, index, d,
                                      (theirs.size, *(theirs.param or (None, None))),
                                      (mine.size, *(mine.param or (None, None))),
                                      mine.origin, expected, found,
                                      got_from=theirs.origin or where)
    return None


class _Shown:
    """``Type[dims]`` (a port's type and a shape) or ``[dims] from node.port`` (a shape and
    where it comes from), written out when a problem shows it."""

    __slots__ = ("first", "second")

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def __str__(self) -> str:
        if isinstance(self.first, str):
            return f"{self.first}{format_shape(self.second)}"
        return f"{format_shape(self.first)} from {self.second}"


def _shape_problem(edge, dst_port, index, dim, got, want, want_from, expected, found, *,
                   got_from=None):
    """A dimension conflict. ``got``/``want`` are (size, node, parameter or None)."""
    expected, found = str(expected), str(found)
    got_size, got_node, got_param = got
    want_size, want_node, want_param = want
    got_from = got_from or f"{edge.src}.{edge.src_port}"
    name = dim.symbol if dim is not None and dim.symbol else f"{index}"
    fixes = []
    if got_param and got_node:
        fixes.append(f"set '{got_param}' of '{got_node}' to {want_size}")
    if want_param and want_node and (want_node, want_param) != (got_node, got_param):
        fixes.append(f"set '{want_param}' of '{want_node}' to {got_size}")
    if dst_port.mismatch_hint:
        fixes.append(dst_port.mismatch_hint)
    else:
        fixes.append(f"put a projector mapping {got_size} to {want_size} in between")
    if dim is not None and dim.symbol:
        expected = expected.replace(f"{name}", f"{name}={want_size}", 1)
    return Problem(
        code="shape-mismatch",
        message=f"dimension {name} of input '{edge.dst_port}' is {got_size} (from {got_from}) "
        f"but must be {want_size} (from {want_from})",
        location=edge.location,
        node=edge.dst,
        port=edge.dst_port,
        expected=expected,
        found=found,
        suggestion="make both sides agree: " + ", or ".join(fixes),
    )


