"""KL divergence between softened class distributions, in either direction; ``hinton_kd``.

Forward KL ``KL(p_t || p_s)`` is mean-seeking (Hinton KD); reverse KL ``KL(p_s || p_t)`` is
mode-seeking (used in MiniLLM-style distillation). With ``p_s = [0.1, 0.9]`` and
``p_t = [0.9, 0.1]`` both equal ``0.8 ln 9``. ``hinton_kd`` is ``kl_div`` at ``T = 4`` scaled
by ``T^2``: a preset, the same component with other defaults.
"""

from __future__ import annotations

from typing import Literal

from dgraph.declare import Logits, Scalar, loss, param, preset

__all__ = ["hinton_kd", "kl_div"]

_SUM = 2  # torch's reduction code for "sum" (none 0, mean 1)


@loss(cuda_graph_safe=True)
def kl_div(
    student: Logits("B, C", "student class scores"),
    teacher: Logits("B, C", "teacher class scores (same classes)"), *,
    direction: Literal["forward", "reverse"] = param(
        "forward", doc="forward: KL(p_t || p_s); reverse: KL(p_s || p_t)"),
    temperature: float = param(1.0, gt=0.0, le=1000.0, doc="softmax temperature T"),
    scale_by_t2: bool = param(
        False, doc="multiply by T^2 so gradient magnitudes do not shrink as T grows"),
) -> Scalar(None, "KL divergence"):
    """KL divergence between ``p_s = softmax(s / T)`` and ``p_t = softmax(t / T)``.

    ``forward``: ``loss = (1/B) sum_b sum_c p_t[b,c] (log p_t[b,c] - log p_s[b,c])``;
    ``reverse``: ``loss = (1/B) sum_b sum_c p_s[b,c] (log p_s[b,c] - log p_t[b,c])``;
    times ``T^2`` when ``scale_by_t2``. The teacher is not detached (the compiler decides).
    Terms with ``p[b,c] = 0`` (a ``-inf`` logit) are exactly 0 with zero gradients; ``p > 0``
    where the other side is 0 gives ``+inf``, the true KL. An empty batch gives 0, connected
    to the inputs. fp16/bf16 logits are computed in float32.
    """
    import torch

    # This runs every step: the helpers of the rare branches are imported in them.
    if student.shape != teacher.shape:
        from dgraph.components.losses._divergence import same_shape

        same_shape(student, teacher, "student", "teacher", "both must score the same classes")
    # at_least_float32 written out: fp16/bf16 in float32.
    if student.dtype.itemsize < 4 and student.is_floating_point():
        student = student.float()
    if teacher.dtype.itemsize < 4 and teacher.is_floating_point():
        teacher = teacher.float()
    log_s = torch.log_softmax(student / temperature, dim=-1)
    log_t = torch.log_softmax(teacher / temperature, dim=-1)
    # KL(p || q) of log-probabilities: forward p = p_t, q = p_s; reverse p = p_s, q = p_t.
    log_p, log_q = (log_t, log_s) if direction == "forward" else (log_s, log_t)
    # The mean over every row (all dimensions but the classes'); 0 for an empty batch.
    scale = (temperature**2 if scale_by_t2 else 1.0) / max(student.shape[:-1].numel(), 1)
    if log_p.is_cpu:
        # On CPU reading a number costs less than one more operation: the plain sum
        # p (log p - log q) first (PyTorch's kl_div). It differs from the exact form only
        # where p = 0 meets a -inf log-probability (0 * inf): its value is then NaN, and only
        # then the exact form is computed. Otherwise the two agree bit for bit, gradients
        # included (a term with p = 0 sends exactly 0 back to log q either way).
        plain = torch.kl_div(log_q, log_p, _SUM, log_target=True) * scale
        value = plain.detach().item()
        if value == value:  # not NaN
            return plain
    from dgraph.components.losses._divergence import kl_div_terms

    return kl_div_terms(log_p, log_q, dim=None) * scale


hinton_kd = preset(
    "hinton_kd", of=kl_div, temperature=4.0, scale_by_t2=True,
    outputs={"loss": Scalar(None, "KD loss")},
    doc="""Knowledge distillation loss of Hinton et al. (2015): KL between softened distributions.

    ``loss = T^2 * (1/B) * sum_b KL(softmax(t_b / T) || softmax(s_b / T))``, i.e. PyTorch's
    ``kl_div(..., reduction="batchmean")`` times ``T^2`` (``scale_by_t2: false`` drops the
    ``T^2``). ``kl_div`` with ``temperature: 4`` and ``scale_by_t2: true``. The loss does not
    detach ``teacher``: whether a gradient reaches the teacher is decided by the compiler (a
    frozen teacher runs without gradients).

    ``-inf`` logits (masked classes) are exact: a class with ``p_t = 0`` adds exactly 0, with
    zero gradients, even where the student is ``-inf`` too; a class with ``p_t > 0`` and
    ``p_s = 0`` makes the loss ``+inf`` (the true KL; the runtime reports a non-finite loss).
    A row of only ``-inf`` logits is no distribution and gives NaN. An empty batch gives 0,
    connected to the inputs. fp16/bf16 logits are computed in float32.
    """)
