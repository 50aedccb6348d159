"""Pass 3: the static checks, each a pure function from a graph to its problems.

Dangling inputs, semantic types, cycles, updates (unknown or frozen nodes in an optimizer,
empty objectives, losses that reach nothing the update trains), stages, export and unused
nodes. None of them changes the graph. No torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from dgraph.errors import Problem
from dgraph.graph.common import Collector, close, names
from dgraph.graph.model import Graph
from dgraph.kinds import KINDS
from dgraph.ports import carries_grad, is_subtype
from dgraph.registry import COMPONENTS, reference_path

__all__ = [
    "check_cycles", "check_dangling", "check_distributed", "check_export", "check_stages",
    "check_types", "check_unused", "check_updates",
]


def _ops_producing(semantic_type: str) -> str:
    """The registered ops whose output has ``semantic_type`` (or a subtype), by name."""
    found = sorted(name for name, cls in COMPONENTS.items() if "op" in cls.roles and any(
        port.like is None and is_subtype(port.type, semantic_type)
        for port in cls.outputs.values()))
    shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
    return (shown + " or " if shown else "") + f"expr with params.type: {semantic_type}"


def _pass(run: Callable[[Graph, Collector], None]) -> Callable[[Graph], list[Problem]]:
    """A check written against a collector, offered as ``graph -> problems``."""

    @functools.wraps(run)
    def check(graph: Graph) -> list[Problem]:
        out = Collector(graph.spec)
        run(graph, out)
        return out.problems

    return check


@_pass
def check_dangling(graph: Graph, out: Collector) -> None:
    for name, node in graph.nodes.items():
        fed = {e.dst_port for e in graph.edges_into(name)}
        misspelt = [k for k in node.spec.inputs if k not in node.inputs]
        for port, decl in node.inputs.items():
            if any(close(k, [port]) for k in misspelt):
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


@_pass
def check_types(graph: Graph, out: Collector) -> None:
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
                        + ", or put an op between them that produces one: "
                        + _ops_producing(dst_port.type)
                    ),
                )
            )


@_pass
def check_cycles(graph: Graph, out: Collector) -> None:
    if graph.is_acyclic():
        return  # the usual case; listing cycles is only needed when there are some
    import networkx as nx  # only here: listing the cycles of a graph that has some

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


@_pass
def check_updates(graph: Graph, out: Collector) -> None:
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
                found=f"losses {names(losses)} and no 'updates'",
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
            path: tuple[str | int, ...] = (*base, "params", index)
            if not isinstance(entry, str):
                path = (*path, "node")
            if node not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"update '{uname}' trains an unknown node '{node}'",
                    path,
                    expected=f"a trainable node of this spec: {names(trainable)}",
                    found=f"'{node}'",
                    suggestion=close(node, spec.nodes) or "name one of the spec's nodes",
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
                    expected=f"trainable nodes only: {names(trainable)}",
                    found=f"'{node}' ({why})",
                    suggestion=f"remove '{node}' from the update, or set 'frozen: false' on "
                    "the node if you mean to train it",
                )
                continue
            trained.add(node)
        # A node that shares a trained node's module (`shares: student`) trains it too, as
        # the compiler does: a loss reaching the sharing node reaches the trained weights.
        trained |= {n for n, s in spec.nodes.items() if s.shares in trained}
        if not update.objective:
            out.add(
                "empty-objective",
                f"update '{uname}' has an empty objective",
                (*base, "objective"),
                expected="at least one 'loss_node: weight' entry"
                + (f" (losses: {names(losses)})" if losses else ""),
                found="objective: {}",
                suggestion="name at least one loss node with its weight, e.g. objective: {"
                + (losses[0] if losses else "ce") + ": 1.0}",
            )
        reached: set[str] | None = None  # where gradients from the trained nodes lead
        for loss in update.objective:
            path = (*base, "objective", loss)
            if loss not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"update '{uname}' objective names an unknown node '{loss}'",
                    path,
                    key=True,
                    expected=f"a loss node of this spec: {names(losses)}",
                    found=f"'{loss}'",
                    suggestion=close(loss, losses) or "name one of the spec's loss nodes",
                )
                continue
            loss_node = graph.nodes.get(loss)
            if loss_node is None:
                continue
            if loss_node.kind != "loss":
                out.add(
                    "not-a-loss",
                    f"update '{uname}' objective names '{loss}', which is a {loss_node.kind}, "
                    "not a loss",
                    path,
                    key=True,
                    node=loss,
                    expected=f"a node of kind 'loss': {names(losses)}",
                    found=f"kind '{loss_node.kind}'",
                    suggestion="put a loss node on top of it and name that loss here",
                )
                continue
            if not trained:
                continue
            if reached is None:  # once per update, not per loss: the walk is linear
                reached = _grad_reached(graph, trained | incomplete, cache)
            if loss in reached:
                continue
            reach = _grad_ancestors(graph, loss) | {loss}
            if not (reach & trained) and not (reach & incomplete):
                depends = sorted(reach - {loss})
                # A node that uses a trained node by reference (a rollout acting with the
                # policy) passes no gradient to it: say so, it is the likely intent.
                by_ref = sorted(f"'{r.dst}' uses '{r.src}' only by reference (params.{r.param})"
                                for r in graph.references if r.src in trained and r.dst in reach)
                why = ("; " + ", ".join(by_ref) + ": no gradient flows through a reference "
                       "(a rollout's outputs are data, not differentiable)") if by_ref else ""
                out.add(
                    "loss-reaches-nothing",
                    f"loss '{loss}' in update '{uname}' reaches none of the parameters that "
                    f"update trains ({', '.join(sorted(trained))}){why}",
                    path,
                    key=True,
                    node=loss,
                    expected="a gradient path from the loss back to one of: "
                    + ", ".join(sorted(trained)),
                    found=f"'{loss}' depends (with gradients) only on: {names(depends)}",
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


@_pass
def check_stages(graph: Graph, out: Collector) -> None:
    spec = graph.spec
    for index, stage in enumerate(spec.stages or []):
        base = ("stages", index)
        for j, uname in enumerate(stage.updates):
            if uname not in spec.updates:
                out.add(
                    "unknown-update",
                    f"stage '{stage.name}' runs an unknown update '{uname}'",
                    (*base, "updates", j),
                    expected=f"an update of this spec: {names(spec.updates)}",
                    found=f"'{uname}'",
                    suggestion=close(uname, spec.updates) or "name one of the spec's updates",
                )
        pairs = [("copy", d) for d in stage.copy_weights] + [
            ("copy", s) for s in stage.copy_weights.values()
        ] + [("reinit", n) for n in stage.reinit] + [("generate", n) for n in stage.generate]
        for key, node in pairs:
            if node not in spec.nodes:
                out.add(
                    "unknown-node",
                    f"stage '{stage.name}' {key} names an unknown node '{node}'",
                    (*base, key),
                    expected=f"a node of this spec: {names(spec.nodes)}",
                    found=f"'{node}'",
                    suggestion=close(node, spec.nodes) or "name one of the spec's nodes",
                )
        for j, node in enumerate(stage.generate):
            if node in graph.nodes and not _generates(graph, node):
                out.add(
                    "not-a-generator",
                    f"stage '{stage.name}' generate names node '{node}' "
                    f"({graph.nodes[node].spec.type}), which does not generate a dataset",
                    (*base, "generate", j),
                    node=node,
                    expected="a generator node (a component with generate(), e.g. lm_generator)",
                    found=f"'{node}' of type '{graph.nodes[node].spec.type}'",
                    suggestion=("name one of the generators: " + ", ".join(
                        n for n in graph.nodes if _generates(graph, n))) if any(
                        _generates(graph, n) for n in graph.nodes) else
                    "add an lm_generator node and list it here",
                )
    _check_generated_data(graph, out)


def _generates(graph: Graph, node: str) -> bool:
    """Whether ``node``'s component writes datasets (dgraph.declare.Generates)."""
    implementation = getattr(graph.nodes[node].component, "implementation", None)
    return callable(getattr(implementation, "generate", None))


def _check_generated_data(graph: Graph, out: Collector) -> None:
    """A data node that names a generator trains only in stages at or after one that runs
    that generator (before that it has no dataset)."""
    spec = graph.spec
    stages = spec.stages or []
    for name, node in graph.nodes.items():
        if not KINDS[node.kind].batches:
            continue
        for param, generator in node.component.references().items():
            if generator not in graph.nodes or not _generates(graph, generator):
                continue
            first = next((i for i, s in enumerate(stages) if generator in s.generate), None)
            if first is None:
                out.add(
                    "never-generated",
                    f"data node '{name}' reads generator '{generator}', which no stage runs",
                    ("nodes", name, "params", *reference_path(param)),
                    node=name,
                    expected=f"a stage with generate: [{generator}] at or before the stages "
                    f"that train on '{name}'",
                    found="stages: " + (", ".join(s.name for s in stages) or "none"),
                    suggestion=f"add generate: [{generator}] to the first stage that trains "
                    f"on '{name}'",
                )
                continue
            for index, stage in enumerate(stages[:first]):
                losses = [loss for u in stage.updates if u in spec.updates
                          for loss in spec.updates[u].objective if loss in graph.nodes]
                if any(name in graph.ancestors(loss) for loss in losses):
                    out.add(
                        "generated-too-late",
                        f"stage '{stage.name}' trains on data node '{name}', whose generator "
                        f"'{generator}' first runs in the later stage "
                        f"'{stages[first].name}'",
                        ("stages", index, "updates"),
                        node=name,
                        expected=f"generate: [{generator}] in stage '{stage.name}' or an "
                        "earlier one",
                        found=f"first generated in stage {first} ('{stages[first].name}')",
                        suggestion=f"add generate: [{generator}] to stage '{stage.name}'",
                    )


@_pass
def check_export(graph: Graph, out: Collector) -> None:
    node = graph.spec.export.node
    if node is not None and node not in graph.spec.nodes:
        out.add(
            "unknown-node",
            f"export names an unknown node '{node}'",
            ("export", "node"),
            expected=f"a node of this spec: {names(graph.spec.nodes)}",
            found=f"'{node}'",
            suggestion=close(node, graph.spec.nodes) or "name the node to export",
        )


@_pass
def check_unused(graph: Graph, out: Collector) -> None:
    roots = [loss for u in graph.spec.updates.values() for loss in u.objective]
    roots += [n for n, node in graph.nodes.items() if KINDS[node.kind].root]
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
    referenced |= {reference.src for reference in graph.references}
    for name, node in graph.nodes.items():
        if name not in used and name not in referenced and not KINDS[node.kind].batches:
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




def fsdp_nodes(graph: Graph) -> list[str]:
    """The nodes ``train.distributed.strategy: fsdp`` shards: those an update trains (and,
    with ``shard_frozen``, the frozen model nodes), in graph order."""
    config = graph.spec.train.distributed
    if config.strategy != "fsdp":
        return []
    trained = graph.trained_by()
    return [name for name, node in graph.nodes.items() if name in trained or (
        config.shard_frozen and KINDS[node.kind].parametrised and node.frozen
        and not KINDS[node.kind].follows)]


@_pass
def check_distributed(graph: Graph, out: Collector) -> None:
    config = graph.spec.train.distributed
    if config.checkpoint == "sharded" and config.strategy != "fsdp":
        out.add(
            "sharded-checkpoint",
            "checkpoint: sharded writes the shards of the modules FSDP shards, and strategy "
            f"{config.strategy} shards none",
            ("train", "distributed", "checkpoint"),
            expected="strategy: fsdp with checkpoint: sharded",
            found=f"strategy: {config.strategy}",
            suggestion="use strategy: fsdp, or checkpoint: whole",
        )
    sharded = set(fsdp_nodes(graph))
    for name in sorted(sharded):
        node = graph.nodes[name]
        sharers = sorted(n for n, other in graph.nodes.items() if other.spec.shares == name)
        if node.spec.shares or sharers:
            partner = node.spec.shares or ", ".join(sharers)
            out.add(
                "fsdp-shared",
                f"its parameters are shared with {partner}, and FSDP cannot shard "
                "parameters that two nodes use",
                ("train", "distributed", "strategy"),
                node=name,
                expected="strategy: ddp for a spec whose trained nodes share parameters",
                found="strategy: fsdp",
                suggestion="use strategy: ddp, or give the nodes their own parameters",
            )
    for reference in graph.references:
        if reference.src in sharded and KINDS[graph.nodes[reference.dst].kind].follows:
            out.add(
                "fsdp-followed",
                f"it follows the parameters of '{reference.src}' (param "
                f"'{reference.param}'), which FSDP shards across ranks",
                ("nodes", reference.dst, "params", reference.param),
                node=reference.dst,
                expected="a followed node that every rank holds whole",
                found=f"'{reference.src}' sharded by strategy: fsdp",
                suggestion="use strategy: ddp for a spec with an EMA or other target node",
            )
