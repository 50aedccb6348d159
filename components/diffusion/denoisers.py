"""Denoisers for low-dimensional data: a time-conditioned MLP (the 2-D toys).

The network is told its ``prediction_type`` so that nodes pairing it with a scheduler can
refuse a mismatch (an epsilon network read as v_prediction) before training.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dgraph.declare import Features, Labels, Module, Outputs, Timesteps, model, param

__all__ = ["TimeMLP"]

Widths = list[Annotated[int, Field(gt=0)]]


@model("time_mlp", roles=("teacher", "student", "model"))
class TimeMLP(Module):
    """An MLP denoiser ``(x_t, t[, class]) -> prediction`` for flat data (the 2-D ring).

    ``t`` is embedded with sinusoids (``time_dim`` frequencies of ``t / T``), mapped by a
    small MLP and added to every hidden layer (SiLU activations); an optional class embedding
    (index ``num_classes`` is the null class of classifier-free guidance, used for the
    fraction ``label_dropout`` of training examples) is added likewise. ``prediction`` has the
    shape of ``sample``; what it means is ``prediction_type``.
    """

    def __init__(self, *, in_features: int = param(2, gt=0, doc="data width"),
                 hidden: Widths = param([128, 128, 128], doc="hidden widths"),
                 time_dim: int = param(64, ge=2, doc="sinusoidal embedding width (even)"),
                 num_train_timesteps: int = param(1000, gt=0, doc="T: timesteps are divided "
                                                  "by it before the embedding"),
                 num_classes: int | None = param(None, gt=0, doc="classes to condition on "
                                                 "(None: unconditional)"),
                 label_dropout: float = param(0.0, ge=0, lt=1, doc="training: probability of "
                                              "replacing a label by the null class (CFG)"),
                 prediction_type: Literal["epsilon", "sample", "v_prediction", "flow"] = param(
                     "epsilon", doc="what the output is: epsilon, sample (x0), v_prediction "
                     "or flow (eps - x0)")) -> None:
        super().__init__()
        from torch import nn

        if time_dim % 2:
            raise ValueError(f"time_dim must be even, found {time_dim}")
        self.prediction_type = prediction_type
        self.num_classes = num_classes
        self.label_dropout = label_dropout
        self.time_dim, self.scale = time_dim, float(num_train_timesteps)
        width = hidden[0]
        self.time = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.classes = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.inp = nn.Linear(in_features, width)
        self.layers = nn.ModuleList()
        self.cond = nn.ModuleList()
        for size in hidden[1:]:
            self.layers.append(nn.Linear(width, size))
            self.cond.append(nn.Linear(hidden[0], size))
            width = size
        self.out = nn.Linear(width, in_features)
        self.act = nn.SiLU()

    def embed(self, timestep):  # noqa: ANN001, ANN201
        import math

        import torch

        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=timestep.device) / half)
        angles = (timestep.float() / self.scale * 1000.0)[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], 1)

    def forward(self, sample: Features("B, {in_features}", "noisy samples x_t"),
                timestep: Timesteps("B", "the timestep of each example"),
                class_labels: Labels("B", "class of each example (num_classes = null)") = None,
                ) -> Outputs(prediction=Features("B, {in_features}",
                                                 "the prediction (see prediction_type)")):
        import torch

        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        cond = self.time(self.embed(timestep))
        if self.classes is not None:
            if class_labels is None:
                class_labels = torch.full((sample.shape[0],), self.num_classes,
                                          dtype=torch.long, device=sample.device)
            elif self.training and self.label_dropout > 0:
                drop = torch.rand(class_labels.shape, device=sample.device) < self.label_dropout
                class_labels = torch.where(drop, torch.full_like(class_labels, self.num_classes),
                                           class_labels)
            cond = cond + self.classes(class_labels)
        h = self.act(self.inp(sample) + cond)
        for layer, proj in zip(self.layers, self.cond, strict=True):
            h = self.act(layer(h) + proj(cond))
        return {"prediction": self.out(h)}
