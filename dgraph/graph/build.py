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
from dgraph.ports import Port, ShapeUnifier, carries_grad, format_shape, is_subtype, parse_shape
from dgraph.registry import COMPONENTS, Component, load_plugins
from dgraph.spec.model import NodeSpec, Spec

__all__ = ["build_graph", "check_graph", "validate"]

TAP_PORT = Port("Features", None, "a tapped submodule's output")


def _close(name: str, candidates: Iterable[str]) -> str | None:
    return did_you_mean(name, candidates)


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
            suggestion=hint or "run `dgraph list` to see the registered types",
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
        )
    try:
        params = cls.Params.model_validate(ns.params)
    except PydanticValidationError as exc:
        allowed = list(cls.Params.model_fields)
        for err in exc.errors():
            loc = tuple(err["loc"])
            pname = str(loc[0]) if loc else "?"
            path = ("nodes", name, "params", *loc)
            if err["type"] == "extra_forbidden":
                hint = _close(pname, allowed)
                out.add(
                    "unknown-param",
                    f"component type '{ns.type}' has no parameter '{pname}'",
                    path,
                    key=True,
                    node=name,
                    expected="one of: " + (", ".join(allowed) or "(no parameters)"),
                    suggestion=hint,
                )
            elif err["type"] == "missing":
                out.add(
                    "missing-param",
                    f"component type '{ns.type}' needs parameter '{pname}'",
                    ("nodes", name, "params") if ns.params else ("nodes", name),
                    node=name,
                    suggestion=f"add '{pname}:' under params (see `dgraph list {ns.kind}`)",
                )
            else:
                msg = err["msg"].removeprefix("Value error, ")
                out.add(
                    "bad-param",
                    f"parameter '{'.'.join(map(str, loc))}' of '{ns.type}': {msg}",
                    path,
                    node=name,
                    found=repr(err.get("input")),
                )
        return None
    return cls(params, node=name)


def _check_shares(name: str, ns: NodeSpec, spec: Spec, out: _Collector) -> None:
    owner = spec.nodes.get(ns.shares)
    path = ("nodes", name, "shares")
    if owner is None:
        out.add("unknown-node", f"'shares' names no node '{ns.shares}'", path, node=name,
                suggestion=_close(ns.shares, spec.nodes))
    elif owner.shares is not None:
        out.add("bad-shares", f"'{ns.shares}' itself shares '{owner.shares}'", path, node=name,
                suggestion=f"write 'shares: {owner.shares}' to use the owner's module directly")
    elif (owner.type, owner.params) != (ns.type, ns.params):
        out.add("bad-shares", f"a node sharing '{ns.shares}' must have its type and params",
                path, node=name,
                expected=f"type {owner.type} with params {owner.params}",
                found=f"type {ns.type} with params {ns.params}",
                suggestion="copy the owner's type and params (one module, several uses)")


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
                    suggestion=_close(target, spec.nodes),
                )

    nodes: dict[str, Node] = {}
    for name, comp in components.items():
        ns = spec.nodes[name]
        nodes[name] = Node(
            name=name,
            spec=ns,
            component=comp,
            inputs=comp.resolved_inputs(components),
            outputs=comp.resolved_outputs(components),
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
                    suggestion=_close(port, node.inputs),
                )
                continue
            src, dot, src_port = ref.partition(".")
            if not dot or not src or not src_port:
                out.add(
                    "bad-reference",
                    f"input '{port}' must name a source as 'node.port', found '{ref}'",
                    path,
                    node=name,
                    port=port,
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
                    suggestion=_close(src, spec.nodes),
                )
                continue
            src_node = nodes.get(src)
            if src_node is None:
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
                suggestion=_close(src_port, src_node.outputs),
            )
    return Graph(spec=spec, nodes=nodes, edges=edges), out.problems


def _check_dangling(graph: Graph, out: _Collector) -> None:
    for name, node in graph.nodes.items():
        fed = {e.dst_port for e in graph.edges_into(name)}
        for port, decl in node.inputs.items():
            if port not in fed and not decl.optional and port not in node.spec.inputs:
                candidates = [
                    f"{n}.{p}"
                    for n, other in graph.nodes.items()
                    if n != name
                    for p, out_port in other.outputs.items()
                    if is_subtype(out_port.type, decl.type)
                ]
                out.add(
                    "unfed-input",
                    f"input port '{port}' ({decl.describe(node.component.port_params())}) "
                    "is not fed by anything",
                    ("nodes", name),
                    key=True,
                    node=name,
                    port=port,
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
            out.problems.append(
                Problem(
                    code="type-mismatch",
                    message=f"'{edge.src}.{edge.src_port}' cannot feed input '{edge.dst_port}'",
                    location=edge.location,
                    node=edge.dst,
                    port=edge.dst_port,
                    expected=dst_port.type,
                    found=f"{src_port.type} (from {edge.src}.{edge.src_port})",
                    suggestion="connect an output of the expected type, or put a projector "
                    "or op between them",
                )
            )


def unify_shapes(
    graph: Graph, shapes_of: dict[tuple[str, str], object] | None = None
) -> list[Problem]:
    """Unify every edge's output shape with its input shape; report conflicts by both sides.

    ``shapes_of`` optionally supplies concrete shapes (tuples of ints) from a dry run, keyed by
    (node, output port); they take precedence over the declared symbolic shapes.
    """
    problems: list[Problem] = []
    unifier = ShapeUnifier()

    def declared(node: Node, port: Port) -> object:
        return parse_shape(port.shape, node.component.port_params())

    for edge in graph.edges:
        src = graph.nodes[edge.src]
        dst = graph.nodes[edge.dst]
        dst_port = dst.inputs[edge.dst_port]
        dst_shape = declared(dst, dst_port)
        concrete = shapes_of.get((edge.src, edge.src_port)) if shapes_of else None
        if concrete is not None:
            from dgraph.ports import Dim

            src_shape = tuple(Dim(size=int(s)) for s in concrete)  # type: ignore[union-attr]
        else:
            src_shape = declared(src, src.output_port(edge.src_port))
        graph.shapes[(edge.src, edge.src_port)] = src_shape
        if src_shape is None or dst_shape is None:
            continue
        problem = _unify_edge(unifier, edge, src_shape, dst_shape, dst, dst_port)
        if problem is not None:
            problems.append(problem)
    return problems


def _align(src: tuple, dst: tuple) -> list[tuple] | None:
    """Pair up dims, honouring one ``...`` on either side; None when ranks cannot match."""
    def split(shape: tuple) -> tuple[list, list, bool]:
        for i, d in enumerate(shape):
            if d.ellipsis:
                return list(shape[:i]), list(shape[i + 1:]), True
        return list(shape), [], False

    s_head, s_tail, s_ell = split(src)
    d_head, d_tail, d_ell = split(dst)
    if not s_ell and not d_ell:
        return list(zip(src, dst)) if len(src) == len(dst) else None
    if s_ell and d_ell:
        pairs = list(zip(s_head, d_head)) + list(zip(reversed(s_tail), reversed(d_tail)))
        return pairs
    fixed, head, tail = (src, d_head, d_tail) if d_ell else (dst, s_head, s_tail)
    if len(fixed) < len(head) + len(tail):
        return None
    fixed_head = fixed[: len(head)]
    fixed_tail = fixed[len(fixed) - len(tail):] if tail else ()
    if d_ell:
        return list(zip(fixed_head, head)) + list(zip(fixed_tail, tail))
    return list(zip(head, fixed_head)) + list(zip(tail, fixed_tail))


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
            suggestion="reshape with an op, or tap a different layer",
        )
    for index, (s, d) in enumerate(pairs):
        s_key = (edge.src, s.symbol) if s.symbol else None
        d_key = (edge.dst, d.symbol) if d.symbol else None
        here = f"{edge.dst}.{edge.dst_port} (from {where}, dim {index})"
        clash = None
        if s.size is not None and d.size is not None:
            if s.size != d.size:
                return _shape_problem(edge, dst, dst_port, index, d, s.size, d.size, where,
                                      f"'{edge.dst}' itself", expected, found)
            continue
        if s.size is not None and d_key is not None:
            clash = unifier.assign(d_key, s.size, here)
            if clash is not None:
                return _shape_problem(edge, dst, dst_port, index, d, s.size, clash.size, where,
                                      clash.origin, expected, found)
        elif d.size is not None and s_key is not None:
            clash = unifier.assign(s_key, d.size, f"{edge.dst}.{edge.dst_port} (declared)")
            if clash is not None:
                return _shape_problem(edge, dst, dst_port, index, d, clash.size, d.size, where,
                                      f"'{edge.dst}' itself", expected, found)
        elif s_key is not None and d_key is not None:
            conflict = unifier.union(d_key, s_key)
            if conflict is not None:
                mine, theirs = conflict
                return _shape_problem(edge, dst, dst_port, index, d, theirs.size, mine.size,
                                      theirs.origin or where, mine.origin, expected, found)
    return None


def _shape_problem(edge, dst, dst_port, index, dim, got, want, got_from, want_from, expected,
                   found):
    name = dim.symbol or f"dim {index}"
    return Problem(
        code="shape-mismatch",
        message=f"dimension {name} of input '{edge.dst_port}' is {got} (from {got_from}) "
        f"but {want} (from {want_from})",
        location=edge.location,
        node=edge.dst,
        port=edge.dst_port,
        expected=expected.replace(f"{name}", f"{name}={want}", 1) if dim.symbol else expected,
        found=found,
        suggestion="make both sides agree: change a width parameter, or add a projector "
        f"mapping {got} to {want}",
    )


def _check_cycles(graph: Graph, out: _Collector) -> None:
    simple = nx.DiGraph(graph.nx)
    for cycle in nx.simple_cycles(simple):
        ring = " -> ".join([*cycle, cycle[0]])
        edge = next(e for e in graph.edges if e.src == cycle[-1] and e.dst == cycle[0])
        out.problems.append(
            Problem(
                code="cycle",
                message=f"the graph has a cycle within one step: {ring}",
                location=edge.location,
                node=cycle[0],
                suggestion="state that feeds back over time belongs to a component (an EMA "
                "'target' node, a memory bank), not to an edge",
            )
        )
        if len(out.problems) > 50:
            break


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


def _check_updates(graph: Graph, out: _Collector) -> None:
    spec = graph.spec
    if not spec.updates:
        trainable = [n for n, node in graph.nodes.items() if not node.frozen]
        if any(node.kind == "loss" for node in graph.nodes.values()) and trainable:
            out.add(
                "no-update",
                "the spec has losses but no 'updates', so nothing would be trained",
                (),
                suggestion="add an update, e.g. updates: {main: {params: ["
                + trainable[0] + "], objective: {<loss>: 1.0}}}",
                severity="warning",
            )
    for uname, update in spec.updates.items():
        base = ("updates", uname)
        trained: set[str] = set()
        for index, entry in enumerate(update.params):
            node = entry if isinstance(entry, str) else entry.node
            path = (*base, "params", index) if isinstance(entry, str) else (*base, "params", index, "node")
            if node not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"update '{uname}' trains an unknown node '{node}'",
                    path,
                    suggestion=_close(node, spec.nodes),
                )
                continue
            ns = spec.nodes[node]
            if ns.is_frozen:
                out.add(
                    "frozen-in-optimizer",
                    f"update '{uname}' lists the frozen {ns.kind} '{node}' in its optimizer",
                    path,
                    node=node,
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
                suggestion="name at least one loss node with its weight, e.g. objective: {ce: 1.0}",
            )
        for loss in update.objective:
            path = (*base, "objective", loss)
            if loss not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"update '{uname}' objective names an unknown node '{loss}'",
                    path,
                    key=True,
                    suggestion=_close(loss, [n for n, s in spec.nodes.items() if s.kind == "loss"]),
                )
                continue
            node = graph.nodes.get(loss)
            if node is None:
                continue
            if node.kind != "loss":
                out.add(
                    "not-a-loss",
                    f"update '{uname}' objective names '{loss}', which is a {node.kind}, not a loss",
                    path,
                    key=True,
                    node=loss,
                    expected="a node of kind 'loss'",
                    found=f"kind '{node.kind}'",
                )
                continue
            reach = _grad_ancestors(graph, loss) | {loss}
            if trained and not (reach & trained):
                out.add(
                    "loss-reaches-nothing",
                    f"loss '{loss}' in update '{uname}' reaches none of the parameters that "
                    f"update trains ({', '.join(sorted(trained))})",
                    path,
                    key=True,
                    node=loss,
                    suggestion="wire the loss to an output of a trained node, or train a node "
                    "the loss depends on",
                )


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
                    suggestion=_close(uname, spec.updates),
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
                    suggestion=_close(node, spec.nodes),
                )


def _check_export(graph: Graph, out: _Collector) -> None:
    node = graph.spec.export.node
    if node is not None and node not in graph.spec.nodes:
        out.add(
            "unknown-node",
            f"export names an unknown node '{node}'",
            ("export", "node"),
            suggestion=_close(node, graph.spec.nodes),
        )


def _check_unused(graph: Graph, out: _Collector) -> None:
    used: set[str] = set()
    roots = [loss for u in graph.spec.updates.values() for loss in u.objective]
    roots += [n for n, node in graph.nodes.items() if node.kind in ("student", "metric")]
    for root in roots:
        if root in graph.nodes:
            used |= graph.ancestors(root) | {root}
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

