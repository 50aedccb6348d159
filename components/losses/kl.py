"""KL divergence between softened class distributions, in either direction.

Forward KL ``KL(p_t || p_s)`` is mean-seeking (Hinton KD); reverse KL ``KL(p_s || p_t)`` is
mode-seeking (used in MiniLLM-style distillation). With ``p_s = [0.1, 0.9]`` and
``p_t = [0.9, 0.1]`` both equal ``0.8 ln 9``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["KLDiv", "KLDivParams"]


class KLDivParams(Params):
    """Parameters of :class:`KLDiv`."""

    direction: Literal["forward", "reverse"] = Field(
        "forward", description="forward: KL(p_t || p_s); reverse: KL(p_s || p_t)"
    )
    temperature: float = Field(1.0, gt=0.0, le=1000.0, description="softmax temperature T")
    scale_by_t2: bool = Field(False, description="multiply by T^2")


@component("kl_div", roles=("loss",))
class KLDiv(Component):
    """KL divergence between ``p_s = softmax(s / T)`` and ``p_t = softmax(t / T)``.

    ``forward``: ``loss = (1/B) sum_b sum_c p_t[b,c] (log p_t[b,c] - log p_s[b,c])``;
    ``reverse``: ``loss = (1/B) sum_b sum_c p_s[b,c] (log p_s[b,c] - log p_t[b,c])``;
    times ``T^2`` when ``scale_by_t2``. The teacher is not detached (the compiler decides).
    Terms with ``p[b,c] = 0`` (a ``-inf`` logit) are exactly 0 with zero gradients; ``p > 0``
    where the other side is 0 gives ``+inf``, the true KL. An empty batch gives 0, connected
    to the inputs. fp16/bf16 logits are computed in float32.
    """

    Params = KLDivParams
    inputs = {
        "student": Port("Logits", "B, C", "student class scores"),
        "teacher": Port("Logits", "B, C", "teacher class scores (same classes)"),
    }
    outputs = {"loss": Port("Scalar", None, "KL divergence")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_zoo import KLDivLoss

        p = self.params
        return KLDivLoss(p.temperature, p.direction, p.scale_by_t2)
