"""Turn a validated graph's nodes into runtime objects: modules, data sources, tap recorders.

Nodes that ``share`` another node reuse its module. Taps are forward hooks on submodules; a
tap path that names no submodule is reported with the closest real module paths.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgraph.errors import ComponentRuntimeError, DgraphError, Problem, ValidationError
from dgraph.graph.model import Graph
from dgraph.registry import BuildContext
from dgraph.runtime.data import DataSource

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
                  run_dir: Path | None, modules: dict[str, nn.Module]) -> BuildContext:
    """What a node's ``build`` gets: where it is, and the modules built so far (the module a
    target or sampler names is passed as ``source_module``)."""
    spec_dir = graph.spec.path.parent if graph.spec.path else None
    context = BuildContext(node=name, device=device, seed=seed, spec_dir=spec_dir,
                           run_dir=run_dir)
    context.extras["modules"] = modules
    source = graph.nodes[name].component.references().get("source")
    if source in modules:
        context.extras["source_module"] = modules[source]
    return context


def instantiate(graph: Graph, *, device: str | torch.device = "cpu", seed: int = 0,
                run_dir: Path | None = None) -> Instances:
    """Build every node. ``device='meta'`` builds shapes only (no memory, no weights)."""
    device_str = str(device)
    inst = Instances()
    problems: list[Problem] = []
    order = graph.topological_order()
    # Nodes whose parameters name other nodes (an EMA target's source, a sampler's model)
    # get those modules at build time, so they are built after every other node.
    def refers(name: str) -> bool:
        return bool(graph.nodes[name].component.references())

    order = [n for n in order if not refers(n)] + [n for n in order if refers(n)]
    for name in order:
        node = graph.nodes[name]
        if node.spec.shares is not None:
            continue
        context = build_context(graph, name, device=device_str, seed=seed, run_dir=run_dir,
                                modules=inst.modules)
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
                f"node '{name}' ({node.kind} '{node.spec.type}') failed to build: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(built, DataSource):
            inst.data[name] = built
            continue
        if not isinstance(built, nn.Module):
            raise ComponentRuntimeError(
                f"node '{name}': component type '{node.spec.type}' built a "
                f"{type(built).__name__}, expected a torch.nn.Module or DataSource"
            )
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


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
