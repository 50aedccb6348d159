"""Relational knowledge distillation (Park, Kim, Lu & Cho, CVPR 2019): distance and angle.

Both compare the *relations* between the examples of a batch, so student and teacher
features may have different widths. ``huber`` is the smooth-L1 loss
``l(x) = 0.5 x^2 / delta if |x| < delta else |x| - 0.5 delta`` (``delta = 1``).
A batch with no pair (distance: fewer than 2 examples) or no triplet (angle: fewer than 3)
gives 0, connected to the inputs (backward gives zero gradients), e.g. a last partial batch of
one example. fp16/bf16 features are computed in float32.
"""

from __future__ import annotations

from dgraph.declare import Features, Scalar, loss, param

__all__ = ["rkd_angle", "rkd_distance"]

_STUDENT = Features("B, Ds", "student features (e.g. penultimate layer)")
_TEACHER = Features("B, Dt", "teacher features (any width)")


_DELTA_DOC = "smooth-L1 threshold (1: the Huber loss)"
_EPS_DOC = "guards norms and means against 0"


def _same_batch(student, teacher, what: str) -> None:  # torch tensors
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{what}: 'student' has {student.shape[0]} examples but 'teacher' has "
                         f"{teacher.shape[0]}; both must come from the same batch")


@loss
def rkd_distance(student: _STUDENT, teacher: _TEACHER, *,
                 delta: float = param(1.0, gt=0.0, doc=_DELTA_DOC),
                 eps: float = param(1e-12, gt=0.0, le=1e-2, doc=_EPS_DOC),
                 ) -> Scalar(None, "RKD distance loss"):
    """RKD distance term (Park et al., 2019): relative pairwise distances must agree.

    ``psi_D(x_i, x_j) = ||x_i - x_j||_2 / mu``, with
    ``mu = (1/(B(B-1))) sum_{i != j} ||x_i - x_j||_2`` the batch's mean distance;
    ``loss = (1/(B(B-1))) sum_{i != j} huber(psi_D(s_i, s_j) - psi_D(t_i, t_j))``.
    The paper weights it by ``lambda_D = 25``.
    """
    import torch
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32, zero_from

    _same_batch(student, teacher, "rkd_distance")
    n = len(student)
    if n < 2:  # no pair: nothing to match (a shape, so no host sync)
        return zero_from(student, teacher)

    def normalised(x):
        x = at_least_float32(x).flatten(1)
        squared = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(-1)
        d = squared.clamp_min(eps).sqrt() * (1 - torch.eye(len(x), device=x.device,
                                                           dtype=x.dtype))
        return d / (d.sum() / max(n * (n - 1), 1)).clamp_min(eps)

    off = 1 - torch.eye(n, device=student.device)
    per_pair = F.smooth_l1_loss(normalised(student), normalised(teacher), beta=delta,
                                reduction="none")
    return (per_pair * off).sum() / (n * (n - 1))


@loss
def rkd_angle(student: _STUDENT, teacher: _TEACHER, *,
              delta: float = param(1.0, gt=0.0, doc=_DELTA_DOC),
              eps: float = param(1e-12, gt=0.0, le=1e-2, doc=_EPS_DOC),
              ) -> Scalar(None, "RKD angle loss"):
    """RKD angle term (Park et al., 2019): angles within triplets must agree.

    ``psi_A(x_i, x_j, x_k) = <e_ij, e_ik>``, the cosine of the angle at ``x_i``, with
    ``e_ij = (x_j - x_i) / ||x_j - x_i||_2``;
    ``loss = mean over triplets of distinct i, j, k of huber(psi_A(s) - psi_A(t))``.
    The paper weights it by ``lambda_A = 50``.
    """
    import torch
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32, zero_from

    _same_batch(student, teacher, "rkd_angle")
    n = len(student)
    if n < 3:  # no triplet of distinct examples
        return zero_from(student, teacher)

    def cosines(x):
        x = at_least_float32(x).flatten(1)
        # e[i, j] = (x_j - x_i) / ||x_j - x_i||
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2, eps=eps)
        return torch.bmm(e, e.transpose(1, 2))  # [i, j, k] = <e_ij, e_ik>, the angle at x_i

    off = 1 - torch.eye(n, device=student.device)
    distinct = off.unsqueeze(2) * off.unsqueeze(1) * off.unsqueeze(0)
    per_triplet = F.smooth_l1_loss(cosines(student), cosines(teacher), beta=delta,
                                   reduction="none")
    return (per_triplet * distinct).sum() / (n * (n - 1) * (n - 2))
