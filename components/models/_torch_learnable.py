"""The torch module behind ``learnable_tensor`` (imported only when a graph is built).

A single ``nn.Parameter`` named ``value``, returned by a ``forward`` that takes no inputs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LearnableTensorModule"]


class LearnableTensorModule(nn.Module):
    """Holds ``value``, an ``nn.Parameter`` of ``shape``; ``forward()`` returns it."""

    def __init__(self, shape: list[int], init: str = "normal", *, mean: float = 0.0,
                 std: float = 1.0, low: float = 0.0, high: float = 1.0) -> None:
        super().__init__()
        self.init, self.mean, self.std, self.low, self.high = init, mean, std, low, high
        self.value = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.init == "normal":
            self.value.normal_(self.mean, self.std)
        elif self.init == "uniform":
            self.value.uniform_(self.low, self.high)
        elif self.init == "zeros":
            self.value.zero_()
        elif self.init == "ones":
            self.value.fill_(1.0)
        else:
            raise ValueError(f"unknown init '{self.init}'")

    def forward(self) -> dict[str, torch.Tensor]:
        return {"value": self.value}
