"""Losses on class scores: supervised cross-entropy and Hinton et al.'s logit distillation.

``cross_entropy`` takes an optional ``mask`` so that a low-label setting (only some examples
carry a label) is expressible; ``hinton_kd`` matches softened teacher and student distributions.
"""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["CrossEntropy", "CrossEntropyParams", "HintonKD", "HintonKDParams"]


class CrossEntropyParams(Params):
    """Parameters of :class:`CrossEntropy`."""

    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="mix the one-hot target with uniform by this amount"
    )


@component("cross_entropy", roles=("loss",))
class CrossEntropy(Component):
    """Cross-entropy of class scores against integer labels, averaged over labelled examples.

    ``loss = sum_b v_b * CE(logits_b, target_b) / max(1, sum_b v_b)`` with
    ``CE(z, y) = -log softmax(z)_y`` (with label smoothing ``eps``:
    ``-(1-eps) log softmax(z)_y - eps/C sum_c log softmax(z)_c``). An example counts
    (``v_b = 1``) when ``mask`` is true for it (every example when ``mask`` is not connected)
    and its target is not negative: negative targets mark unlabelled examples, as the
    ``digits`` source writes them. With ``mask`` connected, a batch with no counted example
    gives 0 (and is still differentiable). Without ``mask`` the loss is PyTorch's mean
    cross-entropy ignoring negative targets, the cheapest form; a batch whose targets are all
    negative then gives NaN, so connect ``mask`` whenever labels can be missing. An empty batch
    (``B = 0``) gives 0 either way, connected to the inputs (backward gives zero gradients).
    A ``-inf`` logit is a class of probability 0: exact and finite unless it is the target's
    (``+inf``, the true cross-entropy) or ``label_smoothing > 0`` (the smoothed target puts
    ``eps/C`` on every class, so the loss is ``+inf`` too). fp16/bf16 logits are computed in
    float32.
    """

    Params = CrossEntropyParams
    inputs = {
        "logits": Port("Logits", "B, C", "class scores"),
        "target": Port("Labels", "B", "class indices (int64); negative = no label"),
        "mask": Port("Mask", "B", "which examples have a label (optional)", optional=True),
    }
    outputs = {"loss": Port("Scalar", None, "mean cross-entropy over labelled examples")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_losses import CrossEntropyLoss

        return CrossEntropyLoss(label_smoothing=self.params.label_smoothing)


class HintonKDParams(Params):
    """Parameters of :class:`HintonKD`."""

    temperature: float = Field(4.0, gt=0.0, le=1000.0, description="softmax temperature T")
    scale_by_t2: bool = Field(
        True, description="multiply by T^2 so gradient magnitudes do not shrink as T grows"
    )


@component("hinton_kd", roles=("loss",))
class HintonKD(Component):
    """Knowledge distillation loss of Hinton et al. (2015): KL between softened distributions.

    ``loss = T^2 * (1/B) * sum_b KL(softmax(t_b / T) || softmax(s_b / T))``, i.e. PyTorch's
    ``kl_div(..., reduction="batchmean")`` times ``T^2`` (``scale_by_t2: false`` drops the
    ``T^2``). The loss does not detach ``teacher``: whether a gradient reaches the teacher is
    decided by the compiler (a frozen teacher runs without gradients).

    ``-inf`` logits (masked classes) are exact: a class with ``p_t = 0`` adds exactly 0, with
    zero gradients, even where the student is ``-inf`` too; a class with ``p_t > 0`` and
    ``p_s = 0`` makes the loss ``+inf`` (the true KL; the runtime reports a non-finite loss).
    A row of only ``-inf`` logits is no distribution and gives NaN. An empty batch gives 0,
    connected to the inputs. fp16/bf16 logits are computed in float32.
    """

    Params = HintonKDParams
    inputs = {
        "student": Port("Logits", "B, C", "student class scores"),
        "teacher": Port("Logits", "B, C", "teacher class scores (same classes)"),
    }
    outputs = {"loss": Port("Scalar", None, "KD loss")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_losses import HintonKDLoss

        p = self.params
        return HintonKDLoss(p.temperature, scale_by_t2=p.scale_by_t2)
