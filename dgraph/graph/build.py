"""Static validation: a form-checked spec becomes a :class:`Graph`, or every problem at once.

Checks, all without torch: unknown types, params, ports and nodes; roles; dangling inputs;
semantic-type and symbolic-shape mismatches; cycles; updates (unknown or frozen nodes in an
optimizer, empty objectives, losses that reach nothing the update trains); stages; export.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx
from pydantic import ValidationError as PydanticValidationError

from dgraph.errors import Problem, RegistryError, ValidationError, did_you_mean
from dgraph.graph.model import Edge, Graph, Node
from dgraph.ports import (
    Dim,
    Port,
    ShapeUnifier,
    carries_grad,
    format_shape,
    is_subtype,
    parse_shape,
)
from dgraph.registry import COMPONENTS, Component, load_plugins
from dgraph.spec.model import NodeSpec, Spec

__all__ = ["build_graph", "check_graph", "validate"]

TAP_PORT = Port("Features", None, "a tapped submodule's output")


def _close(name: str, candidates: Iterable[str]) -> str | None:
    return did_you_mean(name, candidates)


def _names(candidates: Iterable[str], limit: int = 8) -> str:
    """``a, b, c`` (at most ``limit`` names, then ``...``), or ``-`` when there are none."""
    items = list(candidates)
    shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
    return shown or "-"


class _Collector:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.src = spec.source
        self.problems: list[Problem] = []

    def add(self, code: str, message: str, path: tuple, *, key: bool = False, **kw) -> None:
        loc = self.src.key_where(path) if key else self.src.where(path)
        self.problems.append(Problem(code=code, message=message, location=loc, **kw))


def _build_component(name: str, ns: NodeSpec, out: _Collector) -> Component | None:
    try:
        cls = COMPONENTS.get(ns.type)
    except RegistryError:
        hint = _close(ns.type, COMPONENTS)
        out.add(
            "unknown-type",
            f"unknown component type '{ns.type}'",
            ("nodes", name, "type"),
            node=name,
            expected=f"a component type registered for kind '{ns.kind}' "
            f"(`dgraph list {ns.kind}` shows them)",
            found=f"type: {ns.type}",
            suggestion=hint or f"run `dgraph list {ns.kind}` to see the registered types",
        )
        return None
    if ns.kind not in cls.roles:
        out.add(
            "bad-kind",
            f"component type '{ns.type}' cannot be used as a {ns.kind}",
            ("nodes", name, "kind"),
            node=name,
            expected="kind: " + " | ".join(cls.roles),
            found=f"kind: {ns.kind}",
            suggestion=f"change the kind, or use a type made for a {ns.kind} "
            f"(`dgraph list {ns.kind}`)",
        )
    try:
        params = cls.Params.model_validate(ns.params)
    except PydanticValidationError as exc:
        allowed = list(cls.Params.model_fields)
        errors = exc.errors()
        unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and e["loc"]]
        for err in errors:
            loc = tuple(err["loc"])
            pname = str(loc[0]) if loc else "?"
            path = ("nodes", name, "params", *loc)
            if err["type"] == "missing" and any(_close(u, [pname]) for u in unknown):
                continue  # the unknown parameter's did-you-mean already names it
            if err["type"] == "extra_forbidden":
                hint = _close(pname, allowed)
                out.add(
                    "unknown-param",
                    f"component type '{ns.type}' has no parameter '{pname}'",
                    path,
                    key=True,
                    node=name,
                    expected="one of: " + (", ".join(allowed) or "(no parameters)"),
                    found=f"{pname}: {_short(err.get('input'))}",
                    suggestion=hint or f"remove it (`dgraph list {ns.kind}` shows "
                    f"the parameters of '{ns.type}')",
                )
            elif err["type"] == "missing":
                field = cls.Params.model_fields.get(pname)
                about = f" ({field.description})" if field is not None and field.description else ""
                out.add(
                    "missing-param",
                    f"component type '{ns.type}' needs parameter '{pname}'",
                    ("nodes", name, "params") if ns.params else ("nodes", name),
                    key=not ns.params,
                    node=name,
                    expected=f"'{pname}'{about} under params",
                    found="params: {" + ", ".join(ns.params) + "}" if ns.params else "no params",
                    suggestion=f"add '{pname}:' under params (see `dgraph list {ns.kind}`)",
                )
            else:
                msg = err["msg"].removeprefix("Value error, ")
                out.add(
                    "bad-param",
                    f"parameter '{'.'.join(map(str, loc))}' of '{ns.type}': {msg}",
                    path,
                    node=name,
                    expected=_expected_from(msg),
                    found=_short(err.get("input")),
                    suggestion=f"`dgraph list {ns.kind}` shows the parameters of '{ns.type}' "
                    "and their defaults",
                )
        return None
    return cls(params, node=name)


def _check_shares(name: str, ns: NodeSpec, spec: Spec, out: _Collector) -> None:
    owner = spec.nodes.get(ns.shares)
    path = ("nodes", name, "shares")
    if owner is None:
        out.add("unknown-node", f"'shares' names no node '{ns.shares}'", path, node=name,
                expected=f"a node of this spec: {_names(spec.nodes)}",
                found=f"shares: {ns.shares}",
                suggestion=_close(ns.shares, spec.nodes) or "name the node whose module to use")
    elif owner.shares is not None:
        out.add("bad-shares", f"'{ns.shares}' itself shares '{owner.shares}'", path, node=name,
                expected="a node that owns its module (has no 'shares' of its own)",
                found=f"'{ns.shares}' with shares: {owner.shares}",
                suggestion=f"write 'shares: {owner.shares}' to use the owner's module directly")
    elif (owner.type, owner.params) != (ns.type, ns.params):
        out.add("bad-shares", f"a node sharing '{ns.shares}' must have its type and params",
                path, node=name,
                expected=f"type {owner.type} with params {owner.params}",
                found=f"type {ns.type} with params {ns.params}",
                suggestion="copy the owner's type and params (one module, several uses)")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected_from(message: str) -> str:
    """What a pydantic message says was expected ("Input should be X, unable ..." -> X)."""
    text = message
    if text.startswith("Input should be "):
        text = text[len("Input should be "):]
        text = text.split(", unable to", 1)[0]
    return text


def build_graph(spec: Spec) -> tuple[Graph | None, list[Problem]]:
    """Resolve components and wiring; return the graph (None if unusable) and problems."""
    load_plugins()
    out = _Collector(spec)
    components: dict[str, Component] = {}
    for name, ns in spec.nodes.items():
        comp = _build_component(name, ns, out)
        if comp is not None:
            components[name] = comp

    for name, ns in spec.nodes.items():
        if ns.shares is not None:
            _check_shares(name, ns, spec, out)
        comp = components.get(name)
        if comp is None:
            continue
        for param, target in comp.references().items():
            if target not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"parameter '{param}' names no node '{target}'",
                    ("nodes", name, "params", param),
                    node=name,
                    expected=f"a node of this spec: {_names(spec.nodes)}",
                    found=f"{param}: {target}",
                    suggestion=_close(target, spec.nodes) or "name one of the spec's nodes",
                )

    nodes: dict[str, Node] = {}
    for name, comp in components.items():
        ns = spec.nodes[name]
        try:
            inputs = comp.resolved_inputs(components)
            outputs = comp.resolved_outputs(components)
        except RecursionError:
            refs = ", ".join(f"{k}: {v}" for k, v in comp.references().items())
            out.add(
                "reference-cycle",
                f"node '{name}' ({ns.type}) takes its ports from itself through its parameters",
                ("nodes", name, "params"),
                node=name,
                expected="references that end at a node with ports of its own",
                found=refs or "a reference cycle",
                suggestion="point the reference at the node to follow, e.g. source: student",
            )
            continue
        nodes[name] = Node(
            name=name,
            spec=ns,
            component=comp,
            inputs=inputs,
            outputs=outputs,
            location=spec.source.key_where(("nodes", name)),
        )

    edges: list[Edge] = []
    for name, ns in spec.nodes.items():
        node = nodes.get(name)
        for port, ref in ns.inputs.items():
            path = ("nodes", name, "inputs", port)
            if node is not None and port not in node.inputs:
                out.add(
                    "unknown-port",
                    f"component type '{ns.type}' has no input port '{port}'",
                    path,
                    key=True,
                    node=name,
                    port=port,
                    expected="one of: " + (", ".join(node.inputs) or "(no inputs)"),
                    found=f"{port}: {ref}",
                    suggestion=_close(port, node.inputs)
                    or f"`dgraph list {ns.kind}` shows the ports of '{ns.type}'",
                )
                continue
            src, dot, src_port = ref.partition(".")
            if not dot or not src or not src_port:
                out.add(
                    "bad-reference",
                    f"input '{port}' must name a source as 'node.port'",
                    path,
                    node=name,
                    port=port,
                    expected="'node.port' or 'node.sub.module'",
                    found=f"'{ref}'",
                    suggestion="e.g. 'teacher.logits', or 'teacher.layer3' to tap a submodule",
                )
                continue
            if src not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"input '{port}' refers to an unknown node '{src}'",
                    path,
                    node=name,
                    port=port,
                    expected=f"a node of this spec: {_names(spec.nodes)}",
                    found=f"'{ref}'",
                    suggestion=_close(src, spec.nodes) or "name one of the spec's nodes",
                )
                continue
            src_node = nodes.get(src)
            if src_node is None or node is None:
                continue  # its own problem is already reported
            location = spec.source.where(path)
            if src_port in src_node.outputs:
                edges.append(Edge(src, src_port, name, port, location))
                continue
            if src_node.component.tappable:
                src_node.taps.setdefault(src_port, TAP_PORT)
                edges.append(Edge(src, src_port, name, port, location, tap=True))
                continue
            out.add(
                "unknown-port",
                f"input '{port}' refers to '{ref}', but node '{src}' "
                f"({src_node.spec.type}) has no output port '{src_port}'",
                path,
                node=name,
                port=port,
                expected="one of: " + (", ".join(f"{src}.{p}" for p in src_node.outputs) or "-"),
                found=f"'{ref}'",
                suggestion=_close(src_port, src_node.outputs)
                or f"`dgraph list {src_node.kind}` shows the ports of '{src_node.spec.type}'",
            )
    _resolve_like_types(nodes, edges)
    return Graph(spec=spec, nodes=nodes, edges=edges), out.problems


def _resolve_like_types(nodes: dict[str, Node], edges: list[Edge]) -> None:
    """Give outputs declared ``like`` an input the semantic type of what feeds that input.

    Part of building the graph (not a check): ``add(Logits, Logits)`` outputs ``Logits``.
    Chains of generic ops settle within one pass per node; a cycle (reported later) stops.
    """
    feeding = {(e.dst, e.dst_port): e for e in edges}
    generic = [(node, name, port) for node in nodes.values()
               for name, port in node.outputs.items() if port.like is not None]
    for _ in range(len(generic)):
        changed = False
        for node, name, port in generic:
            edge = feeding.get((node.name, port.like or ""))
            if edge is None or edge.src not in nodes:
                continue
            found = nodes[edge.src].output_port(edge.src_port).type
            if node.outputs[name].type != found:
                node.outputs[name] = Port(found, port.shape, port.doc, port.optional,
                                          port.mismatch_hint, port.like)
                changed = True
        if not changed:
            break


def _check_dangling(graph: Graph, out: _Collector) -> None:
    for name, node in graph.nodes.items():
        fed = {e.dst_port for e in graph.edges_into(name)}
        misspelt = [k for k in node.spec.inputs if k not in node.inputs]
        for port, decl in node.inputs.items():
            if any(_close(k, [port]) for k in misspelt):
                continue  # reported as an unknown port whose did-you-mean names this one
            if port not in fed and not decl.optional and port not in node.spec.inputs:
                candidates = [
                    f"{n}.{p}"
                    for n, other in graph.nodes.items()
                    if n != name
                    for p, out_port in other.outputs.items()
                    if is_subtype(out_port.type, decl.type)
                ]
                given = ", ".join(node.spec.inputs)
                out.add(
                    "unfed-input",
                    f"input port '{port}' ({decl.describe(node.component.port_params())}) "
                    "is not fed by anything",
                    ("nodes", name, "inputs") if node.spec.inputs else ("nodes", name),
                    key=True,
                    node=name,
                    port=port,
                    expected=f"an entry '{port}: <node.port>' under inputs",
                    found=f"inputs: {{{given}}}" if given else "no inputs",
                    suggestion=(
                        f"add under inputs: '{port}: <node.port>'"
                        + (f"; candidates: {', '.join(candidates[:4])}" if candidates else "")
                    ),
                )


def _check_types(graph: Graph, out: _Collector) -> None:
    for edge in graph.edges:
        src_port = graph.nodes[edge.src].output_port(edge.src_port)
        dst_port = graph.nodes[edge.dst].inputs[edge.dst_port]
        if not is_subtype(src_port.type, dst_port.type):
            src_node, dst_node = graph.nodes[edge.src], graph.nodes[edge.dst]
            candidates = [
                f"{n}.{p}"
                for n, other in graph.nodes.items()
                if n != edge.dst
                for p, port in other.outputs.items()
                if is_subtype(port.type, dst_port.type)
            ]
            out.problems.append(
                Problem(
                    code="type-mismatch",
                    message=f"'{edge.src}.{edge.src_port}' ({src_port.type}) cannot feed "
                    f"input '{edge.dst_port}' ({dst_port.type})",
                    location=edge.location,
                    node=edge.dst,
                    port=edge.dst_port,
                    expected=f"{dst_port.describe(dst_node.component.port_params())} "
                    f"(or a subtype of {dst_port.type})",
                    found=f"{src_port.describe(src_node.component.port_params())} "
                    f"from {edge.src}.{edge.src_port}",
                    suggestion=(
                        f"connect an output of type {dst_port.type}"
                        + (f", e.g. {', '.join(candidates[:3])}" if candidates else "")
                        + ", or put an op between them that produces one"
                    ),
                )
            )


def unify_shapes(
    graph: Graph, shapes_of: dict[tuple[str, str], object] | None = None
) -> list[Problem]:
    """Unify every edge's output shape with its input shape; report conflicts by both sides.

    ``shapes_of`` optionally supplies concrete shapes (tuples of ints) from a dry run, keyed by
    (node, output port); they take precedence over the declared symbolic shapes. Edges whose
    semantic types do not match are skipped (that problem is reported on its own). The ``...``
    of a node's input ports stands for the same dimensions in all of them.
    """
    problems: list[Problem] = []
    unifier = ShapeUnifier()
    # dst node -> (dims its inputs' '...' matched, the edge that matched them first)
    rests: dict[str, tuple[tuple[Dim, ...], Edge]] = {}

    def declared(node: Node, port: Port) -> object:
        return parse_shape(port.shape, node.component.port_params())

    for edge in graph.edges:
        src = graph.nodes[edge.src]
        dst = graph.nodes[edge.dst]
        dst_port = dst.inputs[edge.dst_port]
        src_port = src.output_port(edge.src_port)
        dst_shape = declared(dst, dst_port)
        concrete = shapes_of.get((edge.src, edge.src_port)) if shapes_of else None
        if concrete is not None:
            src_shape = tuple(Dim(size=int(s)) for s in concrete)  # type: ignore[union-attr]
        else:
            src_shape = declared(src, src_port)
        graph.shapes[(edge.src, edge.src_port)] = src_shape
        if src_shape is None or dst_shape is None:
            continue
        if not is_subtype(src_port.type, dst_port.type):
            continue  # a type mismatch, reported by _check_types
        problem = _unify_edge(unifier, edge, src_shape, dst_shape, dst, dst_port)
        if problem is None:
            problem = _unify_rest(unifier, rests, edge, src_shape, dst_shape, dst_port)
        if problem is not None:
            problems.append(problem)
    return problems


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
    found = f"{format_shape(src_shape)} from {where}"
    expected = f"{dst_port.type}{format_shape(dst_shape)}"
    if pairs is None:
        return Problem(
            code="shape-mismatch",
            message=f"rank mismatch at input '{edge.dst_port}': "
            f"{len(dst_shape)} dimensions expected, {len(src_shape)} found",
            location=edge.location, node=edge.dst, port=edge.dst_port,
            expected=expected, found=found,
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


def _shape_problem(edge, dst_port, index, dim, got, want, want_from, expected, found, *,
                   got_from=None):
    """A dimension conflict. ``got``/``want`` are (size, node, parameter or None)."""
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


def _check_cycles(graph: Graph, out: _Collector) -> None:
    if nx.is_directed_acyclic_graph(graph.nx):
        return  # the usual case; listing cycles is only needed when there are some
    simple = nx.DiGraph(graph.nx)
    cycles = []
    for cycle in nx.simple_cycles(simple):
        start = cycle.index(min(cycle))
        cycles.append(cycle[start:] + cycle[:start])
        if len(cycles) >= 50:
            break
    for cycle in sorted(cycles):
        ring = " -> ".join([*cycle, cycle[0]])
        hops = list(zip(cycle, [*cycle[1:], cycle[0]], strict=True))
        wires = [next(e for e in graph.edges_from(a) if e.dst == b) for a, b in hops]
        edge = wires[-1]
        out.problems.append(
            Problem(
                code="cycle",
                message=f"the graph has a cycle within one step: {ring}",
                location=edge.location,
                node=edge.dst,
                port=edge.dst_port,
                expected="an acyclic graph: within one step, data flows one way",
                found="; ".join(f"{e.src}.{e.src_port} feeds {e.dst}.{e.dst_port}"
                                for e in wires),
                suggestion="state that feeds back over time belongs to a component (an EMA "
                "'target' node, a memory bank), not to an edge",
            )
        )


def _grad_ancestors(graph: Graph, node: str) -> set[str]:
    """Nodes from which a gradient can flow into ``node`` (through grad-carrying ports)."""
    seen: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        for edge in graph.edges_into(current):
            port = graph.nodes[edge.src].output_port(edge.src_port)
            if not carries_grad(port.type) or edge.src in seen:
                continue
            seen.add(edge.src)
            stack.append(edge.src)
    return seen


def _grad_reached(graph: Graph, sources: set[str],
                  cache: dict[frozenset[str], set[str]]) -> set[str]:
    """Nodes a gradient path leads to from ``sources`` (one forward walk per source set)."""
    key = frozenset(sources)
    if key not in cache:
        seen = set(sources)
        stack = list(sources)
        while stack:
            current = stack.pop()
            for edge in graph.edges_from(current):
                port = graph.nodes[current].output_port(edge.src_port)
                if carries_grad(port.type) and edge.dst not in seen:
                    seen.add(edge.dst)
                    stack.append(edge.dst)
        cache[key] = seen
    return cache[key]


def _check_updates(graph: Graph, out: _Collector) -> None:
    spec = graph.spec
    if not spec.updates:
        trainable = [n for n, node in graph.nodes.items() if not node.frozen]
        if any(node.kind == "loss" for node in graph.nodes.values()) and trainable:
            losses = [n for n, node in graph.nodes.items() if node.kind == "loss"]
            out.add(
                "no-update",
                "the spec has losses but no 'updates', so nothing would be trained",
                (),
                expected="an 'updates' section naming the trained nodes and their losses",
                found=f"losses {_names(losses)} and no 'updates'",
                suggestion="add an update, e.g. updates: {main: {params: ["
                + trainable[0] + "], objective: {" + losses[0] + ": 1.0}}}",
                severity="warning",
            )
    losses = [n for n, s in spec.nodes.items() if s.kind == "loss"]
    trainable = [n for n, s in spec.nodes.items() if not s.is_frozen and s.kind != "loss"]
    incomplete = _incompletely_wired(graph)
    cache: dict[frozenset[str], set[str]] = {}
    for uname, update in spec.updates.items():
        base = ("updates", uname)
        trained: set[str] = set()
        for index, entry in enumerate(update.params):
            node = entry if isinstance(entry, str) else entry.node
            path = (*base, "params", index)
            if not isinstance(entry, str):
                path = (*path, "node")
            if node not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"update '{uname}' trains an unknown node '{node}'",
                    path,
                    expected=f"a trainable node of this spec: {_names(trainable)}",
                    found=f"'{node}'",
                    suggestion=_close(node, spec.nodes) or "name one of the spec's nodes",
                )
                continue
            ns = spec.nodes[node]
            if ns.is_frozen:
                why = "frozen: true" if ns.frozen else f"a {ns.kind} is frozen by default"
                out.add(
                    "frozen-in-optimizer",
                    f"update '{uname}' lists the frozen {ns.kind} '{node}' in its optimizer",
                    path,
                    node=node,
                    expected=f"trainable nodes only: {_names(trainable)}",
                    found=f"'{node}' ({why})",
                    suggestion=f"remove '{node}' from the update, or set 'frozen: false' on "
                    "the node if you mean to train it",
                )
                continue
            trained.add(node)
        if not update.objective:
            out.add(
                "empty-objective",
                f"update '{uname}' has an empty objective",
                (*base, "objective"),
                expected="at least one 'loss_node: weight' entry"
                + (f" (losses: {_names(losses)})" if losses else ""),
                found="objective: {}",
                suggestion="name at least one loss node with its weight, e.g. objective: {"
                + (losses[0] if losses else "ce") + ": 1.0}",
            )
        for loss in update.objective:
            path = (*base, "objective", loss)
            if loss not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"update '{uname}' objective names an unknown node '{loss}'",
                    path,
                    key=True,
                    expected=f"a loss node of this spec: {_names(losses)}",
                    found=f"'{loss}'",
                    suggestion=_close(loss, losses) or "name one of the spec's loss nodes",
                )
                continue
            node = graph.nodes.get(loss)
            if node is None:
                continue
            if node.kind != "loss":
                out.add(
                    "not-a-loss",
                    f"update '{uname}' objective names '{loss}', which is a {node.kind}, "
                    "not a loss",
                    path,
                    key=True,
                    node=loss,
                    expected=f"a node of kind 'loss': {_names(losses)}",
                    found=f"kind '{node.kind}'",
                    suggestion="put a loss node on top of it and name that loss here",
                )
                continue
            if not trained or loss in _grad_reached(graph, trained | incomplete, cache):
                continue
            reach = _grad_ancestors(graph, loss) | {loss}
            if not (reach & trained) and not (reach & incomplete):
                depends = sorted(reach - {loss})
                out.add(
                    "loss-reaches-nothing",
                    f"loss '{loss}' in update '{uname}' reaches none of the parameters that "
                    f"update trains ({', '.join(sorted(trained))})",
                    path,
                    key=True,
                    node=loss,
                    expected="a gradient path from the loss back to one of: "
                    + ", ".join(sorted(trained)),
                    found=f"'{loss}' depends (with gradients) only on: {_names(depends)}",
                    suggestion="wire the loss to an output of a trained node, or train a node "
                    "the loss depends on",
                )


def _incompletely_wired(graph: Graph) -> set[str]:
    """Nodes with an input that did not become an edge or is not fed at all.

    Their problems are reported on their own; checks that follow paths through them would
    only report consequences.
    """
    out: set[str] = set()
    for name, node in graph.nodes.items():
        fed = {e.dst_port for e in graph.edges_into(name)}
        if any(port not in fed for port in node.spec.inputs) or any(
            port not in fed and not decl.optional for port, decl in node.inputs.items()
        ):
            out.add(name)
    return out


def _check_stages(graph: Graph, out: _Collector) -> None:
    spec = graph.spec
    for index, stage in enumerate(spec.stages or []):
        base = ("stages", index)
        for j, uname in enumerate(stage.updates):
            if uname not in spec.updates:
                out.add(
                    "unknown-update",
                    f"stage '{stage.name}' runs an unknown update '{uname}'",
                    (*base, "updates", j),
                    expected=f"an update of this spec: {_names(spec.updates)}",
                    found=f"'{uname}'",
                    suggestion=_close(uname, spec.updates) or "name one of the spec's updates",
                )
        pairs = [("copy", d) for d in stage.copy_weights] + [
            ("copy", s) for s in stage.copy_weights.values()
        ] + [("reinit", n) for n in stage.reinit]
        for key, node in pairs:
            if node not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"stage '{stage.name}' {key} names an unknown node '{node}'",
                    (*base, key),
                    expected=f"a node of this spec: {_names(spec.nodes)}",
                    found=f"'{node}'",
                    suggestion=_close(node, spec.nodes) or "name one of the spec's nodes",
                )


def _check_export(graph: Graph, out: _Collector) -> None:
    node = graph.spec.export.node
    if node is not None and node not in graph.spec.nodes:
        out.add(
            "unknown-node",
            f"export names an unknown node '{node}'",
            ("export", "node"),
            expected=f"a node of this spec: {_names(graph.spec.nodes)}",
            found=f"'{node}'",
            suggestion=_close(node, graph.spec.nodes) or "name the node to export",
        )


def _check_unused(graph: Graph, out: _Collector) -> None:
    roots = [loss for u in graph.spec.updates.values() for loss in u.objective]
    roots += [n for n, node in graph.nodes.items() if node.kind in ("student", "metric")]
    # One reverse walk from all roots at once (ancestors per root would be quadratic).
    used: set[str] = set()
    stack = [root for root in roots if root in graph.nodes]
    while stack:
        current = stack.pop()
        if current in used:
            continue
        used.add(current)
        stack.extend(e.src for e in graph.edges_into(current) if e.src not in used)
    referenced = {n.spec.shares for n in graph.nodes.values() if n.spec.shares}
    for comp_node in graph.nodes.values():
        referenced |= set(comp_node.component.references().values())
    for name, node in graph.nodes.items():
        if name not in used and name not in referenced and node.kind != "data":
            out.add(
                "unused-node",
                f"node '{name}' feeds no loss, student or metric and is never run",
                ("nodes", name),
                key=True,
                node=name,
                expected="a path from the node to a loss of an update, a student or a metric",
                found="no such path",
                suggestion="wire it into a loss, or delete it",
                severity="warning",
            )


def check_graph(graph: Graph) -> list[Problem]:
    """Every static check over a built graph; returns problems (errors and warnings).

    When some nodes could not be built (unknown type, bad params), checks that reason about
    whole paths are skipped: they would only report consequences of the first problem.
    """
    out = _Collector(graph.spec)
    complete = len(graph.nodes) == len(graph.spec.nodes)
    _check_dangling(graph, out)
    _check_types(graph, out)
    _check_cycles(graph, out)
    if not any(p.code == "cycle" for p in out.problems):
        out.problems.extend(unify_shapes(graph))
    if complete:
        _check_updates(graph, out)
        _check_unused(graph, out)
    _check_stages(graph, out)
    _check_export(graph, out)
    return out.problems


def validate(spec: Spec) -> tuple[Graph, list[Problem]]:
    """Build and check; raise :class:`ValidationError` on errors, return graph and warnings."""
    graph, problems = build_graph(spec)
    if graph is not None:
        problems = problems + check_graph(graph)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ValidationError(problems)
    return graph, problems  # type: ignore[return-value]

