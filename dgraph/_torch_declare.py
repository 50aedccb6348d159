"""The torch side of declared components (imported only when a graph is built).

A declared function becomes a :class:`FunctionModule`; a declared :class:`~dgraph.declare.Module`
class is mixed with ``torch.nn.Module`` once per class by :func:`torch_class`. Components call
their layers through :func:`call_plain` where a layer's ``__call__`` would add nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from dgraph.spec.model import ScheduleSpec

__all__ = ["FunctionModule", "call_plain", "global_module_hooks", "has_hooks", "torch_class"]


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


def has_hooks(module: nn.Module) -> bool:
    """Whether a hook is registered on ``module`` itself (forward, backward, or pre-hooks)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def global_module_hooks() -> bool:
    """Whether a hook is registered for every module (``register_module_forward_hook``...)."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or _module._global_backward_pre_hooks)


# What calling a layer of each class computes, written as the call its ``forward`` makes.
_LAYER_FUNCTIONS: dict[type, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    nn.Linear: lambda m, x: F.linear(x, m.weight, m.bias),
    nn.ReLU: lambda m, x: F.relu(x, m.inplace),
    nn.LeakyReLU: lambda m, x: F.leaky_relu(x, m.negative_slope, m.inplace),
    nn.GELU: lambda m, x: F.gelu(x, approximate=m.approximate),
    nn.Tanh: lambda m, x: torch.tanh(x),
    nn.SiLU: lambda m, x: F.silu(x, m.inplace),
    nn.Dropout: lambda m, x: F.dropout(x, m.p, m.training, m.inplace),
}


def call_plain(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, computed without ``nn.Module.__call__`` where that call would add nothing.

    A layer of a class listed above (exactly that class: a subclass, a LoRA or quantisation
    wrapper is called as it is) runs as the function its ``forward`` calls, and an
    ``nn.Sequential`` as each of its layers in turn, unless a hook is registered on the module
    or on every module (taps, exporters' diagnostics, FSDP) or the module was compiled with
    ``Module.compile`` (its call runs the compiled code). The same operations in the same
    order, so the same values; ``__call__`` costs a few microseconds a layer on CPU, several
    percent of a small model's step.
    """
    if global_module_hooks():
        return module(x)
    return _call_unhooked(module, x)


def _call_unhooked(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`call_plain` once no hook for every module is known to be registered."""
    if has_hooks(module) or module._compiled_call_impl is not None:
        return module(x)
    if type(module) is nn.Sequential:
        functions = _LAYER_FUNCTIONS
        for layer in module:
            function = functions.get(type(layer))
            # (the checks above written out: this loop runs per layer and step)
            if function is None or layer._forward_hooks or layer._forward_pre_hooks \
                    or layer._backward_hooks or layer._backward_pre_hooks \
                    or layer._compiled_call_impl is not None:
                x = _call_unhooked(layer, x)
            else:
                x = function(layer, x)
        return x
    function = _LAYER_FUNCTIONS.get(type(module))
    return module(x) if function is None else function(module, x)
