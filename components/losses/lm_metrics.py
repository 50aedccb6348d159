"""Evaluation-only measurements for language models (``kind: metric``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from dgraph.components.losses.token import token_ce

from dgraph.declare import Logits, Mask, Outputs, Scalar, Tokens, metric

__all__ = ["lm_perplexity"]


def _perplexity_of_the_set(totals: Mapping[str, float], examples: int = 0) -> dict[str, float]:
    """Final values from ``sum`` and ``count`` added up over every eval batch."""
    nll = totals.get("sum", 0.0) / max(totals.get("count", 0.0), 1.0)
    return {"perplexity": math.exp(min(nll, 700.0)), "nll": nll}


@metric("lm_perplexity", summarize=_perplexity_of_the_set)
def lm_perplexity(
    logits: Logits("B, T, vocab", "next-token scores"),
    targets: Tokens("B, T", "the next tokens"),
    mask: Mask("B, T", "1 = the position counts") = None,
) -> Outputs(
    perplexity=Scalar(None, "exp(nll) of this batch"),
    nll=Scalar(None, "mean next-token negative log-likelihood (nats)"),
    sum=Scalar(None, "summed NLL over unmasked tokens"),
    count=Scalar(None, "number of unmasked tokens"),
):
    """Held-out perplexity: ``exp(total NLL / total tokens)`` over the unmasked positions.

    Per batch it outputs ``sum`` (the summed next-token NLL), ``count`` (the number of
    unmasked tokens), ``nll = sum / count`` and ``perplexity = exp(nll)``. Over a whole eval
    set, ``sum`` and ``count`` are added up across batches and then reduced: the perplexity
    of the set is ``exp(total sum / total count)``, not the mean of the batches'
    perplexities. A batch with no unmasked token gives ``sum = count = nll = 0`` and
    ``perplexity = 1``. A ``-inf`` logit at a target token gives an infinite NLL (the true
    one); elsewhere ``-inf`` logits are exact.
    """
    out = token_ce(logits, targets, mask, label_smoothing=0.0)
    nll = out["loss"]
    return {"perplexity": nll.exp(), "nll": nll, "sum": out["sum"], "count": out["count"]}
