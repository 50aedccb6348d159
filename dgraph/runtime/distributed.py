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

import torch

__all__ = ["World", "average_gradients", "init_world", "rank_seed", "sum_across",
           "world_from_env"]


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
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
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
