"""Relational knowledge distillation (Park, Kim, Lu & Cho, CVPR 2019): distance and angle.

Both compare the *relations* between the examples of a batch, so student and teacher
features may have different widths. ``huber`` is the smooth-L1 loss
``l(x) = 0.5 x^2 / delta if |x| < delta else |x| - 0.5 delta`` (``delta = 1``).
A batch with no pair (distance: fewer than 2 examples) or no triplet (angle: fewer than 3)
gives 0, connected to the inputs (backward gives zero gradients), e.g. a last partial batch of
one example. fp16/bf16 features are computed in float32.
"""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["RKDAngle", "RKDDistance", "RKDParams"]


class RKDParams(Params):
    """Parameters of :class:`RKDDistance` and :class:`RKDAngle`."""

    delta: float = Field(1.0, gt=0.0, description="smooth-L1 threshold (1: the Huber loss)")
    eps: float = Field(1e-12, gt=0.0, le=1e-2, description="guards norms and means against 0")


_INPUTS = {
    "student": Port("Features", "B, Ds", "student features (e.g. penultimate layer)"),
    "teacher": Port("Features", "B, Dt", "teacher features (any width)"),
}


@component("rkd_distance", roles=("loss",))
class RKDDistance(Component):
    """RKD distance term: ``psi_D(x_i, x_j) = ||x_i - x_j||_2 / mu``, with
    ``mu = (1/(B(B-1))) sum_{i != j} ||x_i - x_j||_2`` the batch's mean distance;
    ``loss = (1/(B(B-1))) sum_{i != j} huber(psi_D(s_i, s_j) - psi_D(t_i, t_j))``.
    The paper weights it by ``lambda_D = 25``.
    """

    Params = RKDParams
    inputs = _INPUTS
    outputs = {"loss": Port("Scalar", None, "RKD distance loss")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_zoo import RKDDistanceLoss

        return RKDDistanceLoss(self.params.delta, self.params.eps)


@component("rkd_angle", roles=("loss",))
class RKDAngle(Component):
    """RKD angle term: ``psi_A(x_i, x_j, x_k) = <e_ij, e_ik>``, the cosine of the angle at
    ``x_i``, with ``e_ij = (x_j - x_i) / ||x_j - x_i||_2``;
    ``loss = mean over triplets of distinct i, j, k of huber(psi_A(s) - psi_A(t))``.
    The paper weights it by ``lambda_A = 50``.
    """

    Params = RKDParams
    inputs = _INPUTS
    outputs = {"loss": Port("Scalar", None, "RKD angle loss")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_zoo import RKDAngleLoss

        return RKDAngleLoss(self.params.delta, self.params.eps)
