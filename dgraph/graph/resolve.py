"""Pass 1: resolve a form-checked spec into a :class:`Graph` (components, references, wiring).

Looks up each node's component type and validates its parameters, resolves ``inputs`` into
edges (or taps into a model's submodules) and gives generic ops' outputs the semantic type of
what feeds them. Problems are collected, never raised; no torch.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError as PydanticValidationError

from dgraph.errors import Problem, RegistryError
from dgraph.graph.common import Collector, close, names
from dgraph.graph.model import TAP_PORT, Edge, Graph, Node, Reference
from dgraph.ports import Port
from dgraph.registry import COMPONENTS, Component, load_plugins, reference_path
from dgraph.spec.model import NodeSpec, Spec, share_fields_set

__all__ = ["TAP_PORT", "build_graph"]


def _params_key(value: Any) -> Any:
    """``value`` (a node's written params) as a hashable key that tells apart what pydantic
    could read differently: 1, 1.0 and True; 0.0 and -0.0; a list and a mapping."""
    kind = type(value)
    if kind is dict:
        return (dict, tuple((k, _params_key(v)) for k, v in value.items()))
    if kind is list or kind is tuple:
        return (kind, tuple(_params_key(v) for v in value))
    if kind is float:
        return (float, repr(value))
    if kind in (str, int, bool) or value is None:
        return (kind, value)
    raise TypeError(f"no key for {kind.__name__}")  # anything else is validated every time


def _build_component(name: str, ns: NodeSpec, out: Collector,
                     shared: dict[frozenset[str], set[str]] | None = None,
                     validated: dict[Any, Any] | None = None) -> Component | None:
    try:
        cls = COMPONENTS.get(ns.type)
    except RegistryError:
        hint = close(ns.type, COMPONENTS)
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
    key: Any = None
    if validated is not None:
        try:
            key = (cls, _params_key(ns.params))
        except TypeError:
            key = None
    params = validated.get(key) if key is not None and validated is not None else None
    if params is not None:  # the same type and params as an earlier node: its frozen model
        return cls(params, node=name)
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
            if err["type"] == "missing" and any(close(u, [pname]) for u in unknown):
                continue  # the unknown parameter's did-you-mean already names it
            if err["type"] == "extra_forbidden":
                hint = close(pname, allowed)
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
                    (f"parameter '{'.'.join(map(str, loc))}' of '{ns.type}': {msg}" if loc
                     else f"parameters of '{ns.type}': {msg}"),
                    path,
                    node=name,
                    expected=_expected_from(msg),
                    found=_short(err.get("input")),
                    suggestion=f"`dgraph list {ns.kind}` shows the parameters of '{ns.type}' "
                    "and their defaults",
                )
        return None
    if shared is not None:
        share_fields_set(params, shared)
    if key is not None and validated is not None and params.model_config.get("frozen"):
        validated[key] = params
    return cls(params, node=name)


def _check_shares(name: str, ns: NodeSpec, shares: str, spec: Spec,
                  out: Collector) -> None:
    """Check that node ``name`` may share the module of node ``shares`` (its ``ns.shares``)."""
    owner = spec.nodes.get(shares)
    path = ("nodes", name, "shares")
    if owner is None:
        out.add("unknown-node", f"'shares' names no node '{shares}'", path, node=name,
                expected=f"a node of this spec: {names(spec.nodes)}",
                found=f"shares: {shares}",
                suggestion=close(shares, spec.nodes) or "name the node whose module to use")
    elif owner.shares is not None:
        out.add("bad-shares", f"'{shares}' itself shares '{owner.shares}'", path, node=name,
                expected="a node that owns its module (has no 'shares' of its own)",
                found=f"'{shares}' with shares: {owner.shares}",
                suggestion=f"write 'shares: {owner.shares}' to use the owner's module directly")
    elif (owner.type, owner.params) != (ns.type, ns.params):
        out.add("bad-shares", f"a node sharing '{shares}' must have its type and params",
                path, node=name,
                expected=f"type {owner.type} with params {owner.params}",
                found=f"type {ns.type} with params {ns.params}",
                suggestion="leave out 'type' and 'params': a node that shares another's "
                "module inherits them")


def _shared(ports: dict[str, Port], seen: dict[tuple, dict[str, Port]]) -> dict[str, Port]:
    """One dict for the nodes whose ports are the same Port objects under the same names
    (nodes of one type): a spec of a million nodes would otherwise hold a million copies.
    Nothing changes a shared dict: :func:`_resolve_like_types` gives a node whose output is
    declared ``like`` an input a new one."""
    key = (*ports, *map(id, ports.values()))
    return seen.setdefault(key, ports)


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
    out = Collector(spec)
    source = spec.source  # (a pydantic private attribute: looked up once, not per node)
    components: dict[str, Component] = {}
    shared: dict[frozenset[str], set[str]] = {}  # one set of set params per form
    # Nodes of one type with the same params share one (frozen) params model: validated once.
    validated: dict[Any, Any] = {}
    for name, ns in spec.nodes.items():
        comp = _build_component(name, ns, out, shared, validated)
        if comp is not None:
            components[name] = comp
    del validated

    references: list[Reference] = []
    for name, ns in spec.nodes.items():
        if ns.shares is not None:
            _check_shares(name, ns, ns.shares, spec, out)
        comp = components.get(name)
        if comp is None:
            continue
        for param, target in comp.references().items():
            at = ("nodes", name, "params", *reference_path(param))
            if target in spec.nodes:
                references.append(Reference(target, name, param, spec.source.where(at)))
            else:
                out.add(
                    "unknown-node",
                    f"parameter '{param}' names no node '{target}'",
                    at,
                    node=name,
                    expected=f"a node of this spec: {names(spec.nodes)}",
                    found=f"{param}: {target}",
                    suggestion=close(target, spec.nodes) or "name one of the spec's nodes",
                )

    nodes: dict[str, Node] = {}
    same_ports: dict[tuple, dict[str, Port]] = {}
    for name, comp in components.items():
        ns = spec.nodes[name]
        try:
            inputs = _shared(comp.resolved_inputs(components), same_ports)
            outputs = _shared(comp.resolved_outputs(components), same_ports)
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
            located=source,  # its key, located when asked
        )

    edges: list[Edge] = []
    ports: dict[str, str] = {}  # one copy of each port name for the edges
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
                    suggestion=close(port, node.inputs)
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
                    expected=f"a node of this spec: {names(spec.nodes)}",
                    found=f"'{ref}'",
                    suggestion=close(src, spec.nodes) or "name one of the spec's nodes",
                )
                continue
            src_node = nodes.get(src)
            if src_node is None or node is None:
                continue  # its own problem is already reported
            # each edge is located at its input (path) when asked, through the source map
            src, src_port = src_node.name, ports.setdefault(src_port, src_port)
            if src_port in src_node.outputs:
                edges.append(Edge(src, src_port, name, port, source))
                continue
            if src_node.component.tappable:
                src_node.tap(src_port)
                edges.append(Edge(src, src_port, name, port, source, tap=True))
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
                suggestion=close(src_port, src_node.outputs)
                or f"`dgraph list {src_node.kind}` shows the ports of '{src_node.spec.type}'",
            )
    graph = Graph(spec=spec, nodes=nodes, edges=edges, references=references)
    _resolve_like_types(graph, same_ports)
    return graph, out.problems


def _feeding(graph: Graph, node: str, port: str | None) -> Edge | None:
    """The edge into input ``port`` of ``node`` (an input has at most one), or None."""
    for edge in graph.edges_into(node):
        if edge.dst_port == port:
            return edge
    return None


def _resolve_like_types(graph: Graph, same_ports: dict[tuple, dict[str, Port]]) -> None:
    """Give outputs declared ``like`` an input the semantic type of what feeds that input.

    Part of building the graph (not a check): ``add(Logits, Logits)`` outputs ``Logits``.
    Chains of generic ops settle within one pass per node; a cycle (reported later) stops.
    """
    nodes = graph.nodes
    generic = [(node, name, port) for node in nodes.values()
               for name, port in node.outputs.items() if port.like is not None]
    made: dict[tuple[int, str], Port] = {}  # one Port per declared port and type it takes
    for _ in range(len(generic)):
        changed = False
        for node, name, port in generic:
            edge = _feeding(graph, node.name, port.like)
            if edge is None or edge.src not in nodes:
                continue
            found = nodes[edge.src].output_port(edge.src_port).type
            if node.outputs[name].type != found:
                typed = made.get((id(port), found))
                if typed is None:
                    typed = made[(id(port), found)] = Port(
                        found, port.shape, port.doc, port.optional, port.mismatch_hint,
                        port.like)
                # a new dict (shared with the nodes fed alike), never a change to the shared one
                outputs = dict(node.outputs)
                outputs[name] = typed
                node.outputs = _shared(outputs, same_ports)
                changed = True
        if not changed:
            break


