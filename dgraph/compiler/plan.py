"""``dgraph plan``: the memory and compute of a run, measured on torch's meta device before it.

Every node is built on the meta device (no weights, no memory) and each update's compiled step
runs once with gradients, then backward and the update's own optimizer step, all on meta
tensors. While it runs, a dispatch mode watches every tensor the step creates:

- **FLOPs** come from torch's :class:`~torch.utils.flop_counter.FlopCounterMode`; each
  operation's count is attributed to the node that ran it (forward: the node being called;
  backward: the node whose forward built the autograd node now executing).
- **Activations** of a node are the tensors autograd keeps for backward while the node runs
  (``saved_tensors_hooks``), each storage once, parameters excluded.
- **The step's peak** is the largest sum of live tensor storages during forward, backward and
  the optimizer step (each storage once; storages freed by Python are subtracted when freed).
- **Optimizer state** is what the update's real optimizer (``build_optimizer``) allocates in
  its first step; under bf16/fp16 the trained parameters also keep an fp32 master copy,
  counted with it.

Everything runs in fp32; a bf16/fp16 plan counts every floating-point tensor of the model
and the step at 2 bytes per element (optimizer state stays fp32). Per rank: ``ddp``
replicates weights, gradients and optimizer state, and runs the step on the rank's share
of each global batch (``batch_size / N``, rounded up); ``fsdp`` also divides the weights,
gradients and optimizer state of trained nodes by N (of frozen nodes only with
``train.distributed.shard_frozen``) and adds the gathered copy of the units being computed.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from dgraph.compiler.codegen import Program, compile_graph
from dgraph.compiler.instantiate import Instances, instantiate
from dgraph.compiler.schedules import build_optimizer, param_groups, value_at
from dgraph.declare import Accumulator
from dgraph.errors import ComponentRuntimeError, DgraphError, Problem, ValidationError
from dgraph.graph.model import Graph

__all__ = ["DTYPE_BYTES", "NodeCost", "Plan", "UpdateCost", "format_bytes", "format_flops",
           "parse_memory", "plan_graph"]

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``80GB`` (10**9 bytes), ``80GiB`` (2**30), ``512MB``, ``1e9``: a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?b|b)?\s*", text.lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"'{text}' is not an amount of memory (e.g. 80GB, 24GiB, 512MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def format_flops(n: float) -> str:
    """``58.5 TFLOP``, ``227.3 kFLOP``."""
    for unit, size in (("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}FLOP"
    return f"{int(n)} FLOP"


def format_bytes(n: float) -> str:
    """Decimal units, as device makers count: ``23.1 GB``, ``512.0 MB``, ``96 B``."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(n)} B"


@dataclass
class NodeCost:
    """One node's share of a training step (whole, before dividing among ranks)."""

    name: str
    kind: str
    type: str
    trained: bool
    frozen: bool
    shares: str | None = None
    sharded: bool = False  # fsdp divides its weights, gradients and optimizer state
    params: int = 0
    param_bytes: int = 0  # parameters and floating buffers at the plan's dtype
    grad_bytes: int = 0
    optimizer_bytes: int = 0  # optimizer state (+ fp32 master weights under bf16/fp16)
    activation_bytes: int = 0  # kept for backward during one step (largest over updates)
    # Of those, attention probabilities [..., T, T] (softmax outputs kept for backward): what
    # an eager attention keeps and fused kernels (flash, memory-efficient sdpa) do not.
    attention_bytes: int = 0
    cache_bytes: int = 0
    flops_forward: int = 0  # per training step, this rank
    flops_backward: int = 0

    def per_rank(self, nproc: int) -> dict[str, int]:
        div = nproc if self.sharded else 1
        return {"weights": -(-self.param_bytes // div), "gradients": -(-self.grad_bytes // div),
                "optimizer": -(-self.optimizer_bytes // div),
                "activations": self.activation_bytes, "cache": self.cache_bytes}


@dataclass
class UpdateCost:
    """One update's step, measured: FLOPs and its transient memory on this rank."""

    name: str
    runs_per_step: float  # repeat * accumulate / every
    flops_forward: int = 0
    flops_backward: int = 0
    peak_backward: int = 0  # live step tensors at the forward/backward peak
    grads_at_peak: int = 0  # of which gradients of trained parameters
    peak_optimizer: int = 0  # gradients and optimizer workspace during its step


@dataclass
class Plan:
    """What one rank holds and computes for a spec, and whether it fits."""

    spec: str
    strategy: str
    nproc: int
    dtype: str
    device: str
    nodes: list[NodeCost]
    updates: list[UpdateCost]
    batch_bytes: int = 0
    # Per data node, the training split its loader holds on the device (every rank, whole).
    data: dict[str, int] = field(default_factory=dict)
    # fsdp: per node, the bytes of its parameters gathered while it computes (what no unit
    # holds, plus the unit computed and the next one, prefetched; every ModuleList element
    # is a unit)
    gathered: dict[str, int] = field(default_factory=dict)
    device_memory: int | None = None
    notes: list[str] = field(default_factory=list)
    # How the plan itself was made (for the suggestions): batch sizes per data node.
    batch_sizes: dict[str, int] = field(default_factory=dict)

    # -- totals --------------------------------------------------------------------------
    @property
    def gather_bytes(self) -> int:
        if self.strategy != "fsdp" or self.nproc == 1:
            return 0
        return max((self.gathered.get(n.name, 0) for n in self.nodes if n.sharded), default=0)

    def totals(self) -> dict[str, int]:
        """Per rank: each category and the peak (the peak is not their sum: activations are
        freed during backward while gradients appear)."""
        parts = [n.per_rank(self.nproc) for n in self.nodes]
        out = {key: sum(p[key] for p in parts) for key in
               ("weights", "gradients", "optimizer", "activations", "cache")}
        out["batch"] = self.batch_bytes
        out["data"] = sum(self.data.values())
        out["fsdp_gather"] = self.gather_bytes
        static = (out["weights"] + out["optimizer"] + out["cache"] + out["batch"]
                  + out["data"] + self.gather_bytes)
        out["step_peak"] = max((self._dynamic(u) for u in self.updates), default=0)
        out["peak"] = static + out["step_peak"]
        return out

    def _dynamic(self, update: UpdateCost) -> int:
        if self.strategy != "fsdp" or self.nproc == 1:
            return max(update.peak_backward, update.peak_optimizer)
        n = self.nproc
        backward = update.peak_backward - update.grads_at_peak + -(-update.grads_at_peak // n)
        return max(backward, -(-update.peak_optimizer // n))

    def flops_per_step(self) -> int:
        return sum(n.flops_forward + n.flops_backward for n in self.nodes)

    def largest(self, count: int = 3) -> list[tuple[str, str, int]]:
        """(node, category, bytes per rank), the largest first."""
        items = [(n.name, category, value) for n in self.nodes
                 for category, value in n.per_rank(self.nproc).items() if value > 0]
        items += [(name, "training data", value) for name, value in self.data.items() if value]
        return sorted(items, key=lambda item: -item[2])[:count]

    # -- the verdict ---------------------------------------------------------------------
    def verdict(self) -> str | None:
        if self.device_memory is None:
            return None
        peak = self.totals()["peak"]
        limit = format_bytes(self.device_memory)
        if peak <= self.device_memory:
            return f"fits: {format_bytes(peak)} of {limit} per rank"
        text = f"does not fit: {format_bytes(peak)} of {limit} per rank"
        largest = self.largest(1)
        if largest:
            node, category, value = largest[0]
            text += f"; largest: node '{node}' {category} {format_bytes(value)}"
        tries = self.suggestions()
        if tries:
            text += "; try " + ", ".join(tries)
        return text

    def _with(self, **changes: Any) -> Plan:
        clone = Plan(**{**self.__dict__, **changes})
        return clone

    def suggestions(self) -> list[str]:
        """Changes that lower the peak per rank, each with the peak it would give (those that
        make it fit first), computed from this plan's numbers."""
        assert self.device_memory is not None
        peak = self.totals()["peak"]
        found: list[tuple[int, str]] = []
        if self.strategy != "fsdp" or self.nproc == 1:
            for n in (self.nproc, 2, 4, 8, 16, 32, 64):
                if n < max(self.nproc, 2):
                    continue
                sharded = self._fsdp(n)
                if sharded.totals()["peak"] <= self.device_memory or n == 64:
                    new = sharded.totals()["peak"]
                    if new < peak:
                        flag = "--strategy fsdp" + (f" --nproc {n}" if n != self.nproc else "")
                        found.append((new, f"{flag} (about {format_bytes(new)} per rank)"))
                    break
        if self.dtype == "fp32":
            new = self._as_half().totals()["peak"]
            found.append((new, f"--dtype bf16 (about {format_bytes(new)})"))
        largest_batch = max(self.batch_sizes.values(), default=1)
        if largest_batch > 1:
            new = self._lighter(half=True).totals()["peak"]
            found.append((new, f"a smaller batch (batch_size {largest_batch // 2}: about "
                               f"{format_bytes(new)})"))
        attention = sum(n.attention_bytes for n in self.nodes)
        if attention > 0.1 * peak:
            new = self._lighter(minus=attention).totals()["peak"]
            found.append((new, f"a fused attention kernel (flash or memory-efficient sdpa: "
                               f"about {format_bytes(new)})"))
        saved = sum(n.activation_bytes for n in self.nodes if n.trained)
        if saved > 0.1 * peak:
            new = self._lighter(minus=saved).totals()["peak"]
            found.append((new, f"gradient checkpointing (about {format_bytes(new)}: the "
                               f"trained nodes keep {format_bytes(saved)} of activations)"))
        found.sort(key=lambda item: item[0])
        return [text for new, text in found if new < peak]

    def _lighter(self, *, half: bool = False, minus: int = 0) -> Plan:
        """The plan with the step's activations halved (half the batch, which is halved too)
        or ``minus`` bytes of them gone; the gradients and the optimizer's step stay."""
        updates = []
        for u in self.updates:
            rest = u.peak_backward - u.grads_at_peak
            rest = rest // 2 if half else max(0, rest - minus)
            updates.append(UpdateCost(**{**u.__dict__,
                                         "peak_backward": rest + u.grads_at_peak}))
        return self._with(updates=updates,
                          batch_bytes=self.batch_bytes // 2 if half else self.batch_bytes)

    def _fsdp(self, nproc: int) -> Plan:
        scale = self.nproc / nproc  # activations and the batch follow the rank's share
        nodes = [NodeCost(**{**n.__dict__, "sharded": n.trained or n.sharded,
                             "activation_bytes": int(n.activation_bytes * scale),
                             "attention_bytes": int(n.attention_bytes * scale)})
                 for n in self.nodes]
        updates = [UpdateCost(**{**u.__dict__,
                                 "peak_backward": int((u.peak_backward - u.grads_at_peak) * scale)
                                 + u.grads_at_peak}) for u in self.updates]
        return self._with(strategy="fsdp", nproc=nproc, nodes=nodes, updates=updates,
                          batch_bytes=int(self.batch_bytes * scale))

    def _as_half(self) -> Plan:
        """The same plan with weights, gradients and activations at 2 bytes an element and
        fp32 master weights for the trained ones."""
        nodes = []
        for n in self.nodes:
            master = 4 * n.params if n.trained else 0
            nodes.append(NodeCost(**{**n.__dict__, "param_bytes": n.param_bytes // 2,
                                     "grad_bytes": n.grad_bytes // 2,
                                     "optimizer_bytes": n.optimizer_bytes + master,
                                     "activation_bytes": n.activation_bytes // 2,
                                     "attention_bytes": n.attention_bytes // 2}))
        updates = [UpdateCost(**{**u.__dict__, "peak_backward": u.peak_backward // 2,
                                 "grads_at_peak": u.grads_at_peak // 2}) for u in self.updates]
        return self._with(dtype="bf16", nodes=nodes, updates=updates,
                          gathered={k: v // 2 for k, v in self.gathered.items()})

    # -- output --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        totals = self.totals()
        return {
            "spec": self.spec,
            "strategy": self.strategy,
            "nproc": self.nproc,
            "dtype": self.dtype,
            "device": self.device,
            "nodes": [{
                "name": n.name, "kind": n.kind, "type": n.type, "trained": n.trained,
                "frozen": n.frozen, "shares": n.shares, "sharded": n.sharded,
                "params": n.params, "param_bytes": n.param_bytes,
                "grad_bytes": n.grad_bytes, "optimizer_bytes": n.optimizer_bytes,
                "activation_bytes": n.activation_bytes, "attention_bytes": n.attention_bytes,
                "cache_bytes": n.cache_bytes,
                "flops_forward": n.flops_forward, "flops_backward": n.flops_backward,
                "per_rank": n.per_rank(self.nproc),
            } for n in self.nodes],
            "updates": [dict(u.__dict__) for u in self.updates],
            "per_rank": totals,
            "flops_per_step": {"per_rank": self.flops_per_step(),
                               "all_ranks": self.flops_per_step() * self.nproc},
            "largest": [{"node": node, "category": category, "bytes": value}
                        for node, category, value in self.largest()],
            "device_memory": self.device_memory,
            "fits": None if self.device_memory is None
            else totals["peak"] <= self.device_memory,
            "verdict": self.verdict(),
            "notes": list(self.notes),
        }


# -- measuring ------------------------------------------------------------------------------
class _Tracker(TorchDispatchMode):
    """Live tensor storages (bytes at the plan's dtype), their peak, and FLOPs by node."""

    def __init__(self, counter: FlopCounterMode, half: bool, *,
                 conv_reorders: bool = False) -> None:
        super().__init__()
        self.counter = counter
        self.half = half  # count floating tensors at 2 bytes an element
        # On the CPU, oneDNN (mkldnn) convolutions copy their operands into blocked layouts
        # for the duration of the kernel: forward the input and the weight, backward also the
        # gradient of the output (measured with torch.profiler, benchmarks/plan_accuracy.py).
        # Meta kernels allocate none of it, so the tracker adds it to the running total while
        # the kernel runs. cuDNN workspaces on CUDA are not modelled.
        self.conv_reorders = conv_reorders
        self.static: set[int] = set()  # storages that exist before the step (weights, batch)
        self._keep: list[Any] = []
        # Live storages: id -> (serial, bytes). Python reuses the ids of freed objects, so
        # what must outlive a storage (the peak's members, what was saved) uses the serial.
        self.live: dict[int, tuple[int, int]] = {}
        self._serial = 0
        self.current = 0
        self.peak = 0
        self.peak_keys: frozenset[int] = frozenset()  # serials
        self.node: str | None = None  # the node running forward
        self.phase = "forward"
        self.owner: dict[Any, str] = {}  # autograd node -> dgraph node
        self.flops: dict[tuple[str, str], int] = {}
        self.saved: dict[int, tuple[str, int]] = {}  # serial -> (node, bytes)
        self.square: set[int] = set()  # serials of softmax outputs over [..., T, T]

    def size(self, tensor: torch.Tensor) -> int:
        nbytes = tensor.untyped_storage().nbytes()
        if self.half and tensor.dtype == torch.float32:
            return nbytes // 2
        return nbytes

    def mark_static(self, tensors: Iterator[torch.Tensor]) -> None:
        for tensor in tensors:
            storage = tensor.untyped_storage()
            self._keep.append(storage)
            self.static.add(id(storage))

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, (0, 0))[1]

    def serial(self, tensor: torch.Tensor) -> int | None:
        """The serial of a live storage the step made (None: it existed before)."""
        entry = self.live.get(id(tensor.untyped_storage()))
        return entry[0] if entry is not None else None

    def reset_peak(self) -> None:
        self.peak = self.current
        self.peak_keys = frozenset(serial for serial, _ in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = self.counter.get_total_flops()
        out = func(*args, **(kwargs or {}))
        flops = self.counter.get_total_flops() - before
        if flops:
            if self.phase == "forward":
                who = self.node or "(graph)"
            else:
                who = self.owner.get(torch._C._current_autograd_node(), "(graph)")
            self.flops[(who, self.phase)] = self.flops.get((who, self.phase), 0) + flops
        square = func in _SOFTMAX
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self.static:
                continue
            if key not in self.live:
                size = self.size(tensor)
                self._serial += 1
                self.live[key] = (self._serial, size)
                self.current += size
                weakref.finalize(storage, self._free, key)
            if square and tensor.dim() >= 3 and tensor.shape[-1] == tensor.shape[-2] > 1:
                self.square.add(self.live[key][0])
        if self.current > self.peak:
            self.reset_peak()
        if self.conv_reorders and func in _CONVOLUTIONS:
            operands = args[:3] if func is _CONVOLUTIONS[1] else args[:2]
            scratch = sum(self.size(t) for t in operands if isinstance(t, torch.Tensor))
            if self.current + scratch > self.peak:
                self.reset_peak()
                self.peak = self.current + scratch
        return out

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """saved_tensors_hooks: a tensor autograd keeps for backward."""
        serial = self.serial(tensor) if self.node is not None else None
        if serial is not None and serial not in self.saved:
            assert self.node is not None
            self.saved[serial] = (self.node, self.size(tensor))
        return tensor

    def claim(self, node: str, outputs: Any) -> None:
        """The autograd nodes a dgraph node's forward created, walked from its outputs."""
        stack = [t.grad_fn for t in tree_flatten(outputs)[0]
                 if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        while stack:
            fn = stack.pop()
            if fn is None or fn in self.owner:
                continue
            self.owner[fn] = node
            stack.extend(next_fn for next_fn, _ in fn.next_functions if next_fn is not None)


_SOFTMAX = {torch.ops.aten._softmax.default, torch.ops.aten._safe_softmax.default}
# (forward: input, weight; backward: grad_output, input, weight are its first three arguments)
_CONVOLUTIONS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


class _Attributed:
    """A node's module as the compiled step calls it, telling the tracker who runs."""

    def __init__(self, name: str, module: nn.Module, tracker: _Tracker) -> None:
        self.name, self.module, self.tracker = name, module, tracker

    def __call__(self, **kwargs: Any) -> Any:
        self.tracker.node = self.name
        try:
            out = self.module(**kwargs)
        finally:
            self.tracker.node = None
        self.tracker.claim(self.name, out)
        return out


def _rank_rows(batch_size: int, size: int, nproc: int) -> int:
    return -(-min(batch_size, size) // nproc)


def _meta_batch(source: Any, nproc: int) -> dict[str, torch.Tensor]:
    rows = _rank_rows(source.batch_size, len(source), nproc)
    batch = {port: torch.empty((rows, *t.shape[1:]), dtype=t.dtype, device="meta")
             for port, t in source.train.items()}
    batch["__index__"] = torch.zeros((rows,), dtype=torch.long, device="meta")
    return batch


@contextmanager
def _located(graph: Graph) -> Iterator[None]:
    """A node's failure on the meta device as a located problem, like validate's."""
    try:
        yield
    except ComponentRuntimeError as exc:
        node = graph.nodes.get(exc.node) if exc.node is not None else None
        raise ValidationError([Problem(
            code="plan-failed",
            message=f"the meta-device training step failed: {exc}",
            location=node.location if node is not None else None,
            node=exc.node if node is not None else None,
            suggestion="`dgraph validate` runs the forward pass alone; this step also runs "
            "backward and the optimizer on meta tensors")]) from None


def _fill_caches(graph: Graph, program: Program, instances: Instances,
                 batch: dict[str, dict[str, torch.Tensor]]) -> dict[str, int]:
    """Meta caches for cached frozen nodes (one row per example); bytes held in memory."""
    held: dict[str, int] = {}
    for name, node in graph.nodes.items():
        if node.spec.cache is None:
            continue
        edges = graph.edges_into(name)
        source = next((e.src for e in edges), None)
        if source is None or source not in instances.data:
            continue
        kwargs = {e.dst_port: batch[e.src][e.src_port] for e in edges}
        with torch.no_grad():
            out = instances.modules[name](**kwargs)
        rows = len(instances.data[source])
        cache = {port: torch.empty((rows, *t.shape[1:]), dtype=t.dtype, device="meta")
                 for port, t in out.items() if isinstance(t, torch.Tensor)}
        program.caches[name] = cache
        if node.spec.cache.where == "memory":
            held[name] = sum(t.numel() * t.element_size() for t in cache.values())
    return held


def _units(module: nn.Module) -> list[nn.Module]:
    """What fsdp shards as units: every element of a ModuleList."""
    return [child for sub in module.modules() if isinstance(sub, nn.ModuleList)
            for child in sub]


def plan_graph(graph: Graph, *, nproc: int = 1, strategy: str | None = None,
               dtype: str | None = None, device: str | None = None,
               device_memory: int | None = None) -> Plan:
    """Measure one training step of every update of a validated graph on the meta device.

    ``device`` is where the run would train (default ``train.device``; ``auto`` is CUDA when
    this machine has it). Adam, AdamW and SGD use fused kernels on both, which need no
    workspace beside the gradients; RMSprop's foreach kernels' workspace is measured.
    """
    spec = graph.spec
    distributed = spec.train.distributed
    strategy = strategy or distributed.strategy
    dtype = dtype or spec.train.precision
    device = device or spec.train.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise DgraphError(f"unknown device '{device}' (cpu or cuda)")
    if strategy not in ("ddp", "fsdp"):
        raise DgraphError(f"unknown strategy '{strategy}' (ddp or fsdp)")
    if dtype not in DTYPE_BYTES:
        raise DgraphError(f"unknown dtype '{dtype}' (fp32, bf16 or fp16)")
    half = DTYPE_BYTES[dtype] == 2
    with _located(graph):
        instances = instantiate(graph, device="meta", seed=spec.train.seed)
    program = compile_graph(graph)
    modules = instances.unique_modules()
    owner_of = {id(m): name for name, m in modules.items()}
    trained = {n for plan in program.plans.values() for n in plan.trained}
    shard_frozen = distributed.shard_frozen

    # Weights per node (each module once, under the node that owns it).
    nodes: dict[str, NodeCost] = {}
    for name, node in graph.nodes.items():
        if node.kind == "data" or isinstance(instances.modules.get(name), Accumulator):
            continue
        module = instances.modules.get(name)
        cost = NodeCost(name=name, kind=node.kind, type=node.spec.type,
                        trained=name in trained, frozen=node.frozen, shares=node.spec.shares)
        if module is not None and owner_of.get(id(module)) == name:
            params = list(module.parameters())
            cost.params = sum(p.numel() for p in params)
            tensors = [*params, *module.buffers()]
            cost.param_bytes = sum(
                t.numel() * (DTYPE_BYTES[dtype] if t.is_floating_point() else t.element_size())
                for t in tensors)
            cost.sharded = strategy == "fsdp" and nproc > 1 and (
                cost.trained or (shard_frozen and cost.frozen))
        nodes[name] = cost
    for cost in nodes.values():
        if cost.shares is not None and cost.shares in nodes:
            nodes[cost.shares].trained |= cost.trained

    notes: list[str] = []
    batch = {name: _meta_batch(source, nproc) for name, source in instances.data.items()}
    batch_sizes = {name: source.batch_size for name, source in instances.data.items()}
    for name, source in instances.data.items():
        if nproc > 1 and source.batch_size % nproc:
            notes.append(f"data node '{name}': batch_size {source.batch_size} does not divide "
                         f"among {nproc} ranks; the largest share "
                         f"({_rank_rows(source.batch_size, len(source), nproc)}) is planned")
    batch_bytes = sum(t.numel() * (2 if half and t.dtype == torch.float32 else t.element_size())
                      for tensors in batch.values() for t in tensors.values())
    # The loaders keep each training split's ports that the graph reads (and the example
    # index) on the device, whole, on every rank.
    data_bytes: dict[str, int] = {}
    for name, source in instances.data.items():
        read = {e.src_port for e in graph.edges_from(name) if not e.tap}
        data_bytes[name] = 8 * len(source) + sum(
            t.numel() * t.element_size() for port, t in source.train.items() if port in read)
    caches = _fill_caches(graph, program, instances, batch)
    for name, held in caches.items():
        nodes[name].cache_bytes = held

    counter = FlopCounterMode(display=False)
    tracker = _Tracker(counter, half, conv_reorders=device == "cpu")
    tracker.mark_static(t for m in modules.values() for t in (*m.parameters(), *m.buffers()))
    tracker.mark_static(t for tensors in batch.values() for t in tensors.values())
    tracker.mark_static(t for cache in program.caches.values() for t in cache.values())
    wrapped = Instances(modules={name: _Attributed(name, m, tracker)  # type: ignore[misc]
                                 for name, m in instances.modules.items()},
                        data=instances.data, taps=instances.taps)
    program.bind(wrapped)
    updates: list[UpdateCost] = []
    grad_params: dict[int, tuple[str, int]] = {}
    try:
        for name, plan in program.plans.items():
            update = plan.spec
            ucost = UpdateCost(name=name,
                               runs_per_step=update.repeat * update.accumulate / update.every)
            weights = {loss: value_at(update.weight_of(loss), 0) for loss in plan.losses}
            groups = param_groups(update.params, instances.modules, name)
            params = [p for group in groups for p in group["params"]]
            for group in groups:
                for p in group["params"]:
                    owner = owner_of.get(id(instances.modules[group["node"]]), group["node"])
                    grad_params[id(p)] = (owner, p.numel())
            optimizer = build_optimizer(update.optimizer, groups)
            tracker.saved.clear()
            tracker.flops.clear()
            tracker.reset_peak()
            assert plan.step is not None
            with _located(graph), counter, tracker, torch.enable_grad(), \
                    torch.autograd.graph.saved_tensors_hooks(tracker.pack, lambda t: t):
                tracker.phase = "forward"
                try:
                    total, _terms = plan.step(batch, weights)[:2]
                except DgraphError:
                    raise
                except Exception as exc:
                    raise _failure(graph, tracker, exc) from exc
                tracker.phase = "backward"
                total.backward(inputs=params if plan.bystanders else None)
                del total, _terms
            grads = {tracker.serial(p.grad): tracker.size(p.grad)
                     for p in params if p.grad is not None}
            ucost.peak_backward = tracker.peak
            ucost.grads_at_peak = sum(size for serial, size in grads.items()
                                      if serial in tracker.peak_keys)
            by_node: dict[str, int] = {}
            for p in params:
                if p.grad is not None:
                    node_name = grad_params[id(p)][0]
                    by_node[node_name] = by_node.get(node_name, 0) + tracker.size(p.grad)
            for node_name, size in by_node.items():
                nodes[node_name].grad_bytes = max(nodes[node_name].grad_bytes, size)
            # The optimizer step: in fp32 (its state and workspace are fp32 under mixed
            # precision too).
            tracker.half = False
            tracker.reset_peak()
            before = tracker.current
            with counter, tracker:
                tracker.phase = "optimizer"
                optimizer.step()
            tracker.half = half
            state = _state_bytes(optimizer, owner_of, instances.modules, groups)
            ucost.peak_optimizer = max(tracker.peak - sum(state.values()), before)
            if update.optimizer.type in ("adam", "adamw", "sgd"):
                ucost.peak_optimizer = before  # fused kernels: in place, no workspace
            for node_name, size in state.items():
                master = 4 * sum(p.numel() for g in groups for p in g["params"]
                                 if grad_params[id(p)][0] == node_name) if half else 0
                nodes[node_name].optimizer_bytes += size + master
            optimizer.zero_grad(set_to_none=True)
            del optimizer
            runs = ucost.runs_per_step
            for (who, phase), flops in tracker.flops.items():
                if phase == "optimizer":
                    continue
                target = nodes.get(who)
                if phase == "forward":
                    ucost.flops_forward += flops
                    if target is not None:
                        target.flops_forward += round(flops * runs)
                else:
                    ucost.flops_backward += flops
                    if target is not None:
                        target.flops_backward += round(flops * runs)
            saved: dict[str, int] = {}
            attention: dict[str, int] = {}
            for key, (who, size) in tracker.saved.items():
                saved[who] = saved.get(who, 0) + size
                if key in tracker.square:
                    attention[who] = attention.get(who, 0) + size
            for who, size in saved.items():
                if who in nodes and size > nodes[who].activation_bytes:
                    nodes[who].activation_bytes = size
                    nodes[who].attention_bytes = attention.get(who, 0)
            tracker.square.clear()
            updates.append(ucost)
    finally:
        for recorder in instances.taps.values():
            recorder.remove()

    gathered: dict[str, int] = {}
    gather_size = DTYPE_BYTES[distributed.param_dtype or dtype]
    for name, module in modules.items():
        units = [sum(p.numel() for p in u.parameters()) for u in _units(module)]
        total = sum(p.numel() for p in module.parameters())
        gathered[name] = min(total, total - sum(units) + 2 * max(units, default=0)) * gather_size
    if strategy == "fsdp" and nproc > 1:
        notes.append("fsdp: each rank also gathers the parameters of the unit it computes "
                     "and the next one (every ModuleList element is a unit)")
    if half:
        notes.append(f"{dtype}: weights, gradients and activations at 2 bytes an element; "
                     "trained parameters keep fp32 master weights (counted with the optimizer "
                     "state)")
    kept_attention = sum(n.attention_bytes for n in nodes.values())
    if kept_attention:
        notes.append(f"activations include {format_bytes(kept_attention)} of attention "
                     "probabilities ([..., T, T], kept by eager attention, which models run on "
                     "the meta device); fused kernels (flash or memory-efficient sdpa) keep "
                     "none of them")
    if any(n.cache_bytes for n in nodes.values()):
        notes.append("cached nodes hold their outputs for every training example")
    return Plan(spec=spec.display_name, strategy=strategy, nproc=nproc, dtype=dtype,
                device=device,
                nodes=list(nodes.values()), updates=updates, batch_bytes=batch_bytes,
                data=data_bytes,
                gathered=gathered, device_memory=device_memory, notes=notes,
                batch_sizes=batch_sizes)


def _failure(graph: Graph, tracker: _Tracker, exc: Exception) -> ValidationError:
    name = tracker.node
    node = graph.nodes.get(name) if name is not None else None
    return ValidationError([Problem(
        code="plan-failed",
        message=f"the meta-device training step failed: {type(exc).__name__}: {exc}",
        location=node.location if node is not None else None,
        node=name if node is not None else None,
        suggestion="`dgraph validate` runs the forward pass alone; the plan also runs "
        "backward and the optimizer on meta tensors")])


def _state_bytes(optimizer: torch.optim.Optimizer, owner_of: dict[int, str],
                 modules: dict[str, nn.Module], groups: list[dict]) -> dict[str, int]:
    """Optimizer state bytes per owning node."""
    node_of = {id(p): owner_of.get(id(modules[g["node"]]), g["node"])
               for g in groups for p in g["params"]}
    out: dict[str, int] = {}
    for param, state in optimizer.state.items():
        node = node_of[id(param)]
        size = sum(t.numel() * t.element_size() for t in state.values()
                   if isinstance(t, torch.Tensor))
        out[node] = out.get(node, 0) + size
    for node in {node_of[id(p)] for g in groups for p in g["params"]}:
        out.setdefault(node, 0)
    return out
