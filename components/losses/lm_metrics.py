"""Evaluation-only measurements for language models (``kind: metric``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, NoParams, component

__all__ = ["LMPerplexity"]


@component("lm_perplexity", roles=("metric",))
class LMPerplexity(Component):
    """Held-out perplexity: ``exp(total NLL / total tokens)`` over the unmasked positions.

    Per batch it outputs ``sum`` (the summed next-token NLL), ``count`` (the number of
    unmasked tokens), ``nll = sum / count`` and ``perplexity = exp(nll)``. Over a whole eval
    set, sum ``sum`` and ``count`` across batches and call :meth:`summarize`: the perplexity
    of the set is not the mean of the batches' perplexities. A batch with no unmasked token
    gives ``sum = count = nll = 0`` and ``perplexity = 1``. A ``-inf`` logit at a target token
    gives an infinite NLL (the true one); elsewhere ``-inf`` logits are exact.
    """

    Params = NoParams
    inputs = {
        "logits": Port("Logits", "B, T, vocab", "next-token scores"),
        "targets": Port("Tokens", "B, T", "the next tokens"),
        "mask": Port("Mask", "B, T", "1 = the position counts", optional=True),
    }
    outputs = {
        "perplexity": Port("Scalar", None, "exp(nll) of this batch"),
        "nll": Port("Scalar", None, "mean next-token negative log-likelihood (nats)"),
        "sum": Port("Scalar", None, "summed NLL over unmasked tokens"),
        "count": Port("Scalar", None, "number of unmasked tokens"),
    }

    def summarize(self, totals: Mapping[str, float], examples: int = 0) -> dict[str, float]:
        """Final values from ``sum`` and ``count`` added up over every eval batch."""
        nll = totals.get("sum", 0.0) / max(totals.get("count", 0.0), 1.0)
        return {"perplexity": math.exp(min(nll, 700.0)), "nll": nll}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_token import PerplexityModule

        return PerplexityModule()
