"""Regression and feature-matching losses: the FitNets hint loss (plain MSE), cosine distance.

``mse`` is ``feature_mse`` over ``prediction`` and ``target`` of any semantic type (a preset).
The feature losses take the teacher's tensor as an input like any other; they never detach it,
because whether a gradient reaches the teacher is the compiler's decision (frozen or not).
Every mean is a sum divided by ``max(N, 1)``: an empty batch gives 0, connected to the inputs
(backward gives zero gradients). fp16/bf16 inputs are computed in float32.
"""

from __future__ import annotations

from typing import Literal

from dgraph.declare import Features, PortNames, Scalar, Tensor, loss, param, preset

__all__ = ["cosine_feature", "feature_mse", "mse"]


@loss
def feature_mse(
    student: Features("B, ...", "student features (after any projector)"),
    teacher: Features("B, ...", "teacher features (same shape)"), *,
    reduction: Literal["mean", "sum", "half_squared_norm"] = param(
        "mean", doc="'mean': mean of the squared differences over all elements; 'sum': "
        "their sum; 'half_squared_norm': 1/2 of their sum per example, averaged over the "
        "batch (the FitNets paper's 1/2 ||s - t||^2)"),
    names: PortNames,
) -> Scalar(None, "hint loss"):
    """FitNets hint loss: squared distance between student and teacher features.

    With ``reduction: mean`` (default) ``loss = (1/N) sum_i (s_i - t_i)^2`` over all ``N``
    elements, i.e. plain MSE, insensitive to the feature width; ``reduction: sum`` drops the
    ``1/N``. With ``reduction: half_squared_norm`` ``loss = (1/B) sum_b 1/2 ||s_b - t_b||^2``,
    the form of Romero et al. (2015), which grows with the number of feature elements.
    ``student`` is usually a projector's output that maps the student's features onto the
    teacher's shape; the two must have equal shapes. ``teacher`` is not detached here (the
    compiler decides).
    """
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32, same_shape

    same_shape(student, teacher, names["student"], names["teacher"])
    total = F.mse_loss(at_least_float32(student), at_least_float32(teacher), reduction="sum")
    if reduction == "mean":
        return total / max(student.numel(), 1)
    if reduction == "sum":
        return total
    return total * (0.5 / max(student.shape[0], 1))


mse = preset(
    "mse", of=feature_mse,
    inputs={"prediction": Tensor("B, ...", "predicted values"),
            "target": Tensor("B, ...", "target values (same shape)")},
    outputs={"loss": Scalar(None, "squared error")},
    doc="""Mean squared error between two tensors of the same shape.

    ``loss = (1/N) sum_i (prediction_i - target_i)^2`` over all ``N`` elements
    (``reduction: sum`` drops the ``1/N``). The shapes must be equal: no broadcasting.
    ``feature_mse`` over tensors of any semantic type.
    """)


@loss
def cosine_feature(
    student: Features("B, ...", "student features"),
    teacher: Features("B, ...", "teacher features (same shape)"), *,
    eps: float = param(1e-8, gt=0.0, le=1e-2, doc="guards the norms against zero"),
) -> Scalar(None, "mean cosine distance, in [0, 2]"):
    """Cosine distance between student and teacher features along dimension 1.

    ``loss = mean_b (1 - <s_b, t_b> / max(||s_b|| ||t_b||, eps))``, the cosine taken along
    dimension 1 (channels); for feature maps ``[B, C, H, W]`` the mean also runs over the
    positions. Shapes must be equal. ``teacher`` is not detached here (the compiler decides).
    """
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32, same_shape

    same_shape(student, teacher, "student", "teacher")
    if student.dim() < 2:
        raise ValueError(f"cosine_feature needs at least 2 dimensions [B, C, ...], found "
                         f"{list(student.shape)}")
    cosine = F.cosine_similarity(at_least_float32(student), at_least_float32(teacher), dim=1,
                                 eps=eps)
    return (1.0 - cosine).sum() / max(cosine.numel(), 1)
