"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), "Paying More Attention to Attention".

For a feature map ``F`` of shape ``[B, C, H, W]`` the spatial attention map is
``Q = mean_c |F_c|^p`` flattened to ``[B, H*W]``, normalised ``a = Q / ||Q||_2``. One loss node
compares one student/teacher pair of taps (equal ``H, W``; channels may differ); the paper's
objective ``beta/2 * sum_j ||a_s^j - a_t^j||_2`` is the sum of one node per tapped pair, each
with weight ``beta/2`` in the update's objective.
"""

from __future__ import annotations

from typing import Literal

from dgraph.declare import Features, Scalar, loss, param

__all__ = ["attention_map", "attention_transfer"]


def attention_map(features, p: float, eps: float):  # torch tensors
    """``a = Q / ||Q||_2`` with ``Q = mean_c |F|^p`` flattened over positions: ``[B, H*W]``."""
    from dgraph.components.losses._divergence import at_least_float32

    # p >= 1 (the parameter's bound): |F|^p has a finite derivative at F = 0, where ReLU
    # features often are; for p < 1 it is infinite there and the gradient would be NaN.
    q = at_least_float32(features).abs().pow(p).mean(dim=1).flatten(1)
    return q / q.norm(dim=1, keepdim=True).clamp_min(eps)


@loss
def attention_transfer(
    student: Features("B, Cs, H, W", "student feature map"),
    teacher: Features("B, Ct, H, W", "teacher feature map (same H, W)"), *,
    # p >= 1, as in the paper: for p < 1, d|F|^p/dF is infinite at F = 0, where ReLU features
    # often are, so training would get NaN gradients. An eps guard (|F| + eps)^p would instead
    # add about eps^p to every position, which is not small for small p (1e-12^0.1 = 0.06).
    p: float = param(2.0, ge=1.0, le=16.0, doc="exponent of |F| in the attention map (at "
                     "least 1: below, the map has an infinite gradient at F = 0)"),
    reduction: Literal["norm", "mean_squared"] = param(
        "norm", doc="'norm': the paper's mean_b ||a_s - a_t||_2; 'mean_squared': the authors' "
        "code, mean over batch and positions of (a_s - a_t)^2"),
    eps: float = param(1e-12, gt=0.0, le=1e-2, doc="guards the map's norm against 0"),
) -> Scalar(None, "attention transfer loss"):
    """Attention transfer loss between one student and one teacher feature map.

    ``a(F) = Q / max(||Q||_2, eps)``, ``Q[b, i] = (1/C) sum_c |F[b, c, i]|^p`` over the
    ``H*W`` positions ``i``. ``reduction: norm`` (default):
    ``loss = (1/B) sum_b ||a(S)_b - a(T)_b||_2``; ``reduction: mean_squared``:
    ``loss = (1/(B*H*W)) sum_{b,i} (a(S)[b,i] - a(T)[b,i])^2``. Put ``beta/2`` in the
    objective weight (the paper uses ``beta = 1000`` with the mean-squared form).
    ``p >= 1`` keeps the gradient finite at ``F = 0``. An empty batch gives 0 (connected to
    the inputs: backward gives zero gradients); fp16/bf16 maps are computed in float32.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"attention_transfer: 'student' has {student.shape[0]} examples but "
                         f"'teacher' has {teacher.shape[0]}; both must come from the same batch")
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"attention_transfer needs feature maps [B, C, H, W] of equal H, W; found "
            f"student {list(student.shape)} and teacher {list(teacher.shape)}"
        )
    p, eps = float(p), float(eps)
    diff = attention_map(student, p, eps) - attention_map(teacher, p, eps)
    if reduction == "norm":  # the norm's gradient at 0 is taken as 0 by torch
        return diff.norm(dim=1).sum() / max(len(diff), 1)
    return diff.pow(2).sum() / max(diff.numel(), 1)
