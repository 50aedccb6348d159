"""Coefficient schedules, optimizers and learning-rate schedulers built from their specs."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dgraph.errors import DgraphError
from dgraph.spec.model import OptimizerSpec, ParamGroupSpec, SchedulerSpec, ScheduleSpec

__all__ = ["build_optimizer", "build_scheduler", "schedule_fn", "value_at"]


def value_at(schedule: float | ScheduleSpec, step: int) -> float:
    """The value of a weight at a (0-based) step."""
    if not isinstance(schedule, ScheduleSpec):
        return float(schedule)
    return schedule.at(step)


def schedule_fn(schedule: float | ScheduleSpec) -> Callable[[int], float]:
    if not isinstance(schedule, ScheduleSpec):
        constant = float(schedule)
        return lambda _step: constant
    return lambda step: value_at(schedule, step)


def _named_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters()]


def param_groups(entries: list[str | ParamGroupSpec], modules: dict[str, nn.Module],
                 update: str) -> list[dict]:
    """Optimizer parameter groups for an update; each parameter appears once."""
    seen: set[int] = set()
    groups = []
    for entry in entries:
        node = entry if isinstance(entry, str) else entry.node
        params = _named_params(modules[node])
        if isinstance(entry, ParamGroupSpec) and entry.match:
            params = [(n, p) for n, p in params if fnmatch.fnmatch(n, entry.match)]
            if not params:
                raise DgraphError(
                    f"update '{update}': parameter group match '{entry.match}' selects no "
                    f"parameter of node '{node}' (names look like "
                    f"{', '.join(n for n, _ in _named_params(modules[node])[:3])})"
                )
        fresh = [p for _, p in params if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        if not fresh:
            continue
        group: dict = {"params": fresh, "node": node}
        if isinstance(entry, ParamGroupSpec):
            if entry.lr is not None:
                group["lr"] = entry.lr
            if entry.weight_decay is not None:
                group["weight_decay"] = entry.weight_decay
        groups.append(group)
    if not groups:
        raise DgraphError(f"update '{update}' has no parameters to train")
    return groups


def _fused_kernels(groups: list[dict]) -> bool:
    """Whether torch's fused optimizer kernels take every parameter: floating point, all on
    CPU or all on CUDA (a DTensor counts by the device of its local shard)."""
    params = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"} and \
        all(p.is_floating_point() for p in params)


def build_optimizer(spec: OptimizerSpec, groups: list[dict]) -> torch.optim.Optimizer:
    """The update's optimizer over ``groups``.

    Adam, AdamW and SGD use torch's fused kernels when every parameter is on the CPU or
    every one on a CUDA device: one kernel per parameter and step instead of a pass per
    operation (Adam's CPU step takes 2.3x less time than the foreach one, see
    BENCHMARKS.md), and they accept a non-finite flag (``found_inf``) that skips the step
    on the device, so on CUDA the runtime need not read the flag every step (see
    :mod:`dgraph.runtime.step`). Elsewhere, and for RMSprop, the foreach kernels.
    """
    kwargs: dict = {"lr": spec.lr, "weight_decay": spec.weight_decay}
    kernels: dict[str, Any] = {"fused": True} if _fused_kernels(groups) else {"foreach": True}
    if spec.type in ("adam", "adamw"):
        if spec.betas is not None:
            kwargs["betas"] = spec.betas
        if spec.eps is not None:
            kwargs["eps"] = spec.eps
        cls = torch.optim.Adam if spec.type == "adam" else torch.optim.AdamW
        return cls(groups, **kernels, **kwargs)
    if spec.type == "sgd":
        return torch.optim.SGD(groups, momentum=spec.momentum, nesterov=spec.nesterov,
                               **kernels, **kwargs)
    if spec.type == "rmsprop":
        if spec.eps is not None:
            kwargs["eps"] = spec.eps
        return torch.optim.RMSprop(groups, momentum=spec.momentum, foreach=True, **kwargs)
    raise DgraphError(f"unknown optimizer '{spec.type}'")  # pragma: no cover


class _LRFactor:
    """Picklable learning-rate multiplier (LambdaLR keeps objects, not closures, in state)."""

    def __init__(self, spec: SchedulerSpec, total_steps: int) -> None:
        self.spec = spec
        self.total = max(total_steps, 1)

    def __call__(self, step: int) -> float:
        s = self.spec
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.type == "constant":
            return 1.0
        if s.type == "step":
            return s.gamma ** (step // s.step_size)
        span = max(self.total - s.warmup_steps, 1)
        t = min(max(step - s.warmup_steps, 0) / span, 1.0)
        if s.type == "cosine":
            shape = 0.5 * (1 + math.cos(math.pi * t))
        else:  # linear
            shape = 1.0 - t
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * shape


def build_scheduler(spec: SchedulerSpec | None, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    if spec is None:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _LRFactor(spec, total_steps))
