"""Supervised cross-entropy on class scores, with an optional mask for low-label settings.

Hinton et al.'s logit distillation (``hinton_kd``) is a preset of ``kl_div``, in ``kl.py``.
"""

from __future__ import annotations

from dgraph.declare import Labels, Logits, Mask, Scalar, loss, param

__all__ = ["cross_entropy"]

_SUM = 2  # torch's reduction code for "sum" (none 0, mean 1)


@loss(cuda_graph_safe=True)
def cross_entropy(
    logits: Logits("B, C", "class scores"),
    target: Labels("B", "class indices (int64); negative = no label"),
    mask: Mask("B", "which examples have a label (optional)") = None, *,
    label_smoothing: float = param(0.0, ge=0.0, lt=1.0,
                                   doc="mix the one-hot target with uniform by this amount"),
) -> Scalar(None, "mean cross-entropy over labelled examples"):
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
    import torch

    if logits.dim() != 2 or target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"cross_entropy expects logits [B, C] and target [B]; found logits "
                         f"{list(logits.shape)} and target {list(target.shape)}")
    if logits.dtype.itemsize < 4 and logits.is_floating_point():  # at_least_float32
        logits = logits.float()
    target = target.long()
    if mask is None and logits.shape[0] > 0:
        # The fast path (one kernel each way): every target is a label. Negative targets are
        # still ignored, but a batch with none left would give NaN: wire `mask`.
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=-1,
                                                 label_smoothing=label_smoothing)
    if mask is not None:
        if mask.shape != target.shape:
            mask = mask.reshape(target.shape)
        target = torch.where(mask.bool(), target, -1)
    # Summed, then divided by the number of labelled examples: the same numbers as PyTorch's
    # mean reduction, but 0 rather than NaN for a batch with no label at all.
    if label_smoothing == 0.0:
        # nll_loss's own count of the targets it did not ignore (its "total weight") is the
        # divisor: no separate count; the same numbers as the sum over the count below.
        total, count = torch.ops.aten.nll_loss_forward(
            torch.log_softmax(logits, dim=1), target, None, _SUM, -1)
        return total / count.clamp_min(1)
    total = torch.nn.functional.cross_entropy(logits, target, reduction="sum", ignore_index=-1,
                                              label_smoothing=label_smoothing)
    return total / (target >= 0).sum().clamp_min(1).to(total.dtype)
