"""``weighted_token_ce``: next-token cross-entropy with one weight per example (the weights a
generator wrote for its kept outputs, served by ``generated_pairs`` as ``weight``).

    L = sum_b w_b sum_t m_bt CE_bt / sum_b w_b sum_t m_bt

a weighted mean over the unmasked tokens (``m`` = ``mask``): with all weights 1 it is
``token_ce``. It follows the token contract (``loss``, ``sum`` = the weighted sum, ``count`` =
the weighted token count), so gradient accumulation over micro-batches stays exact. No weight
on any unmasked token gives ``loss = sum = count = 0``.
"""

from __future__ import annotations

from dgraph.declare import Logits, Mask, Outputs, Scalar, Tensor, Tokens, loss

__all__ = ["weighted_token_ce"]


@loss("weighted_token_ce", token_normalised=True)
def weighted_token_ce(
    logits: Logits("B, T, vocab", "next-token scores"),
    targets: Tokens("B, T", "the next tokens (int64)"),
    weight: Tensor("B", "each example's weight (>= 0)"),
    mask: Mask("B, T", "1 = the position counts (loss_mask)") = None,
) -> Outputs(loss=Scalar(None, "weighted sum / weighted count over this micro-batch"),
             sum=Scalar(None, "sum of w_b * CE over unmasked positions"),
             count=Scalar(None, "sum of w_b over unmasked positions (float)")):
    """Token cross-entropy averaged over unmasked tokens, each example weighted by ``weight``."""
    import torch
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32

    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {list(logits.shape)} and targets {list(targets.shape)} "
                         "must agree on [B, T]")
    if weight.shape != targets.shape[:1]:
        raise ValueError(f"weight {list(weight.shape)} must hold one value per example "
                         f"[{targets.shape[0]}]")
    per = F.cross_entropy(at_least_float32(logits).flatten(0, -2), targets.reshape(-1).long(),
                          reduction="none").view(targets.shape)
    keep = torch.ones_like(per, dtype=torch.bool) if mask is None else mask.bool()
    w = weight.to(per.dtype).unsqueeze(1).expand_as(per)
    w = torch.where(keep, w, torch.zeros_like(w))
    total = torch.where(w > 0, per * w, torch.zeros_like(per)).sum()
    count = w.sum()
    # With no weighted token, total is 0 and so is the loss (no data-dependent branch).
    return {"loss": total / count.clamp_min(1e-12), "sum": total, "count": count}
