"""Compile a validated graph into one Python step function per update, generated as source.

Each update's step evaluates only the sub-graph its objective needs, in topological order,
with straight-line code: no per-step interpretation of the graph. Grad modes are derived:
a node runs under ``torch.no_grad()`` unless a parameter the update trains lies upstream of
it (or in it). ``Program.source()`` is the readable text of every generated step.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dgraph.errors import ComponentRuntimeError, DgraphError
from dgraph.graph.model import Graph
from dgraph.ports import carries_grad
from dgraph.spec.model import UpdateSpec

__all__ = ["Program", "UpdatePlan", "compile_graph"]


def _ident(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name)
    if not base or base[0].isdigit() or keyword.iskeyword(base):
        base = f"n_{base}"
    ident, i = base, 1
    while ident in taken:
        i += 1
        ident = f"{base}_{i}"
    taken.add(ident)
    return ident


@dataclass
class UpdatePlan:
    """What one update's step computes, decided once at compile time."""

    name: str
    spec: UpdateSpec
    nodes: list[str]  # non-data nodes in evaluation order
    data_nodes: list[str]
    grad_nodes: set[str]
    trained: list[str]
    losses: list[str]
    # Non-frozen nodes on the gradient path that this update does not train: backward must
    # then be restricted to the trained parameters so their gradients are left alone.
    bystanders: list[str]
    # Losses that also output ``sum`` and ``count`` (token-level losses): under gradient
    # accumulation they are normalised by the count over all micro-batches together.
    token_losses: list[str] = field(default_factory=list)
    source: str = ""
    step: Callable[..., Any] | None = None


@dataclass
class Program:
    """The compiled form of a graph: a plan and generated step per update."""

    graph: Graph
    plans: dict[str, UpdatePlan]
    idents: dict[str, str]
    order: list[str]
    caches: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def source(self) -> str:
        header = [
            f"# dgraph compiled program for spec '{self.graph.spec.display_name}'",
            "# m_<node>: the node's module; t_<node>: its tap recorder; "
            "c_<node>: its output cache;",
            "# batch[<data node>][<port>]: this step's batch; w[<loss>]: the loss weight now.",
        ]
        return "\n".join(header) + "\n\n" + "\n\n".join(p.source for p in self.plans.values())

    def bind(self, instances: Any, *, compile_steps: bool = False) -> None:
        """Execute the generated source with the built modules, making the steps callable.

        ``compile_steps`` wraps each step in ``torch.compile`` (the backward and optimizer
        step stay eager).
        """
        namespace: dict[str, Any] = {"torch": torch, "_no_grad": torch.no_grad}
        for name, ident in self.idents.items():
            if name in instances.modules:
                namespace[f"m_{ident}"] = instances.modules[name]
            if name in instances.taps:
                namespace[f"t_{ident}"] = instances.taps[name].values
            if self.graph.nodes[name].spec.cache is not None:
                namespace[f"c_{ident}"] = self.caches.setdefault(name, {})
        for plan in self.plans.values():
            code = compile(plan.source, f"<dgraph step '{plan.name}'>", "exec")
            exec(code, namespace)  # noqa: S102 - our own generated code, no spec text in it
            plan.step = namespace[f"step_{_ident(plan.name, set())}"]
            if compile_steps:
                plan.step = torch.compile(plan.step, dynamic=False)

    # -- an interpreter for the cold paths: evaluation, dry runs and diagnosis -----------
    def run_nodes(self, instances: Any, batch: dict[str, dict[str, torch.Tensor]],
                  nodes: list[str] | None = None,
                  check: Callable[[str, dict[str, torch.Tensor]], None] | None = None,
                  ) -> dict[tuple[str, str], torch.Tensor]:
        """Evaluate ``nodes`` (default: all) in order; every output by (node, port)."""
        graph = self.graph
        values: dict[tuple[str, str], torch.Tensor] = {}
        for data_node, tensors in batch.items():
            for port, tensor in tensors.items():
                values[(data_node, port)] = tensor
        for name in nodes or self.order:
            node = graph.nodes[name]
            if node.kind == "data":
                continue
            kwargs = {e.dst_port: values[(e.src, e.src_port)] for e in graph.edges_into(name)}
            try:
                out = instances.modules[name](**kwargs)
            except DgraphError:
                raise
            except Exception as exc:
                raise ComponentRuntimeError(
                    f"while executing node '{name}' ({node.kind} '{node.spec.type}'): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(out, dict):
                raise ComponentRuntimeError(
                    f"node '{name}' ({node.spec.type}) returned {type(out).__name__}; "
                    "components must return a dict from output port to tensor"
                )
            for port, tensor in out.items():
                values[(name, port)] = tensor
            taps = instances.taps.get(name)
            if taps is not None:
                for path, tensor in taps.values.items():
                    values[(name, path)] = tensor
                    out = {**out, path: tensor}
            if check is not None:
                check(name, out)
        return values


def _needed(graph: Graph, roots: list[str]) -> set[str]:
    need = set(roots)
    for root in roots:
        need |= graph.ancestors(root)
    return need


def _grad_nodes(graph: Graph, order: list[str], trained: set[str]) -> set[str]:
    grad: set[str] = set()
    for name in order:
        if name in trained:
            grad.add(name)
            continue
        for edge in graph.edges_into(name):
            port = graph.nodes[edge.src].output_port(edge.src_port)
            if edge.src in grad and carries_grad(port.type):
                grad.add(name)
                break
    return grad


def _plan(graph: Graph, name: str, update: UpdateSpec, order: list[str]) -> UpdatePlan:
    losses = list(update.objective)
    need = _needed(graph, losses)
    ordered = [n for n in order if n in need]
    trained = [e if isinstance(e, str) else e.node for e in update.params]
    trained_set = set(trained)
    # A node sharing a trained module trains it too.
    for node_name in ordered:
        if graph.nodes[node_name].spec.shares in trained_set:
            trained_set.add(node_name)
    grad = _grad_nodes(graph, ordered, trained_set)
    bystanders = [
        n for n in ordered
        if n in grad and n not in trained_set and not graph.nodes[n].frozen
        and graph.nodes[n].kind not in ("loss", "op")
    ]
    token_losses = [loss for loss in losses
                    if {"sum", "count"} <= set(graph.nodes[loss].outputs)]
    return UpdatePlan(
        name=name,
        token_losses=token_losses,
        spec=update,
        nodes=[n for n in ordered if graph.nodes[n].kind != "data"],
        data_nodes=[n for n in ordered if graph.nodes[n].kind == "data"],
        grad_nodes=grad,
        trained=sorted(trained_set),
        losses=losses,
        bystanders=bystanders,
    )


def _cache_source(graph: Graph, name: str) -> str:
    """The data node whose example index keys a cached node's outputs."""
    node = graph.nodes[name]
    if not node.frozen:
        raise DgraphError(
            f"node '{name}' has 'cache' but is trainable; only frozen nodes can be cached"
        )
    ancestors = graph.ancestors(name)
    data = [a for a in ancestors if graph.nodes[a].kind == "data"]
    others = [a for a in ancestors if graph.nodes[a].kind != "data"]
    if len(data) != 1 or others:
        raise DgraphError(
            f"node '{name}' has 'cache', so its inputs must come straight from one data node; "
            f"found upstream data {sorted(data)} and other nodes {sorted(others)}"
        )
    return data[0]


def _generate(graph: Graph, plan: UpdatePlan, idents: dict[str, str]) -> str:
    fn = f"step_{_ident(plan.name, set())}"
    lines = [
        f"def {fn}(batch, w):",
        f'    """Update \'{plan.name}\': trains {", ".join(plan.trained) or "nothing"}; '
        f'objective {" + ".join(plan.losses)}."""',
    ]
    var: dict[tuple[str, str], str] = {}
    used = {(e.src, e.src_port) for n in plan.nodes for e in graph.edges_into(n)}
    for data_node in plan.data_nodes:
        ident = idents[data_node]
        lines.append(f"    b_{ident} = batch[{data_node!r}]")
        for port in graph.nodes[data_node].outputs:
            if (data_node, port) in used:
                v = f"{ident}__{_ident(port, set())}"
                var[(data_node, port)] = v
                lines.append(f"    {v} = b_{ident}[{port!r}]")
    for name in plan.nodes:
        node = graph.nodes[name]
        ident = idents[name]
        needed_ports = sorted({p for (n, p) in used if n == name} | (
            {"loss"} if name in plan.losses else set()) | (
            {"sum", "count"} if name in plan.token_losses else set()))
        tag = "trained" if name in plan.trained else (
            "on the gradient path" if name in plan.grad_nodes else "no grad")
        lines.append(f"    # {name}: {node.kind} '{node.spec.type}' ({tag})")
        if node.spec.cache is not None:
            source = _cache_source(graph, name)
            for port in needed_ports:
                v = f"{ident}__{_ident(port, set())}"
                var[(name, port)] = v
                lines.append(
                    f"    {v} = c_{ident}[{port!r}].index_select(0, "
                    f"b_{idents[source]}['__index__'])"
                )
            continue
        args = ", ".join(
            f"{e.dst_port}={var[(e.src, e.src_port)]}" for e in graph.edges_into(name)
        )
        indent = "    "
        if name not in plan.grad_nodes:
            lines.append("    with _no_grad():")
            indent = "        "
        lines.append(f"{indent}o_{ident} = m_{ident}({args})")
        for port in needed_ports:
            v = f"{ident}__{_ident(port, set())}"
            var[(name, port)] = v
            if port in node.outputs:
                lines.append(f"    {v} = o_{ident}[{port!r}]")
            else:
                lines.append(f"    {v} = t_{ident}[{port!r}]")
    terms = [f"w[{loss!r}] * {var[(loss, 'loss')]}" for loss in plan.losses]
    lines.append(f"    total = {' + '.join(terms)}")
    parts = ", ".join(var[(loss, "loss")] for loss in plan.losses)
    if plan.token_losses:
        sums = " + ".join(f"w[{loss!r}] * {var[(loss, 'sum')]}" for loss in plan.token_losses)
        count = var[(plan.token_losses[0], "count")]
        lines.append(f"    return total, ({parts},), {sums}, {count}")
    else:
        lines.append(f"    return total, ({parts},)")
    return "\n".join(lines)


def compile_graph(graph: Graph) -> Program:
    """Plan and generate a step function for every update of a validated graph."""
    order = graph.topological_order()
    taken: set[str] = set()
    idents = {name: _ident(name, taken) for name in order}
    plans: dict[str, UpdatePlan] = {}
    for name, update in graph.spec.updates.items():
        plan = _plan(graph, name, update, order)
        plan.source = _generate(graph, plan, idents)
        plans[name] = plan
    return Program(graph=graph, plans=plans, idents=idents, order=order)
