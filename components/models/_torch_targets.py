"""The torch side of target networks."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMAModule"]


class EMAModule(nn.Module):
    """Holds a frozen deep copy of a module and moves it towards the source on ``follow``."""

    def __init__(self, source: nn.Module, decay: float, copy_every: int | None) -> None:
        super().__init__()
        self.model = copy.deepcopy(source)
        self.model.requires_grad_(False)
        self.decay = decay
        self.copy_every = copy_every
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, **inputs: torch.Tensor):
        return self.model(**inputs)

    @torch.no_grad()
    def follow(self, source: nn.Module) -> None:
        self.updates += 1
        mine = list(self.model.parameters())
        theirs = list(source.parameters())
        hard = self.decay == 0 or (
            self.copy_every is not None and int(self.updates) % self.copy_every == 0)
        if self.copy_every is not None and not hard:
            return
        if hard:
            torch._foreach_copy_(mine, theirs)
        else:
            torch._foreach_lerp_(mine, theirs, 1.0 - self.decay)
        pairs = zip(self.model.buffers(), source.buffers(), strict=True)
        for target_buffer, source_buffer in pairs:
            target_buffer.copy_(source_buffer)
