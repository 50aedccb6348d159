"""The torch modules behind the model components (imported only when a graph is built)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "MLPMapModule", "MLPModule"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLPModule(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], num_classes: int,
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x.flatten(1))
        return {"logits": self.head(features), "features": features}


class MLPMapModule(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], out_features: int,
                 activation: str = "relu") -> None:
        super().__init__()
        self.net = MLPModule(in_features, hidden, out_features, activation)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.net(x)["logits"]}
