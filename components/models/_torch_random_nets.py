"""The torch module behind ``random_convnet`` (imported only when a graph is built)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RandomConvNetModule", "random_embed"]


def random_embed(x: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]],
                 norm: str) -> torch.Tensor:
    h = x
    for w, b in weights:
        h = F.conv2d(h, w, b, padding=1)
        if norm == "instance":
            h = F.instance_norm(h)
        h = F.relu(h)
        if h.shape[-1] >= 2:
            h = F.avg_pool2d(h, 2)
    return h.flatten(1)


class RandomConvNetModule(nn.Module):
    """No parameters: each ``forward`` draws fresh conv weights from the global generator."""

    def __init__(self, in_channels: int, width: int, depth: int, norm: str) -> None:
        super().__init__()
        self.in_channels, self.width, self.depth, self.norm = in_channels, width, depth, norm

    def sample(self, device: torch.device, dtype: torch.dtype
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        weights, channels = [], self.in_channels
        for _ in range(self.depth):
            bound = 1.0 / math.sqrt(channels * 9)
            w = torch.empty(self.width, channels, 3, 3, device=device, dtype=dtype)
            b = torch.empty(self.width, device=device, dtype=dtype)
            weights.append((w.uniform_(-bound, bound), b.uniform_(-bound, bound)))
            channels = self.width
        return weights

    def forward(self, real: torch.Tensor, synthetic: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = self.sample(real.device, real.dtype)
        both = random_embed(torch.cat([real, synthetic.to(real.dtype)]), weights, self.norm)
        return {"real_features": both[: len(real)], "synthetic_features": both[len(real):]}
