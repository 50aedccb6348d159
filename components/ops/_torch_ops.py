"""The torch modules behind the op components (imported only when a graph is built).

They hold no parameters; each ``forward`` takes ``x`` and returns ``{"y": ...}``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DetachModule", "FlattenModule", "GaussianNoiseModule"]


class FlattenModule(nn.Module):
    """``y = x.flatten(1)``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() < 1:
            raise ValueError("flatten needs a tensor with a batch dimension, found a scalar")
        return {"y": x.flatten(1) if x.dim() > 1 else x.unsqueeze(1)}


class DetachModule(nn.Module):
    """``y = x.detach()``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": x.detach()}


class GaussianNoiseModule(nn.Module):
    """Draws ``[B, dim]`` Gaussian noise on the device of ``like``."""

    def __init__(self, dim: int, std: float) -> None:
        super().__init__()
        self.dim = dim
        self.std = std

    def forward(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        noise = torch.randn(like.shape[0], self.dim, device=like.device)
        return {"noise": noise * self.std if self.std != 1.0 else noise}
