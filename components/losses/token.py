"""Token-level losses for language models: forward/reverse KL, generalized JSD (GKD),
next-token cross-entropy, KL to cached top-k teacher log-probabilities, hidden-state matching.

All are normalised by the number of unmasked tokens and follow the runtime's token contract:
outputs ``loss`` (``sum / count`` of this micro-batch, for logging), ``sum`` (the sum of the
per-token terms over unmasked positions) and ``count`` (the number of unmasked positions, a
float). With ``accumulate: k > 1`` the runtime back-propagates the weighted ``sum``s and divides
the gradients by the total ``count`` of the k micro-batches, so splitting a batch into
micro-batches gives the same loss and gradients as the whole batch.

``mask`` (``[B, T]``, e.g. a data source's ``loss_mask``) selects the positions that count:
prompt and padding positions are 0. Without it every position counts. No position at all (an
empty batch, a mask with no true entry) gives ``loss = sum = count = 0``, connected to the
inputs (backward gives zero gradients).

``-inf`` logits (masked or padded vocabulary entries) are exact: an entry whose weight
probability is 0 adds exactly 0 and no gradient, also where both sides are ``-inf``; an entry
where the weight is positive but the other side's probability is 0 makes the KL ``+inf`` (the
true value; the runtime reports it). The JSD is always finite. A position whose logits are all
``-inf`` has no distribution (NaN); masked positions need not be meaningful but should hold
finite logits, since a NaN or infinite term there still yields a NaN gradient. fp16/bf16
logits are computed in float32.

The student's and the teacher's logits share the symbol ``vocab`` (``[B, T, vocab]``): a
teacher and a student with different vocabularies are a validation error naming both sizes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["TokenCE", "TokenFeature", "TokenJSD", "TokenKL", "TokenTopKKL"]

_OUT = {
    "loss": Port("Scalar", None, "sum / count over this micro-batch"),
    "sum": Port("Scalar", None, "sum of the per-token terms over unmasked positions"),
    "count": Port("Scalar", None, "number of unmasked positions (float)"),
}
_MASK = Port("Mask", "B, T", "1 = the position counts (loss_mask: not prompt, not padding)",
             optional=True)
_VOCAB_HINT = ("use one tokenizer for teacher and student, or sequence-level KD "
               "(lm_sampler + token_ce, see the llm_seqkd spec), or a vocabulary-alignment "
               "component between them")
_PAIR = {
    "student": Port("Logits", "B, T, vocab", "student next-token scores",
                    mismatch_hint=_VOCAB_HINT),
    "teacher": Port("Logits", "B, T, vocab", "teacher next-token scores over the same "
                    "vocabulary (same tokenizer)", mismatch_hint=_VOCAB_HINT),
    "mask": _MASK,
}


class _Softening(Params):
    temperature: float = Field(1.0, gt=0.0, le=1000.0, description="softmax temperature T")
    scale_by_t2: bool = Field(True, description="multiply by T^2 (no effect at T = 1)")


class TokenKLParams(_Softening):
    """Parameters of :class:`TokenKL`."""

    direction: Literal["forward", "reverse"] = Field(
        "forward", description="forward: KL(p_t || p_s) (mean-seeking, classic KD); "
        "reverse: KL(p_s || p_t) (mode-seeking, MiniLLM)")


@component("token_kl", roles=("loss",))
class TokenKL(Component):
    """KL divergence between teacher and student next-token distributions, per token.

    ``p = softmax(z / T)`` per position; forward ``KL(p_t || p_s) = sum_v p_t (log p_t -
    log p_s)``, reverse ``KL(p_s || p_t)``; times ``T^2`` unless ``scale_by_t2: false``;
    summed over unmasked positions and divided by their number. For ``p_s = [0.1, 0.9]`` and
    ``p_t = [0.9, 0.1]`` both directions give ``0.8 ln 9``.
    """

    Params = TokenKLParams
    inputs = dict(_PAIR)
    outputs = dict(_OUT)
    token_normalised = True

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_token import TokenKLLoss

        p = self.params
        return TokenKLLoss(p.direction, p.temperature, p.scale_by_t2)


class TokenJSDParams(_Softening):
    """Parameters of :class:`TokenJSD`."""

    beta: float = Field(0.5, ge=0.0, le=1.0, description="mixture weight of the teacher; "
                        "0 = forward KL, 1 = reverse KL (GKD convention)")


@component("token_jsd", roles=("loss",))
class TokenJSD(Component):
    """Generalized Jensen–Shannon divergence of GKD (Agarwal et al., 2024), per token.

    ``JSD(beta) = beta KL(p_t || m) + (1 - beta) KL(p_s || m)``, ``m = beta p_t +
    (1 - beta) p_s``. ``JSD(beta)/beta -> KL(p_t || p_s)`` as ``beta -> 0`` and
    ``JSD(beta)/(1 - beta) -> KL(p_s || p_t)`` as ``beta -> 1``; following the paper and TRL's
    ``GKDTrainer``, ``beta = 0`` is defined as the forward KL and ``beta = 1`` as the reverse
    KL. ``beta = 0.5`` is the symmetric JSD. Normalised by the unmasked token count.
    """

    Params = TokenJSDParams
    inputs = dict(_PAIR)
    outputs = dict(_OUT)
    token_normalised = True

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_token import TokenJSDLoss

        p = self.params
        return TokenJSDLoss(p.beta, p.temperature, p.scale_by_t2)


class TokenCEParams(Params):
    """Parameters of :class:`TokenCE`."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="uniform mixing")


@component("token_ce", roles=("loss",))
class TokenCE(Component):
    """Next-token cross-entropy ``-log softmax(z_t)[y_t]`` averaged over unmasked tokens.

    ``targets`` are the data source's next tokens (``targets[b, t]`` follows
    ``input_ids[b, t]``); ``exp(loss)`` over a held-out set is the perplexity.
    """

    Params = TokenCEParams
    inputs = {
        "logits": Port("Logits", "B, T, vocab", "next-token scores"),
        "targets": Port("Tokens", "B, T", "the next tokens (int64)"),
        "mask": _MASK,
    }
    outputs = dict(_OUT)
    token_normalised = True

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_token import TokenCELoss

        return TokenCELoss(self.params.label_smoothing)


class TokenTopKKLParams(_Softening):
    """Parameters of :class:`TokenTopKKL`."""

    missing_mass: Literal["renormalize", "other"] = Field(
        "renormalize", description="renormalize: the teacher's top-k probabilities are "
        "rescaled to sum to 1; other: the mass outside the top k is an extra bucket for "
        "both teacher and student")


@component("token_topk_kl", roles=("loss",))
class TokenTopKKL(Component):
    """Forward KL from cached top-k teacher log-probabilities (offline KD) to the student.

    The cache (``lm_topk_cache``) holds, per token, the teacher's k largest log-probabilities
    and their token ids. ``renormalize``: ``sum_{i in K} p~_i (log p~_i - log q_i)`` with
    ``p~ = p / sum_K p``; ``other``: a KL over the k tokens plus one bucket holding the rest,
    ``p_o = 1 - sum_K p``, ``q_o = 1 - sum_K q``. With k = the vocabulary size both equal
    ``token_kl`` (forward). Normalised by the unmasked token count.
    """

    Params = TokenTopKKLParams
    inputs = {
        "student": Port("Logits", "B, T, vocab", "student next-token scores"),
        "topk_logprobs": Port("LogProbs", "B, T, k", "teacher's top-k log-probabilities"),
        "topk_indices": Port("Tokens", "B, T, k", "their token ids"),
        "mask": _MASK,
    }
    outputs = dict(_OUT)
    token_normalised = True

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_token import TokenTopKKLLoss

        p = self.params
        return TokenTopKKLLoss(p.missing_mass, p.temperature, p.scale_by_t2)


class TokenFeatureParams(Params):
    """Parameters of :class:`TokenFeature`."""

    metric: Literal["mse", "cosine"] = Field(
        "mse", description="mse: mean over the hidden size of (s - t)^2 (MiniLM/TinyBERT "
        "hidden loss); cosine: 1 - cos(s, t) (DistilBERT)")


@component("token_hidden", roles=("loss",))
class TokenFeature(Component):
    """Hidden-state distillation per token: a student layer's states against a teacher's.

    Wire a tapped student layer (through a ``token_projector`` when the widths differ) and a
    tapped teacher layer, one node per pair of the layer mapping, e.g. student
    ``model.transformer.h.0`` to teacher ``model.transformer.h.1``. Normalised by the unmasked
    token count.
    """

    Params = TokenFeatureParams
    inputs = {
        "student": Port("Features", "B, T, H", "student hidden states (projected)"),
        "teacher": Port("Features", "B, T, H", "teacher hidden states"),
        "mask": _MASK,
    }
    outputs = dict(_OUT)
    token_normalised = True

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_token import TokenFeatureLoss

        return TokenFeatureLoss(self.params.metric)
