"""How a run's steps are compiled: ``train.compile`` resolved for a device and a graph.

``false`` runs the generated steps eagerly, ``true`` wraps each in ``torch.compile`` (its
default mode), ``reduce-overhead`` in ``torch.compile(mode="reduce-overhead")``, which
replays the step as CUDA graphs. ``auto`` takes CUDA graphs only where they are valid and
otherwise stays eager, with the first reason found: :func:`choose_compile` decides, from
plain facts about the run (no torch.compile, no ``torch._dynamo``, nothing run), so that the
choice is tested on any machine.

CUDA graphs replay a recorded sequence of kernels on fixed memory. They are valid for a step
when it runs on a CUDA device; every batch has the same shape (a different shape records a
new graph); no node reads a value back to the host, branches on a tensor's value or makes a
data-dependent shape (each node's component declares ``cuda_graph_safe``; unknown code is
assumed not to be); no output outlives the step (taps and output caches keep tensors across
steps, which a replay would overwrite); Python numbers fed to the step do not change from
step to step (a scheduled loss weight or parameter would recompile); and no wrapper of the
modules forbids capture (FSDP's ``fully_shard`` all-gathers parameters in hooks around every
forward). dgraph averages data-parallel gradients after the step, outside the compiled code,
so DDP-style jobs keep CUDA graphs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CompileChoice", "choose_compile"]

# What ``train.compile`` asks for -> the torch.compile mode it means.
_FIXED = {False: None, True: "default", "reduce-overhead": "reduce-overhead"}


@dataclass(frozen=True)
class CompileChoice:
    """The decision: ``mode`` is None (eager), ``"default"`` or ``"reduce-overhead"``."""

    setting: bool | str  # train.compile as written
    mode: str | None
    reason: str

    @property
    def cuda_graphs(self) -> bool:
        return self.mode == "reduce-overhead"

    def describe(self) -> str:
        """One line for the log and the run's summary."""
        setting = str(self.setting).lower() if isinstance(self.setting, bool) else self.setting
        done = "eager" if self.mode is None else f"torch.compile mode={self.mode}"
        return f"train.compile={setting}: {done} ({self.reason})"

    def summary(self) -> dict[str, Any]:
        return {"setting": self.setting, "mode": self.mode or "eager", "reason": self.reason}


def choose_compile(device: Any, graph: Any, *, plans: Mapping[str, Any] | None = None,
                   data: Mapping[str, Any] | None = None, world_size: int = 1
                   ) -> CompileChoice:
    """Resolve ``graph.spec.train.compile`` for a run on ``device`` (a ``torch.device`` or
    its type name).

    ``plans``: the update plans whose steps are compiled (default: compiled from ``graph``);
    ``data``: the built :class:`~dgraph.data.DataSource` of each data node (batch shapes are
    only known once the data is loaded; without them ``auto`` stays eager); ``world_size``:
    the number of processes of the job. Pure: nothing is imported from torch.compile and
    nothing runs.
    """
    spec = graph.spec
    setting = spec.train.compile
    if setting in _FIXED:  # False / True / "reduce-overhead": as written
        return CompileChoice(setting, _FIXED[setting], "as set in the spec")
    if plans is None:
        from dgraph.compiler.codegen import compile_graph

        plans = compile_graph(graph).plans
    reason = _why_not_cuda_graphs(device, graph, plans, data, world_size)
    if reason is not None:
        return CompileChoice(setting, None, reason)
    return CompileChoice(setting, "reduce-overhead",
                         "CUDA device, every batch the same shape, every node of the steps "
                         "cuda_graph_safe")


def _why_not_cuda_graphs(device: Any, graph: Any, plans: Mapping[str, Any],
                         data: Mapping[str, Any] | None, world_size: int) -> str | None:
    spec = graph.spec
    kind = getattr(device, "type", device)
    if kind != "cuda":
        return f"the device is {kind}: CUDA graphs need a CUDA device"
    if world_size > 1 and spec.train.distributed.strategy == "fsdp":
        return ("FSDP (train.distributed.strategy: fsdp) gathers the sharded parameters in "
                "hooks around every forward, which CUDA graphs cannot capture")
    for name, plan in plans.items():
        for loss in plan.losses:
            if _scheduled(_weights_of(spec, name, loss)):
                return (f"the weight of loss '{loss}' in update '{name}' follows a schedule: "
                        "a new number every step would recompile the step")
        for node_name in plan.nodes:
            reason = _node_reason(graph.nodes[node_name])
            if reason is not None:
                return reason
    used = {node for plan in plans.values() for node in plan.data_nodes}
    for node_name in sorted(used):
        reason = _data_reason(node_name, None if data is None else data.get(node_name))
        if reason is not None:
            return reason
    return None


def _weights_of(spec: Any, update: str, loss: str) -> Iterable[Any]:
    yield spec.updates[update].weight_of(loss)
    for stage in spec.stages or ():
        if loss in stage.weights:
            yield stage.weights[loss]


def _scheduled(values: Iterable[Any]) -> bool:
    from dgraph.spec.model import ScheduleSpec

    return any(isinstance(v, ScheduleSpec) and v.schedule != "constant" for v in values)


def _node_reason(node: Any) -> str | None:
    component = node.component
    what = f"node '{node.name}' (type '{node.spec.type}')"
    if not getattr(component, "cuda_graph_safe", False):
        return (f"{what} is not declared cuda_graph_safe: it may read values back to the "
                "host, branch on them or make data-dependent shapes")
    if node.taps:
        return (f"{what} is tapped ({', '.join(sorted(node.taps))}): the recorded outputs "
                "outlive the step, and a CUDA graph replay would overwrite them")
    if node.spec.cache is not None:
        return (f"{what} caches its outputs across steps, and a CUDA graph replay would "
                "overwrite them")
    params = getattr(component, "params", None)
    for param in getattr(component, "scheduled", ()):
        if _scheduled([getattr(params, param, None)]):
            return (f"{what}: parameter '{param}' follows a schedule: a new number every step "
                    "would recompile the step")
    return None


def _data_reason(name: str, source: Any) -> str | None:
    if source is None:
        return f"the batch shapes of data node '{name}' are not known"
    if getattr(source, "sampler", None) is not None:
        return (f"data node '{name}' draws its batches with a sampler, whose batch sizes may "
                "vary")
    size, batch = len(source), source.batch_size
    if not source.drop_last and size % batch:
        return (f"data node '{name}': the last batch of each epoch holds {size % batch} "
                f"examples, not {batch} ({size} examples, drop_last false), and a new shape "
                "records a new graph")
    return None
