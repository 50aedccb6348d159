"""Regression and feature-matching losses: plain MSE, the FitNets hint loss, cosine distance.

The feature losses take the teacher's tensor as an input like any other; they never detach it,
because whether a gradient reaches the teacher is the compiler's decision (frozen or not).
Every mean is a sum divided by ``max(N, 1)``: an empty batch gives 0, connected to the inputs
(backward gives zero gradients). fp16/bf16 inputs are computed in float32.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = [
    "CosineFeature",
    "CosineFeatureParams",
    "FeatureMSE",
    "FeatureMSEParams",
    "MSE",
    "MSEParams",
]


class MSEParams(Params):
    """Parameters of :class:`MSE`."""

    reduction: Literal["mean", "sum"] = Field(
        "mean", description="average or sum the squared errors over all elements"
    )


@component("mse", roles=("loss",))
class MSE(Component):
    """Mean squared error between two tensors of the same shape.

    ``loss = (1/N) sum_i (prediction_i - target_i)^2`` over all ``N`` elements
    (``reduction: sum`` drops the ``1/N``). The shapes must be equal: no broadcasting.
    """

    Params = MSEParams
    inputs = {
        "prediction": Port("Tensor", "B, ...", "predicted values"),
        "target": Port("Tensor", "B, ...", "target values (same shape)"),
    }
    outputs = {"loss": Port("Scalar", None, "squared error")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_losses import MSELoss

        return MSELoss(self.params.reduction)


class FeatureMSEParams(Params):
    """Parameters of :class:`FeatureMSE`."""

    reduction: Literal["mean", "half_squared_norm"] = Field(
        "mean",
        description="'mean': mean of (s - t)^2 over all elements; 'half_squared_norm': the "
        "FitNets paper's 1/2 ||s - t||^2 per example, averaged over the batch",
    )


@component("feature_mse", roles=("loss",))
class FeatureMSE(Component):
    """FitNets hint loss: squared distance between student and teacher features.

    With ``reduction: mean`` (default) ``loss = (1/N) sum_i (s_i - t_i)^2`` over all ``N``
    elements, i.e. plain MSE, insensitive to the feature width. With
    ``reduction: half_squared_norm`` ``loss = (1/B) sum_b 1/2 ||s_b - t_b||^2``, the form of
    Romero et al. (2015), which grows with the number of feature elements. ``student`` is
    usually a projector's output that maps the student's features onto the teacher's shape;
    the two must have equal shapes. ``teacher`` is not detached here (the compiler decides).
    """

    Params = FeatureMSEParams
    inputs = {
        "student": Port("Features", "B, ...", "student features (after any projector)"),
        "teacher": Port("Features", "B, ...", "teacher features (same shape)"),
    }
    outputs = {"loss": Port("Scalar", None, "hint loss")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_losses import FeatureMSELoss

        return FeatureMSELoss(self.params.reduction)


class CosineFeatureParams(Params):
    """Parameters of :class:`CosineFeature`."""

    eps: float = Field(1e-8, gt=0.0, le=1e-2, description="guards the norms against zero")


@component("cosine_feature", roles=("loss",))
class CosineFeature(Component):
    """Cosine distance between student and teacher features along dimension 1.

    ``loss = mean_b (1 - <s_b, t_b> / max(||s_b|| ||t_b||, eps))``, the cosine taken along
    dimension 1 (channels); for feature maps ``[B, C, H, W]`` the mean also runs over the
    positions. Shapes must be equal. ``teacher`` is not detached here (the compiler decides).
    """

    Params = CosineFeatureParams
    inputs = {
        "student": Port("Features", "B, ...", "student features"),
        "teacher": Port("Features", "B, ...", "teacher features (same shape)"),
    }
    outputs = {"loss": Port("Scalar", None, "mean cosine distance, in [0, 2]")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_losses import CosineFeatureLoss

        return CosineFeatureLoss(self.params.eps)
