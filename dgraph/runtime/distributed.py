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
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["World", "average_gradients", "full_optimizer_state", "full_state",
           "init_world", "load_full_optimizer_state", "load_full_state", "local", "rank_seed",
           "shard_modules", "sum_across", "whole", "world_from_env"]


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
