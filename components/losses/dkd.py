"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

KD's KL splits into a target-class term (TCKD) and a non-target-class term (NCKD); DKD
weights them independently: ``L = alpha * TCKD + beta * NCKD``.
"""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["DKD", "DKDParams"]


class DKDParams(Params):
    """Parameters of :class:`DKD`."""

    alpha: float = Field(1.0, ge=0.0, description="weight of TCKD")
    beta: float = Field(8.0, ge=0.0, description="weight of NCKD")
    temperature: float = Field(4.0, gt=0.0, le=1000.0, description="softmax temperature T")


@component("dkd", roles=("loss",))
class DKD(Component):
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

    Params = DKDParams
    inputs = {
        "student": Port("Logits", "B, C", "student class scores"),
        "teacher": Port("Logits", "B, C", "teacher class scores"),
        "target": Port("Labels", "B", "class indices; negative: use the teacher's arg-max"),
    }
    outputs = {"loss": Port("Scalar", None, "DKD loss")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_zoo import DKDLoss

        p = self.params
        return DKDLoss(p.alpha, p.beta, p.temperature)
