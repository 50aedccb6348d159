"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), "Paying More Attention to Attention".

For a feature map ``F`` of shape ``[B, C, H, W]`` the spatial attention map is
``Q = mean_c |F_c|^p`` flattened to ``[B, H*W]``, normalised ``a = Q / ||Q||_2``. One loss node
compares one student/teacher pair of taps (equal ``H, W``; channels may differ); the paper's
objective ``beta/2 * sum_j ||a_s^j - a_t^j||_2`` is the sum of one node per tapped pair, each
with weight ``beta/2`` in the update's objective.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["AttentionTransfer", "AttentionTransferParams"]


class AttentionTransferParams(Params):
    """Parameters of :class:`AttentionTransfer`."""

    # p >= 1, as in the paper: for p < 1, d|F|^p/dF is infinite at F = 0, where ReLU features
    # often are, so training would get NaN gradients. An eps guard (|F| + eps)^p would instead
    # add about eps^p to every position, which is not small for small p (1e-12^0.1 = 0.06).
    p: float = Field(2.0, ge=1.0, le=16.0, description="exponent of |F| in the attention map "
                     "(at least 1: below, the map has an infinite gradient at F = 0)")
    reduction: Literal["norm", "mean_squared"] = Field(
        "norm",
        description="'norm': the paper's mean_b ||a_s - a_t||_2; 'mean_squared': the authors' "
        "code, mean over batch and positions of (a_s - a_t)^2",
    )
    eps: float = Field(1e-12, gt=0.0, le=1e-2, description="guards the map's norm against 0")


@component("attention_transfer", roles=("loss",))
class AttentionTransfer(Component):
    """Attention transfer loss between one student and one teacher feature map.

    ``a(F) = Q / max(||Q||_2, eps)``, ``Q[b, i] = (1/C) sum_c |F[b, c, i]|^p`` over the
    ``H*W`` positions ``i``. ``reduction: norm`` (default):
    ``loss = (1/B) sum_b ||a(S)_b - a(T)_b||_2``; ``reduction: mean_squared``:
    ``loss = (1/(B*H*W)) sum_{b,i} (a(S)[b,i] - a(T)[b,i])^2``. Put ``beta/2`` in the
    objective weight (the paper uses ``beta = 1000`` with the mean-squared form).
    ``p >= 1`` keeps the gradient finite at ``F = 0``. An empty batch gives 0 (connected to
    the inputs: backward gives zero gradients); fp16/bf16 maps are computed in float32.
    """

    Params = AttentionTransferParams
    inputs = {
        "student": Port("Features", "B, Cs, H, W", "student feature map"),
        "teacher": Port("Features", "B, Ct, H, W", "teacher feature map (same H, W)"),
    }
    outputs = {"loss": Port("Scalar", None, "attention transfer loss")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_zoo import AttentionTransferLoss

        p = self.params
        return AttentionTransferLoss(p.p, p.reduction, p.eps)
