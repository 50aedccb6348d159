"""The torch side of declared components (imported only when a graph is built).

A declared function becomes a :class:`FunctionModule`; a declared :class:`~dgraph.declare.Module`
class is mixed with ``torch.nn.Module`` once per class by :func:`torch_class`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dgraph.spec.model import ScheduleSpec

__all__ = ["FunctionModule", "torch_class"]


class FunctionModule(nn.Module):
    """A parameter-free node: ``forward(**ports)`` calls the declared function."""

    def __init__(self, fn: Callable[..., Any], params: dict[str, Any],
                 single_output: str | None, schedules: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.params = params
        self.single_output = single_output
        # Parameters that follow a schedule: their value for the current step is set by
        # set_step (the StepAware protocol), once per step, not looked up in forward.
        self.schedules = dict(schedules or {})
        if self.schedules:
            self.set_step(0)

    def set_step(self, step: int) -> None:
        for name, schedule in self.schedules.items():
            self.params[name] = (schedule.at(step) if isinstance(schedule, ScheduleSpec)
                                 else schedule)

    def forward(self, **ports: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.fn(**ports, **self.params)
        if self.single_output is not None:
            return {self.single_output: out}
        return out

    def extra_repr(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


_CLASSES: dict[type, type[nn.Module]] = {}


def torch_class(cls: type) -> type[nn.Module]:
    """``cls`` with ``torch.nn.Module`` as its next base, so ``super().__init__()`` reaches it."""
    built = _CLASSES.get(cls)
    if built is None:
        single = cls.component.single_output  # type: ignore[attr-defined]
        namespace: dict[str, Any] = {"__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
        if single is not None:
            user_forward = cls.forward  # type: ignore[attr-defined]

            def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
                return {single: user_forward(self, *args, **kwargs)}

            namespace["forward"] = forward
            # The declared forward, returning the one output itself: what a generated step
            # calls where nothing else would run (dgraph.compiler.codegen.value_call).
            namespace["value_forward"] = user_forward
        built = type(cls.__name__, (cls, nn.Module), namespace)
        _CLASSES[cls] = built
    return built
