"""The torch modules behind the projector components (imported only when a graph is built).

Each ``forward`` takes ``x`` and returns ``{"y": ...}``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv1x1ProjectorModule", "LinearProjectorModule"]


class LinearProjectorModule(nn.Module):
    """``y = proj(x)`` with one ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.proj(x)}


class Conv1x1ProjectorModule(nn.Module):
    """``y = bn(conv1x1(x))``; ``bn`` is the identity unless ``batch_norm``."""

    def __init__(self, in_channels: int, out_channels: int, *, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=not batch_norm)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.bn(self.conv(x))}
