"""The torch module behind the ``cnn`` component (imported only when a graph is built).

Blocks are attributes ``layer1 .. layerN`` so that their outputs can be tapped by path.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CNNModule", "ConvBlock"]


class ConvBlock(nn.Sequential):
    """3x3 convolution (no bias), BatchNorm, ReLU; ``stride`` 2 halves the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=False)


class CNNModule(nn.Module):
    """``layer1 .. layerN`` conv blocks, global average pool, ``head`` linear layer."""

    def __init__(self, in_channels: int, channels: list[int], num_classes: int, *,
                 downsample_first: bool = False) -> None:
        super().__init__()
        self.depth = len(channels)
        width = in_channels
        for index, out in enumerate(channels, start=1):
            stride = 2 if (index > 1 or downsample_first) else 1
            self.add_module(f"layer{index}", ConvBlock(width, out, stride))
            width = out
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = x
        for index in range(1, self.depth + 1):
            h = getattr(self, f"layer{index}")(h)
        features = self.pool(h).flatten(1)
        return {"logits": self.head(features), "features": features}
