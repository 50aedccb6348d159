"""Projectors: small trainable maps between feature spaces (FitNets regressors, CRD heads).

``linear_projector`` maps flat features ``[B, in] -> [B, out]``; its preset ``token_projector``
is the same map applied to every token, ``[B, T, in] -> [B, T, out]``; ``conv1x1_projector``
maps feature maps ``[B, C_in, H, W] -> [B, C_out, H, W]`` without changing the spatial size.
"""

from __future__ import annotations

from dgraph.declare import Features, Module, param, preset, projector

__all__ = ["Conv1x1Projector", "LinearProjector", "token_projector"]


@projector("linear_projector")
class LinearProjector(Module):
    """Linear map ``y = x W^T (+ b)`` from ``in_features`` to ``out_features``.

    ``proj`` is the ``nn.Linear``; it acts on the last dimension, so the same map works on
    per-token states (see ``token_projector``).
    """

    def __init__(self, *, in_features: int = param(gt=0, doc="input width"),
                 out_features: int = param(gt=0, doc="output width"),
                 bias: bool = param(True, doc="add a learnable bias")) -> None:
        super().__init__()
        from torch import nn

        self.proj = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x: Features("B, {in_features}", "features to project")
                ) -> Features("B, {out_features}", "projected features"):
        return self.proj(x)


token_projector = preset(
    "token_projector", of=LinearProjector,
    doc="``y[b, t] = W x[b, t] (+ b)``: maps a tapped student layer to the teacher's width.\n\n"
    "``linear_projector`` over per-token hidden states ``[B, T, in] -> [B, T, out]`` (one\n"
    "map shared by all positions), the projector of hidden-state distillation between a\n"
    "narrow student and a wide teacher: ``in_features`` is the student's hidden width,\n"
    "``out_features`` the teacher's.",
    inputs={"x": Features("B, T, {in_features}", "per-token hidden states")},
    outputs={"y": Features("B, T, {out_features}", "projected hidden states")})


@projector("conv1x1_projector")
class Conv1x1Projector(Module):
    """1x1 convolution from ``in_channels`` to ``out_channels``, optionally with BatchNorm.

    Keeps the spatial size: ``[B, C_in, H, W] -> [B, C_out, H, W]``; ``y = bn(conv(x))`` where
    ``bn`` is the identity unless ``batch_norm``. The usual regressor that maps a student's
    feature map onto a teacher's in FitNets-style hint losses.
    """

    def __init__(self, *, in_channels: int = param(gt=0, doc="input channels"),
                 out_channels: int = param(gt=0, doc="output channels"),
                 batch_norm: bool = param(False, doc="follow the convolution with BatchNorm "
                                          "(the conv then has no bias)")) -> None:
        super().__init__()
        from torch import nn

        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()

    def forward(self, x: Features("B, {in_channels}, H, W", "feature map to project")
                ) -> Features("B, {out_channels}, H, W", "projected feature map"):
        return self.bn(self.conv(x))
