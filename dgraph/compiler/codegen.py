"""Compile a validated graph into one Python step function per update, generated as source.

Each update's step evaluates only the sub-graph its objective needs, in topological order,
with straight-line code: no per-step interpretation of the graph. Grad modes are derived:
a node runs under ``torch.no_grad()`` unless a parameter the update trains lies upstream of
it (or in it). ``Program.source()`` is the readable text of every generated step.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dgraph.errors import ComponentRuntimeError, DgraphError
from dgraph.graph.model import Graph
from dgraph.ports import carries_grad
from dgraph.spec.model import UpdateSpec

__all__ = ["Program", "UpdatePlan", "compile_graph"]


def _checked(name: str, what: str) -> str:
    """``name`` itself, when it may appear in generated source as (part of) an identifier.

    Validation already restricts node and update names to ``[A-Za-z_][A-Za-z0-9_]*``; this is
    the compiler's own guard, so that no text that reached it unchecked (a plug-in's port
    name, a graph built in Python without validation) can become code.
    """
    if not (name.isascii() and name.isidentifier()):
        raise DgraphError(
            f"{what} {name!r} cannot be compiled: generated code only uses names matching "
            "[A-Za-z_][A-Za-z0-9_]*; validate the spec first (dgraph validate)"
        )
    return name


def _ident(name: str, taken: set[str], prefix: str = "") -> str:
    """A fresh identifier ``prefix + name`` (``name`` checked), suffixed when already taken."""
    base = prefix + _checked(name, "name")
    ident, i = base, 1
    while ident in taken:
        i += 1
        ident = f"{base}_{i}"
    taken.add(ident)
    return ident


def _port_ident(port: str) -> str:
    """An identifier fragment for an output port or tap path (``body.1`` -> ``body_1``).

    Only characters in ``[A-Za-z0-9_]`` survive, so the fragment can never be code; the port
    name itself reaches the source only as a ``repr`` string literal.
    """
    return re.sub(r"[^A-Za-z0-9_]", "_", port.encode("ascii", "replace").decode("ascii"))


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
    function: str = ""  # the generated function's name, derived from the checked update name
    step: Callable[..., Any] | None = None


@dataclass
class Program:
    """The compiled form of a graph: a plan and generated step per update."""

    graph: Graph
    plans: dict[str, UpdatePlan]
    idents: dict[str, str]
    order: list[str]
    caches: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # Nodes whose one output the steps take straight from the call (see value_call): node ->
    # that output's port.
    value_ports: dict[str, str] = field(default_factory=dict)
    # The globals of the bound steps (bind): the modules they call, as m_<node>.
    _namespace: dict[str, Any] = field(default_factory=dict, repr=False)

    def source(self) -> str:
        header = [
            "# dgraph compiled program (spec text appears only in string literals)",
            f"SPEC_NAME = {self.graph.spec.display_name!r}",
            "# m_<node>: the node's module; t_<node>: its tap recorder; "
            "c_<node>: its output cache;",
            "# batch[<data node>][<port>]: this step's batch; w[<loss>]: the loss weight now.",
        ]
        return "\n".join(header) + "\n\n" + "\n\n".join(p.source for p in self.plans.values())

    def bind(self, instances: Any, *, compile_steps: bool | str | None = False) -> None:
        """Execute the generated source with the built modules, making the steps callable.

        ``compile_steps`` wraps each step in ``torch.compile`` (the backward and optimizer
        step stay eager): True or ``"default"`` in its default mode, another string (such as
        ``"reduce-overhead"``, CUDA graphs) in that mode; False or None leaves them eager.
        """
        namespace: dict[str, Any] = {"torch": torch, "_no_grad": torch.no_grad}
        self._namespace = namespace
        self.refresh_calls(instances)
        for name, ident in self.idents.items():
            if name in instances.taps:
                namespace[f"t_{ident}"] = instances.taps[name].values
            if self.graph.nodes[name].spec.cache is not None:
                namespace[f"c_{ident}"] = self.caches.setdefault(name, {})
        for plan in self.plans.values():
            code = compile(plan.source, f"<dgraph step {plan.function}>", "exec")
            # Generated by _generate: spec text appears only as repr() literals and as
            # identifiers built from names that passed _checked.
            exec(code, namespace)  # noqa: S102
            plan.step = namespace[plan.function]
            if compile_steps is True or compile_steps == "default":
                plan.step = torch.compile(plan.step, dynamic=False)
            elif compile_steps:
                plan.step = torch.compile(plan.step, dynamic=False, mode=compile_steps)

    def refresh_calls(self, instances: Any) -> None:
        """Decide again how the bound steps call each module (see :func:`direct_call`), for
        hooks added to modules since: the trainer does this when a run starts."""
        namespace = self._namespace
        for name, ident in self.idents.items():
            if name in instances.modules:
                module = instances.modules[name]
                port = self.value_ports.get(name)
                namespace[f"m_{ident}"] = direct_call(module) if port is None else \
                    value_call(module, port)

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
        for name in self.order if nodes is None else nodes:
            node = graph.nodes[name]
            if node.kind == "data":
                continue
            edges = graph.edges_into(name)
            for e in edges:
                if (e.src, e.src_port) not in values:
                    raise ComponentRuntimeError(
                        f"node '{e.src}' ({graph.nodes[e.src].kind} "
                        f"'{graph.nodes[e.src].spec.type}') produced no output '{e.src_port}', "
                        f"which node '{name}' reads (input '{e.dst_port}'); the component "
                        "must return every output port it declares",
                        node=e.src, port=e.src_port)
            kwargs = {e.dst_port: values[(e.src, e.src_port)] for e in edges}
            try:
                out = instances.modules[name](**kwargs)
            except DgraphError:
                raise
            except Exception as exc:
                # The inputs as the component saw them: most runtime failures are shapes.
                seen = ", ".join(
                    f"{e.dst_port}={e.src}.{e.src_port} "
                    + (f"{str(v.dtype).removeprefix('torch.')}{list(v.shape)}"
                       if isinstance(v := kwargs[e.dst_port], torch.Tensor)
                       else type(v).__name__)
                    for e in edges)
                raise ComponentRuntimeError(
                    f"while executing node '{name}' ({node.kind} '{node.spec.type}') on "
                    f"inputs ({seen or 'none'}): {type(exc).__name__}: {exc}", node=name
                ) from exc
            if not isinstance(out, dict):
                raise ComponentRuntimeError(
                    f"node '{name}' ({node.spec.type}) returned {type(out).__name__}; "
                    "components must return a dict from output port to tensor", node=name
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


def direct_call(module: Any) -> Any:
    """What the generated step calls for ``module``: its bound ``forward`` where calling the
    module would do nothing more, else the module itself.

    ``nn.Module.__call__`` only adds hooks (and tracing, and ``Module.compile``) around
    ``forward``; skipping it saves a few microseconds per node and step. Decided once, when
    the step is bound, from what the module is then: any hook on it (FSDP's ``fully_shard``
    registers some; so do tap recorders, on submodules, which ``forward`` still calls through
    ``__call__``), any global module hook, a class that overrides ``__call__`` or
    ``_call_impl`` (wrappers such as ``torch.compile``'s), or ``Module.compile`` keeps the
    full call. Objects that are not modules (the planner's wrappers) are called as they are.
    Hooks added to the module itself later are seen once the calls are decided again
    (:meth:`Program.refresh_calls`, which ``Trainer.run`` does when it starts).
    """
    from dgraph._torch_declare import global_module_hooks, has_hooks

    if not isinstance(module, nn.Module):
        return module
    cls = type(module)
    if (cls.__call__ is not nn.Module.__call__ or cls._call_impl is not nn.Module._call_impl
            or getattr(module, "_compiled_call_impl", None) is not None
            or has_hooks(module) or global_module_hooks()):
        return module
    return module.forward


def value_call(module: Any, port: str) -> Callable[..., Any]:
    """What the generated step calls for a node that returns one output, ``port``, and whose
    step line takes that value straight from the call (see :func:`value_ports`).

    Where :func:`direct_call` would call ``forward`` directly, a declared component is called
    without its output dict: a declared function (a
    :class:`~dgraph._torch_declare.FunctionModule`) as the function itself, its parameters
    bound, and a declared class through the ``forward`` it declared (``value_forward``). No
    dict is built and indexed, and for a function no ``forward`` frame runs. A function's
    scheduled parameters are the module's own dict, which ``set_step`` updates in place, so
    they are read at each call. Anything else (hooks, wrappers) is called as before and the
    port taken from what it returns.
    """
    from dgraph._torch_declare import FunctionModule

    if direct_call(module) is not module:
        if isinstance(module, FunctionModule):
            fn, params = module.fn, module.params
            if not module.schedules:
                return functools.partial(fn, **params)

            def scheduled(**ports: Any) -> Any:
                return fn(**ports, **params)

            return scheduled
        value_forward = getattr(type(module), "value_forward", None)
        if value_forward is not None:
            return value_forward.__get__(module)

    def picked(**ports: Any) -> Any:
        return module(**ports)[port]

    return picked


def value_ports(graph: Graph) -> dict[str, str]:
    """The nodes called for their value (:func:`value_call`): declared components with a
    single output that nothing reads another port of (a tapped submodule's output, say) and
    that are not cached (a cache indexes stored outputs instead)."""
    out: dict[str, str] = {}
    for name, node in graph.nodes.items():
        component = node.component
        single = getattr(component, "single_output", None)
        if getattr(component, "shape", None) in ("function", "class") and single is not None \
                and node.spec.cache is None and node.kind != "data" \
                and all(edge.src_port == single for edge in graph.edges_from(name)):
            out[name] = single
    return out


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
    token_losses = [loss for loss in losses if graph.nodes[loss].component.token_normalised]
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


def _generate(graph: Graph, plan: UpdatePlan, idents: dict[str, str],
              values: dict[str, str]) -> str:
    """The step function's source.

    User text reaches it in two forms only: identifiers derived from checked names (``m_``,
    ``o_``, ``b_`` + the node's identifier, ``step_`` + the update's) and ``repr()`` string
    literals (ports, loss keys, the docstring). Comments hold nothing but such identifiers.
    """
    fn = plan.function
    doc = (f"Update {plan.name!r}: trains {', '.join(plan.trained) or 'nothing'}; "
           f"objective {' + '.join(plan.losses)}.")
    lines = [f"def {fn}(batch, w):", f"    {doc!r}"]
    var: dict[tuple[str, str], str] = {}
    # Local variable names: one namespace for the whole function, so that node ``a`` with
    # port ``b__c`` and node ``a__b`` with port ``c`` get different variables.
    local_names: set[str] = {"batch", "w", "total"}

    def new_var(node: str, port: str) -> str:
        v = _ident(f"{idents[node]}__{_port_ident(port)}", local_names, prefix="v_")
        var[(node, port)] = v
        return v

    used = {(e.src, e.src_port) for n in plan.nodes for e in graph.edges_into(n)}
    for data_node in plan.data_nodes:
        ident = idents[data_node]
        lines.append(f"    b_{ident} = batch[{data_node!r}]")
        for port in graph.nodes[data_node].outputs:
            if (data_node, port) in used:
                lines.append(f"    {new_var(data_node, port)} = b_{ident}[{port!r}]")
    for name in plan.nodes:
        node = graph.nodes[name]
        ident = idents[name]
        needed_ports = sorted({p for (n, p) in used if n == name} | (
            {"loss"} if name in plan.losses else set()) | (
            {"sum", "count"} if name in plan.token_losses else set()))
        tag = "trained" if name in plan.trained else (
            "on the gradient path" if name in plan.grad_nodes else "no grad")
        lines.append(f"    # {ident}: {_checked(node.kind, 'kind')} "
                     f"{_port_ident(node.spec.type)} ({tag})")
        if node.spec.cache is not None:
            source = _cache_source(graph, name)
            for port in needed_ports:
                lines.append(
                    f"    {new_var(name, port)} = c_{ident}[{port!r}].index_select(0, "
                    f"b_{idents[source]}['__index__'])"
                )
            continue
        args = ", ".join(
            f"{_checked(e.dst_port, f'input port of node {name!r}')}={var[(e.src, e.src_port)]}"
            for e in graph.edges_into(name)
        )
        indent = "    "
        if name not in plan.grad_nodes:
            lines.append("    with _no_grad():")
            indent = "        "
        if name in values:  # its one output, straight from the call (value_call)
            lines.append(f"{indent}{new_var(name, values[name])} = m_{ident}({args})")
            continue
        lines.append(f"{indent}o_{ident} = m_{ident}({args})")
        for port in needed_ports:
            table = f"o_{ident}" if port in node.outputs else f"t_{ident}"
            lines.append(f"    {new_var(name, port)} = {table}[{port!r}]")
    # A weight of exactly 1 multiplies by nothing: the same numbers (x * 1.0 is x, and so is
    # its gradient), one tensor operation fewer each way.
    terms = []
    for loss in plan.losses:
        term = _ident(f"{idents[loss]}__weighted", local_names, prefix="v_")
        value = var[(loss, "loss")]
        lines.append(f"    {term} = {value} if w[{loss!r}] == 1.0 else w[{loss!r}] * {value}")
        terms.append(term)
    lines.append(f"    total = {' + '.join(terms)}")
    parts = ", ".join(var[(loss, "loss")] for loss in plan.losses)
    if plan.token_losses:
        sums = " + ".join(f"w[{loss!r}] * {var[(loss, 'sum')]}" for loss in plan.token_losses)
        count = var[(plan.token_losses[0], "count")]
        lines.append(f"    return total, ({parts},), {sums}, {count}")
    else:
        lines.append(f"    return total, ({parts},)")
    return "\n".join(lines) + "\n"


def compile_graph(graph: Graph) -> Program:
    """Plan and generate a step function for every update of a validated graph."""
    order = graph.topological_order()
    taken: set[str] = set()
    idents = {name: _ident(name, taken) for name in order}
    functions: set[str] = set()
    plans: dict[str, UpdatePlan] = {}
    values = value_ports(graph)
    for name, update in graph.spec.updates.items():
        plan = _plan(graph, name, update, order)
        plan.function = _ident(name, functions, prefix="step_")
        plan.source = _generate(graph, plan, idents, values)
        plans[name] = plan
    return Program(graph=graph, plans=plans, idents=idents, order=order, value_ports=values)
