"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

KD's KL splits into a target-class term (TCKD) and a non-target-class term (NCKD); DKD
weights them independently: ``L = alpha * TCKD + beta * NCKD``.
"""

from __future__ import annotations

from dgraph.declare import Labels, Logits, Scalar, loss, param

__all__ = ["dkd"]


def _dkd_parts(z, gt, target):  # torch tensors
    """``(log b, log q)`` of DKD for tempered logits ``z [B, C]``, in log space.

    ``log b = [log p_g, log(1 - p_g)]`` (``[B, 2]``) and ``log q`` (``[B, C]``) the
    log-softmax over the non-target classes, ``-inf`` at the target. Both come from
    ``L = logsumexp_{c != g} z_c - z_g = log((1 - p_g) / p_g)``:
    ``log p_g = -softplus(L)`` and ``log(1 - p_g) = -softplus(-L)`` (which is the
    logsumexp of the non-target log-probabilities), exact in float32 even when ``p_g`` is
    within rounding of 1, where ``1 - p_g`` cancels (as in DKD's own code). When no
    non-target class has mass (all ``-inf``) ``L = -inf``, ``p_g = 1`` and ``q`` is all
    ``-inf`` (weight 0 in KD = TCKD + (1 - p_g) NCKD): the KL terms then vanish with zero
    gradients. The logsumexp of such a row would send ``0 * nan`` backwards, so it is taken
    over zeros and its result replaced. A row of only ``-inf`` is no distribution: NaN.
    """
    import torch
    import torch.nn.functional as F

    ninf = float("-inf")
    z_rest = z.masked_fill(gt, ninf)
    empty = z_rest.detach().amax(dim=-1, keepdim=True) == ninf
    lse_rest = torch.logsumexp(z_rest.masked_fill(empty, 0.0), dim=-1, keepdim=True)
    log_q = z_rest - lse_rest  # -inf at g, and everywhere in an empty row
    log_odds = lse_rest.masked_fill(empty, ninf) - z.gather(-1, target.unsqueeze(-1))
    log_b = -F.softplus(torch.cat([log_odds, -log_odds], dim=-1))
    return log_b, log_q


@loss
def dkd(
    student: Logits("B, C", "student class scores"),
    teacher: Logits("B, C", "teacher class scores"),
    target: Labels("B", "class indices; negative: use the teacher's arg-max"), *,
    alpha: float = param(1.0, ge=0.0, doc="weight of TCKD"),
    beta: float = param(8.0, ge=0.0, doc="weight of NCKD"),
    temperature: float = param(4.0, gt=0.0, le=1000.0, doc="softmax temperature T"),
) -> Scalar(None, "DKD loss"):
    """DKD: ``loss = T^2 * (alpha * TCKD + beta * NCKD)``, batch mean.

    With ``p = softmax(z / T)`` and ``g`` the target class:
    ``b = [p_g, 1 - p_g]`` and ``TCKD = KL(b^t || b^s)``;
    ``q_c = exp(z_c / T) / sum_{k != g} exp(z_k / T)`` for ``c != g`` and
    ``NCKD = KL(q^t || q^s)``. An example whose target is negative (no label) uses the
    teacher's arg-max class as ``g``. The paper's warm-up (loss weight ramped linearly from 0
    over the first epochs) is a schedule on the objective weight.

    ``b`` is computed in log space (``log(1 - p_g)`` is the logsumexp of the non-target
    log-probabilities, taken as ``-softplus(z_g - logsumexp_{c != g} z_c)``), so TCKD stays
    exact when ``p_g`` is within float32 rounding of 1.
    ``-inf`` logits are exact as in ``kl_div`` (zero-probability terms add 0; ``+inf`` where
    only the student's probability is 0); a teacher with no mass outside ``g`` has
    ``NCKD = 0``. An empty batch gives 0, connected to the inputs. fp16/bf16 logits are
    computed in float32.
    """
    import torch
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32, kl_div_terms

    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"dkd expects student and teacher logits [B, C] of equal shape; "
                         f"found {list(student.shape)} and {list(teacher.shape)}")
    t = temperature
    zs, zt = at_least_float32(student) / t, at_least_float32(teacher) / t
    target = target.reshape(-1).long()
    # Examples without a label (negative target) use the teacher's predicted class.
    target = torch.where(target >= 0, target, zt.argmax(-1))
    gt = F.one_hot(target, zs.shape[-1]).bool()
    log_b_s, log_q_s = _dkd_parts(zs, gt, target)
    log_b_t, log_q_t = _dkd_parts(zt, gt, target)
    per_batch = 1.0 / max(len(zs), 1)  # batch mean; 0 for an empty batch
    tckd = kl_div_terms(log_b_t, log_b_s, dim=None) * per_batch
    nckd = kl_div_terms(log_q_t, log_q_s, dim=None) * per_batch
    return (alpha * tckd + beta * nckd) * t * t
