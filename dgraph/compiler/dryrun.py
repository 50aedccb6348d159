"""Dry run: build every node on torch's meta device and push meta tensors through the graph.

Every port gets a concrete shape without allocating memory or loading weights; the shapes are
then unified across edges like the static symbols, and taps are resolved against the real
module trees. Data sources are read for their shapes only.
"""

from __future__ import annotations

import torch

from dgraph.declare import Accumulator, DryRunReport
from dgraph.errors import ComponentRuntimeError, Problem, ValidationError
from dgraph.graph.model import Graph
from dgraph.graph.shapes import infer_shapes

__all__ = ["dry_run"]


def _meta_batch(source) -> dict[str, torch.Tensor]:
    batch = {}
    for port, tensor in source.train.items():
        shape = (min(source.batch_size, tensor.shape[0]), *tensor.shape[1:])
        batch[port] = torch.empty(shape, dtype=tensor.dtype, device="meta")
    batch["__index__"] = torch.empty((next(iter(batch.values())).shape[0],), dtype=torch.long,
                                     device="meta")
    return batch


def dry_run(graph: Graph) -> list[Problem]:
    """Run the graph on the meta device; raise :class:`ValidationError` on problems.

    Returns notes: what nodes that implement :class:`~dgraph.declare.DryRunReport` tell
    about themselves (the memory of an unroll). Fills ``graph.shapes`` with concrete shapes
    for every output port used.
    """
    from dgraph.compiler.codegen import compile_graph
    from dgraph.compiler.instantiate import instantiate

    instances = instantiate(graph, device="meta", seed=graph.spec.train.seed)
    program = compile_graph(graph)
    batch = {name: _meta_batch(source) for name, source in instances.data.items()}
    # Whole-split metrics have no per-batch outputs; they run only in evaluation.
    nodes = [n for n in program.order
             if not isinstance(instances.modules.get(n), Accumulator)]
    try:
        with torch.no_grad():
            values = program.run_nodes(instances, batch, nodes)
    except ComponentRuntimeError as exc:
        node = graph.nodes.get(exc.node) if exc.node is not None else None
        raise ValidationError([
            Problem(
                code="dry-run-failed",
                message=f"the meta-device dry run failed: {exc}",
                location=node.location if node is not None else None,
                node=exc.node if node is not None else None,
                port=exc.port if node is not None else None,
                suggestion="check the widths and shapes feeding this node (`dgraph viz` shows "
                "the shapes the dry run could compute)",
            )
        ]) from None
    finally:
        for recorder in instances.taps.values():
            recorder.remove()
    concrete: dict[tuple[str, str], tuple[int, ...]] = {
        key: tuple(t.shape) for key, t in values.items() if isinstance(t, torch.Tensor)}
    graph.shapes, problems = infer_shapes(graph, concrete)
    graph.dry_run = True
    if problems:
        raise ValidationError(problems)
    return _reports(graph, instances.modules, nodes)


def _reports(graph: Graph, modules: dict[str, torch.nn.Module], nodes: list[str]
             ) -> list[Problem]:
    """The notes of nodes that report on their dry run, in evaluation order."""
    notes: list[Problem] = []
    for name in nodes:
        module = modules.get(name)
        if not isinstance(module, DryRunReport) or graph.nodes[name].spec.shares is not None:
            continue
        notes += [Problem(code="dry-run-report", message=line, severity="note",
                          location=graph.nodes[name].location, node=name)
                  for line in module.dry_run_report()]
    return notes
