"""The torch module behind ``l2_normalize`` (imported only when a graph is built)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["L2NormalizeModule"]


class L2NormalizeModule(nn.Module):
    """``y = F.normalize(x, dim=1)``."""

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": F.normalize(x, p=2, dim=1, eps=self.eps)}
