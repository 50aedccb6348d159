"""Data-parallel training over torch.distributed, as started by ``torchrun``.

dgraph does not re-implement distribution: the process group, the collectives and the launcher
are torch's. Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank builds the same modules from
the same seed, draws its own slice of each global batch (``batch_size`` in a spec is the
global batch), and the gradients of each update are averaged across ranks with one bucketed
all-reduce per optimizer step, after all micro-batches (accumulation adds no collective). The
steps of a dgraph update may call a module several times (a shared critic on real and fake
samples, taps on submodules), which torch's DistributedDataParallel reducer only accepts with a
static graph; averaging the gradients just before the optimizer step gives the same update
for every graph. Random draws inside a step (noise, augmentations) come from a per-rank stream,
so ranks do not repeat each other's noise.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["World", "average_gradients", "current_world", "full_optimizer_state", "full_state",
           "gather_objects", "gather_rows", "init_world", "load_full_optimizer_state",
           "load_full_state", "local", "rank_seed", "shard_modules", "share", "sum_across",
           "whole", "world_from_env"]


@dataclass(frozen=True)
class World:
    """Where this process stands in the job: ``rank`` of ``size`` (1 when it runs alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def world_from_env() -> World:
    """The world ``torchrun`` describes in the environment (one process when it does not)."""
    return World(rank=int(os.environ.get("RANK", "0")),
                 size=int(os.environ.get("WORLD_SIZE", "1")),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_world(device: torch.device) -> World:
    """Join the job's process group (gloo on CPU, NCCL on CUDA) when there is more than one
    rank; a process group made by the caller is used as it is."""
    world = world_from_env()
    if world.distributed and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return world


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s in-step random stream (rank 0 keeps ``seed``)."""
    return (seed + 1_000_033 * rank) % (2**63)


def average_gradients(params: list[torch.nn.Parameter], world: World, *,
                      mean: bool = True) -> None:
    """Average (``mean``) or add up the gradients of ``params`` across ranks in place, one
    all-reduce per dtype.

    Every rank runs the same graph, so the same parameters have gradients on every rank.
    """
    if not world.distributed:
        return
    from torch.distributed.tensor import DTensor

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            # Sharded by FSDP: its backward already reduce-scattered the mean over ranks.
            if not mean:
                p.grad.mul_(world.size)
            continue
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        if mean:
            flat.div_(world.size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()


def sum_across(value: torch.Tensor, world: World) -> torch.Tensor:
    """``value`` added up over the ranks (itself when the process runs alone)."""
    if not world.distributed:
        return value
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total


# -- FSDP: sharded modules, and their state as whole tensors ------------------------------------

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def shard_modules(modules: dict[str, torch.nn.Module], world: World, device: torch.device, *,
                  param_dtype: str | None = None, reduce_dtype: str | None = None) -> None:
    """Shard each module across the ranks with torch's ``fully_shard`` (FSDP2), in place.

    Every element of a ``ModuleList`` (a transformer layer, a UNet block) becomes its own unit,
    gathered only while it runs; the rest of the module is one more unit. Children are
    sharded before their parents, as FSDP requires.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world.size,))
    policy = MixedPrecisionPolicy(
        param_dtype=_DTYPES[param_dtype] if param_dtype else None,
        reduce_dtype=_DTYPES[reduce_dtype] if reduce_dtype else None)
    for module in modules.values():
        layers = [layer for sub in module.modules() if isinstance(sub, torch.nn.ModuleList)
                  for layer in sub if any(True for _ in layer.parameters())]
        for layer in reversed(layers):  # modules() lists parents first
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(module, mesh=mesh, mp_policy=policy)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (the tensor itself when it is not sharded)."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def whole(value: Any) -> Any:
    """A sharded tensor gathered whole (a collective); anything else as it is."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with sharded tensors gathered whole: the same checkpoint at any
    world size. A collective when the module is sharded: every rank calls it, in one order."""
    return {k: whole(v) for k, v in module.state_dict().items()}


def _spread(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (whole, the same on every rank) cut to ``like``'s sharding, without any
    communication; ``value`` itself when ``like`` is not sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements,
                             src_data_rank=None)


def load_full_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors (from :func:`full_state`, or a single-process run) into ``module``,
    sharded or not."""
    current = module.state_dict()
    module.load_state_dict({k: _spread(v, current[k]) if k in current and torch.is_tensor(v)
                            else v for k, v in state.items()})


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with sharded state gathered whole (a collective)."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: whole(v) for k, v in s.items()}
                      for i, s in state["state"].items()}
    return state


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load whole optimizer state into ``optimizer``, cutting each tensor the shape of a
    sharded parameter to that parameter's sharding."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            slots = optimizer.state.get(p, {})
            for key, value in slots.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.dim() > 0:
                    slots[key] = _spread(value, p)


# -- sharing work across ranks (evaluation, caches) ---------------------------------------------

def current_world() -> World:
    """The job of this process once its process group is up (one process otherwise): for
    code that is not handed a :class:`World`, such as a data component's build."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(rank=torch.distributed.get_rank(),
                     size=torch.distributed.get_world_size(),
                     local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def share(size: int, world: World) -> tuple[int, int]:
    """``[start, end)`` of this rank's contiguous share of ``size`` items (the whole range when
    the process runs alone); shares differ in length by at most one, in rank order."""
    base, extra = divmod(size, world.size)
    start = world.rank * base + min(world.rank, extra)
    return start, start + base + (world.rank < extra)


def gather_rows(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (a collective; the
    lengths may differ, the other dimensions and the dtype may not)."""
    if not world.distributed:
        return tensor
    home = tensor.device
    if torch.distributed.get_backend() == "nccl" and home.type != "cuda":
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    lengths = [torch.zeros((), dtype=torch.long, device=tensor.device)
               for _ in range(world.size)]
    torch.distributed.all_gather(lengths, torch.tensor(tensor.shape[0], device=tensor.device))
    longest = max(int(n) for n in lengths)
    sent = tensor.view(torch.uint8) if tensor.dtype == torch.bool else tensor
    padded = sent.new_zeros((longest, *sent.shape[1:]))
    padded[: sent.shape[0]] = sent
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    torch.distributed.all_gather(parts, padded.contiguous())
    out = torch.cat([p[: int(n)] for p, n in zip(parts, lengths, strict=True)])
    return (out.view(torch.bool) if tensor.dtype == torch.bool else out).to(home)


def gather_objects(value: Any, world: World) -> list[Any]:
    """``value`` of every rank in rank order (``[value]`` when the process runs alone), a
    collective. Tensors travel on the CPU (put them back on a device after)."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(out, _on_cpu(value))
    return out


def _on_cpu(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


# -- sharded checkpoints: torch.distributed.checkpoint in safetensors files ------------------------


def save_shards(folder: Path, tensors: dict[str, Any], world: World) -> None:
    """Every rank writes its shards of ``tensors`` (a nested dict of tensors, sharded or
    not) into ``folder`` with torch.distributed.checkpoint's safetensors storage (no pickle:
    the layout is JSON in the files' metadata). A collective. A folder left by a save that was
    killed is replaced."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter, save

    if world.rank == 0 and folder.exists():
        shutil.rmtree(folder)
    world.barrier()
    save(tensors, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))
    world.barrier()


def load_shards(folder: Path, template: dict[str, Any]) -> None:
    """Fill ``template`` (tensors shaped and sharded as this job holds them) in place from a
    folder :func:`save_shards` wrote, whatever the number of processes that wrote it."""
    import warnings

    from torch.distributed.checkpoint import HuggingFaceStorageReader, load

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        load(template, storage_reader=HuggingFaceStorageReader(str(folder)))
