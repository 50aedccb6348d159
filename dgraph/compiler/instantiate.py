"""Turn a validated graph's nodes into runtime objects: modules, data sources, tap recorders.

Nodes that ``share`` another node reuse its module. Taps are forward hooks on submodules; a
tap path that names no submodule is reported with the closest real module paths.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgraph.data import DataSource
from dgraph.errors import ComponentRuntimeError, DgraphError, Problem, ValidationError
from dgraph.graph.model import Graph
from dgraph.registry import BuildContext

__all__ = ["Instances", "TapRecorder", "build_context", "instantiate"]


class TapRecorder:
    """Forward hooks that keep the latest output of chosen submodules of one module."""

    def __init__(self, module: nn.Module, paths: list[str]) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.handles = []
        for path in paths:
            sub = module.get_submodule(path)
            self.handles.append(sub.register_forward_hook(self._hook(path)))

    def _hook(self, path: str):
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            # Transformer blocks return tuples; the hidden state comes first.
            while isinstance(output, (tuple, list)):
                output = output[0]
            if isinstance(output, dict):
                output = next(iter(output.values()))
            self.values[path] = output

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


@dataclass
class Instances:
    """The runtime objects of one graph."""

    modules: dict[str, nn.Module] = field(default_factory=dict)
    data: dict[str, DataSource] = field(default_factory=dict)
    taps: dict[str, TapRecorder] = field(default_factory=dict)

    def unique_modules(self) -> dict[str, nn.Module]:
        """Node -> module, each module once (shared nodes appear under their owner)."""
        seen: set[int] = set()
        out = {}
        for name, module in self.modules.items():
            if id(module) not in seen:
                seen.add(id(module))
                out[name] = module
        return out


def _tap_problem(graph: Graph, node: str, path: str, module: nn.Module) -> Problem:
    names = [n for n, _ in module.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.4)
    listing = close or names[:8]
    edge = next(e for e in graph.edges_from(node) if e.src_port == path)
    return Problem(
        code="unknown-tap",
        message=f"'{node}.{path}' taps no submodule: '{graph.nodes[node].spec.type}' has no "
        f"module at path '{path}'",
        location=edge.location,
        node=edge.dst,
        port=edge.dst_port,
        expected="a module path inside " + node,
        found=path,
        suggestion="closest module paths: " + ", ".join(f"{node}.{n}" for n in listing),
    )


def build_context(graph: Graph, name: str, *, device: str, seed: int,
                  run_dir: Path | None, modules: Mapping[str, nn.Module | DataSource]
                  ) -> BuildContext:
    """What a node's ``build`` gets: where it is, and the built objects of the nodes its
    parameters name (``BuildContext.references``, by parameter): a module, or the
    :class:`DataSource` of a data node (so that a metric can read a source's training split)."""
    spec_dir = graph.spec.path.parent if graph.spec.path else None
    names = {param: node for param, node in graph.nodes[name].component.references().items()
             if node in modules}
    references = {param: modules[node] for param, node in names.items()}
    # ``source`` locates a component's own input errors in the spec.
    return BuildContext(node=name, device=device, seed=seed, spec_dir=spec_dir,
                        run_dir=run_dir, references=references, reference_names=names,
                        source=graph.spec.source)


def instantiate(graph: Graph, *, device: str | torch.device = "cpu", seed: int = 0,
                run_dir: Path | None = None) -> Instances:
    """Build every node. ``device='meta'`` builds shapes only (no memory, no weights)."""
    device_str = str(device)
    inst = Instances()
    problems: list[Problem] = []
    order = graph.topological_order()
    # Nodes whose parameters name other nodes (an EMA target's source, a sampler's model)
    # get those modules at build time, so they are built after every other node.
    # A node naming a node that names others (a metric naming a rollout that names a policy)
    # comes after it: nodes are sorted by the length of their chain of references.
    def depth(name: str, seen: frozenset[str] = frozenset()) -> int:
        refs = [n for n in graph.nodes[name].component.references().values()
                if n in graph.nodes and n not in seen]
        return 1 + max((depth(n, seen | {name}) for n in refs), default=0) if refs else 0

    order = sorted(order, key=depth)  # stable: the topological order within a depth
    for name in order:
        node = graph.nodes[name]
        if node.spec.shares is not None:
            continue
        context = build_context(graph, name, device=device_str, seed=seed, run_dir=run_dir,
                                modules={**inst.data, **inst.modules})
        try:
            if node.kind == "data":
                built = node.component.build(context)
            elif device_str == "meta":
                with torch.device("meta"):
                    built = node.component.build(context)
            else:
                built = node.component.build(context)
        except DgraphError:
            raise
        except Exception as exc:
            raise ComponentRuntimeError(
                f"{node.location}: node '{name}' ({node.kind} '{node.spec.type}') failed to "
                f"build: {type(exc).__name__}: {exc}", node=name
            ) from exc
        expected = DataSource if node.kind == "data" else nn.Module
        if not isinstance(built, expected):
            raise ComponentRuntimeError(
                f"{node.location}: node '{name}': component type '{node.spec.type}' built a "
                f"{type(built).__name__}, expected a "
                f"{'DataSource' if expected is DataSource else 'torch.nn.Module'} for a "
                f"{node.kind} node", node=name
            )
        if isinstance(built, DataSource):
            problems += _data_problems(graph, name, built)
            inst.data[name] = built
            continue
        if device_str != "meta":
            built = built.to(device)
        if node.frozen:
            built.requires_grad_(False)
            built.eval()
        inst.modules[name] = built
    for name, node in graph.nodes.items():
        if node.spec.shares is not None:
            inst.modules[name] = inst.modules[node.spec.shares]
    for name in graph.nodes:
        paths = sorted({e.src_port for e in graph.edges_from(name) if e.tap})
        if not paths:
            continue
        module = inst.modules[name]
        missing = [p for p in paths if not _has_submodule(module, p)]
        problems += [_tap_problem(graph, name, p, module) for p in missing]
        if not missing:
            inst.taps[name] = TapRecorder(module, paths)
    if problems:
        raise ValidationError(problems)
    return inst


# Ports whose values index something (classes, vocabulary entries): they must be integers.
_INTEGER_TYPES = ("Labels", "Tokens")


def _data_problems(graph: Graph, name: str, source: DataSource) -> list[Problem]:
    """What makes a built data source unusable for training, found before the first step:
    no examples, a batch larger than the training split (the loader would have to cut every
    batch short), a port the graph reads but the source lacks, non-integer labels or tokens.
    """
    node = graph.nodes[name]
    where = graph.spec.source
    size = len(source)
    problems: list[Problem] = []
    if size == 0:
        problems.append(Problem(
            code="empty-dataset",
            message="the data source has no training examples",
            location=node.location,
            node=name,
            expected="at least one training example",
            found="0 examples",
            suggestion="check the source's parameters (path, filters, max_examples)",
        ))
    elif not 0 < source.batch_size <= size:
        problems.append(Problem(
            code="batch-larger-than-dataset",
            message=f"batch_size {source.batch_size} is larger than the training split "
            f"({size} examples)" if source.batch_size > size
            else f"batch_size {source.batch_size} is not positive",
            location=where.where(("nodes", name, "params", "batch_size")),
            node=name,
            expected=f"a batch_size between 1 and {size}",
            found=f"batch_size {source.batch_size}",
            suggestion=f"lower batch_size to at most {size}, or give the source more "
            "examples",
        ))
    used = sorted({e.src_port for e in graph.edges_from(name) if not e.tap})
    for port in used:
        if port not in source.train:
            edge = next(e for e in graph.edges_from(name) if e.src_port == port)
            problems.append(Problem(
                code="missing-data-port",
                message=f"the data source built no '{port}' tensor, which {edge.dst} reads",
                location=edge.location,
                node=name,
                port=port,
                expected=f"a '{port}' tensor in the training split",
                found="tensors " + (", ".join(f"'{k}'" for k in source.train) or "none"),
                suggestion=f"read one of the tensors the source has, or check its '{port}' "
                "parameters",
            ))
            continue
        declared = node.outputs.get(port)
        tensor = source.train[port]
        if declared is not None and declared.type in _INTEGER_TYPES and (
                tensor.is_floating_point() or tensor.is_complex()
                or tensor.dtype == torch.bool):
            problems.append(Problem(
                code="data-dtype",
                message=f"output '{port}' is {declared.type}, but the source built "
                f"{str(tensor.dtype).removeprefix('torch.')} values",
                location=node.location,
                node=name,
                port=port,
                expected=f"an integer tensor (class or vocabulary indices) for {declared.type}",
                found=str(tensor.dtype).removeprefix("torch."),
                suggestion="store the labels as integers, or declare the port with a "
                "floating type (Probs for soft labels)",
            ))
    return problems


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
