"""The torch module behind ``unet2d`` (imported only when a graph is built)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dgraph.errors import DgraphError

__all__ = ["UNet2DModule", "build_unet2d"]


class UNet2DModule(nn.Module):
    """``{"noise_pred": unet(sample, timestep).sample}``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"noise_pred": self.model(sample, timestep, return_dict=False)[0]}


def build_unet2d(kwargs: dict[str, Any]) -> UNet2DModule:
    """A ``UNet2DModel`` built from keyword arguments (never ``from_pretrained``: no folder,
    no Hub, no code). diffusers' ``TypeError``/``ValueError`` on a bad config propagate."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise DgraphError("component 'unet2d' needs diffusers: pip install \"dgraph[hf]\"") \
            from None
    return UNet2DModule(UNet2DModel(**kwargs))
