"""Projectors: small trainable maps between feature spaces (FitNets regressors, CRD heads).

``linear_projector`` maps flat features ``[B, in] -> [B, out]``; ``conv1x1_projector`` maps
feature maps ``[B, C_in, H, W] -> [B, C_out, H, W]`` without changing the spatial size.
"""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["Conv1x1Projector", "Conv1x1ProjectorParams", "LinearProjector",
           "LinearProjectorParams"]


class LinearProjectorParams(Params):
    """Parameters of :class:`LinearProjector`."""

    in_features: int = Field(gt=0, description="input width")
    out_features: int = Field(gt=0, description="output width")
    bias: bool = Field(True, description="add a learnable bias")


@component("linear_projector", roles=("projector",))
class LinearProjector(Component):
    """Linear map ``y = x W^T (+ b)`` from ``in_features`` to ``out_features``."""

    Params = LinearProjectorParams
    inputs = {"x": Port("Features", "B, {in_features}", "features to project")}
    outputs = {"y": Port("Features", "B, {out_features}", "projected features")}
    tappable = True

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_projectors import LinearProjectorModule

        p = self.params
        return LinearProjectorModule(p.in_features, p.out_features, bias=p.bias)


class Conv1x1ProjectorParams(Params):
    """Parameters of :class:`Conv1x1Projector`."""

    in_channels: int = Field(gt=0, description="input channels")
    out_channels: int = Field(gt=0, description="output channels")
    batch_norm: bool = Field(
        False, description="follow the convolution with BatchNorm (the conv then has no bias)"
    )


@component("conv1x1_projector", roles=("projector",))
class Conv1x1Projector(Component):
    """1x1 convolution from ``in_channels`` to ``out_channels``, optionally with BatchNorm.

    Keeps the spatial size: ``[B, C_in, H, W] -> [B, C_out, H, W]``. The usual regressor that
    maps a student's feature map onto a teacher's in FitNets-style hint losses.
    """

    Params = Conv1x1ProjectorParams
    inputs = {"x": Port("Features", "B, {in_channels}, H, W", "feature map to project")}
    outputs = {"y": Port("Features", "B, {out_channels}, H, W", "projected feature map")}
    tappable = True

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_projectors import Conv1x1ProjectorModule

        p = self.params
        return Conv1x1ProjectorModule(p.in_channels, p.out_channels, batch_norm=p.batch_norm)
