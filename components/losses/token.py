"""Token-level losses for language models: forward/reverse KL, generalized JSD (GKD),
next-token cross-entropy, KL to cached top-k teacher log-probabilities, hidden-state matching.

All are normalised by the number of unmasked tokens and follow the runtime's token contract
(declared ``token_normalised``): outputs ``loss`` (``sum / count`` of this micro-batch, for
logging), ``sum`` (the sum of the per-token terms over unmasked positions) and ``count`` (the
number of unmasked positions, a float). With ``accumulate: k > 1`` the runtime back-propagates
the weighted ``sum``s and divides the gradients by the total ``count`` of the k micro-batches,
so splitting a batch into micro-batches gives the same loss and gradients as the whole batch.

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

from dgraph.declare import Features, Logits, LogProbs, Mask, Outputs, Scalar, Tokens, loss, param

__all__ = ["masked_reduce", "token_ce", "token_hidden", "token_jsd", "token_kl",
           "token_topk_kl"]

_OUT = Outputs(
    loss=Scalar(None, "sum / count over this micro-batch"),
    sum=Scalar(None, "sum of the per-token terms over unmasked positions"),
    count=Scalar(None, "number of unmasked positions (float)"),
)
_MASK = Mask("B, T", "1 = the position counts (loss_mask: not prompt, not padding)")
_VOCAB_HINT = ("use one tokenizer for teacher and student, or sequence-level KD "
               "(lm_sampler + token_ce, see the llm_seqkd spec), or a vocabulary-alignment "
               "component between them")
_STUDENT = Logits("B, T, vocab", "student next-token scores", mismatch_hint=_VOCAB_HINT)
_TEACHER = Logits("B, T, vocab", "teacher next-token scores over the same vocabulary (same "
                  "tokenizer)", mismatch_hint=_VOCAB_HINT)
_TEMPERATURE_DOC = "softmax temperature T"
_T2_DOC = "multiply by T^2 (no effect at T = 1)"


def masked_reduce(per_token, mask):  # torch tensors
    """``{"loss", "sum", "count"}`` of a ``[B, T]`` tensor over the positions in ``mask``.

    Positions outside the mask are selected away (``where``, not a product), so an infinite
    or NaN term there changes nothing in the value. Its gradient is then 0 as well, except
    where the term itself has no finite derivative (an infinite KL, a row of only ``-inf``
    logits): give masked positions finite logits, e.g. 0, rather than ``-inf`` everywhere.
    """
    import torch

    if mask is None:
        total = per_token.sum()
        count = torch.tensor(float(per_token.numel()), device=per_token.device)
    else:
        if mask.shape != per_token.shape:
            raise ValueError(f"mask {list(mask.shape)} must match the tokens "
                             f"{list(per_token.shape)}")
        keep = mask.bool()
        total = torch.where(keep, per_token, torch.zeros_like(per_token)).sum()
        count = keep.sum().to(per_token.dtype)
    return {"loss": total / count.clamp_min(1.0), "sum": total, "count": count}


def _log_probs(logits, temperature: float):  # torch tensors
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32

    z = at_least_float32(logits)
    if temperature != 1.0:  # a constant of the node: no data-dependent branch
        z = z / temperature
    return F.log_softmax(z, dim=-1)


def _check_pair(student, teacher) -> None:  # torch tensors
    if student.shape != teacher.shape:
        vs, vt = student.shape[-1], teacher.shape[-1]
        if student.shape[:-1] == teacher.shape[:-1] and vs != vt:
            raise ValueError(
                f"student vocabulary {vs} != teacher vocabulary {vt}: token-level KD needs "
                "one tokenizer for both (use the teacher's tokenizer for the student), or "
                "sequence-level KD (lm_sampler), or a vocabulary-alignment component")
        raise ValueError(f"student logits {list(student.shape)} and teacher logits "
                         f"{list(teacher.shape)} must have the same shape")


@loss("token_kl", token_normalised=True)
def token_kl(
    student: _STUDENT, teacher: _TEACHER, mask: _MASK = None, *,
    temperature: float = param(1.0, gt=0.0, le=1000.0, doc=_TEMPERATURE_DOC),
    scale_by_t2: bool = param(True, doc=_T2_DOC),
    direction: Literal["forward", "reverse"] = param(
        "forward", doc="forward: KL(p_t || p_s) (mean-seeking, classic KD); "
        "reverse: KL(p_s || p_t) (mode-seeking, MiniLLM)"),
) -> _OUT:
    """KL divergence between teacher and student next-token distributions, per token.

    ``p = softmax(z / T)`` per position; forward ``KL(p_t || p_s) = sum_v p_t (log p_t -
    log p_s)``, reverse ``KL(p_s || p_t)``; times ``T^2`` unless ``scale_by_t2: false``;
    summed over unmasked positions and divided by their number. For ``p_s = [0.1, 0.9]`` and
    ``p_t = [0.9, 0.1]`` both directions give ``0.8 ln 9``.
    """
    from dgraph.components.losses._divergence import kl_div_terms

    _check_pair(student, teacher)
    log_s, log_t = _log_probs(student, temperature), _log_probs(teacher, temperature)
    per = kl_div_terms(log_t, log_s) if direction == "forward" else kl_div_terms(log_s, log_t)
    return masked_reduce(per * (temperature**2 if scale_by_t2 else 1.0), mask)


@loss("token_jsd", token_normalised=True)
def token_jsd(
    student: _STUDENT, teacher: _TEACHER, mask: _MASK = None, *,
    temperature: float = param(1.0, gt=0.0, le=1000.0, doc=_TEMPERATURE_DOC),
    scale_by_t2: bool = param(True, doc=_T2_DOC),
    beta: float = param(0.5, ge=0.0, le=1.0, doc="mixture weight of the teacher; 0 = forward "
                        "KL, 1 = reverse KL (GKD convention)"),
) -> _OUT:
    """Generalized Jensen–Shannon divergence of GKD (Agarwal et al., 2024), per token.

    ``JSD(beta) = beta KL(p_t || m) + (1 - beta) KL(p_s || m)``, ``m = beta p_t +
    (1 - beta) p_s``. ``JSD(beta)/beta -> KL(p_t || p_s)`` as ``beta -> 0`` and
    ``JSD(beta)/(1 - beta) -> KL(p_s || p_t)`` as ``beta -> 1``; following the paper and TRL's
    ``GKDTrainer``, ``beta = 0`` is defined as the forward KL and ``beta = 1`` as the reverse
    KL. ``beta = 0.5`` is the symmetric JSD. Normalised by the unmasked token count.
    """
    from dgraph.components.losses._divergence import generalized_jsd

    _check_pair(student, teacher)
    per = generalized_jsd(_log_probs(student, temperature), _log_probs(teacher, temperature),
                          float(beta))
    return masked_reduce(per * (temperature**2 if scale_by_t2 else 1.0), mask)


@loss("token_ce", token_normalised=True)
def token_ce(
    logits: Logits("B, T, vocab", "next-token scores"),
    targets: Tokens("B, T", "the next tokens (int64)"),
    mask: _MASK = None, *,
    label_smoothing: float = param(0.0, ge=0.0, lt=1.0, doc="uniform mixing"),
) -> _OUT:
    """Next-token cross-entropy ``-log softmax(z_t)[y_t]`` averaged over unmasked tokens.

    ``targets`` are the data source's next tokens (``targets[b, t]`` follows
    ``input_ids[b, t]``); ``exp(loss)`` over a held-out set is the perplexity.
    """
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32

    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {list(logits.shape)} and targets {list(targets.shape)} "
                         "must agree on [B, T]")
    per = F.cross_entropy(at_least_float32(logits).flatten(0, -2), targets.reshape(-1).long(),
                          reduction="none", label_smoothing=label_smoothing)
    return masked_reduce(per.view(targets.shape), mask)


def _other_needs_t1(params) -> None:  # the generated parameter model
    if params.missing_mass == "other" and params.temperature != 1.0:
        raise ValueError("missing_mass 'other' needs temperature 1 (the cached mass outside "
                         "the top k cannot be re-tempered)")


@loss("token_topk_kl", token_normalised=True, check=_other_needs_t1)
def token_topk_kl(
    student: Logits("B, T, vocab", "student next-token scores"),
    topk_logprobs: LogProbs("B, T, k", "teacher's top-k log-probabilities"),
    topk_indices: Tokens("B, T, k", "their token ids"),
    mask: _MASK = None, *,
    temperature: float = param(1.0, gt=0.0, le=1000.0, doc=_TEMPERATURE_DOC),
    scale_by_t2: bool = param(True, doc=_T2_DOC),
    missing_mass: Literal["renormalize", "other"] = param(
        "renormalize", doc="renormalize: the teacher's top-k probabilities are rescaled to sum "
        "to 1; other: the mass outside the top k is an extra bucket for both teacher and "
        "student"),
) -> _OUT:
    """Forward KL from cached top-k teacher log-probabilities (offline KD) to the student.

    The cache (``lm_topk_cache``) holds, per token, the teacher's k largest log-probabilities
    and their token ids. ``renormalize``: ``sum_{i in K} p~_i (log p~_i - log q_i)`` with
    ``p~ = p / sum_K p``; ``other``: a KL over the k tokens plus one bucket holding the rest,
    ``p_o = 1 - sum_K p``, ``q_o = 1 - sum_K q``. With k = the vocabulary size both equal
    ``token_kl`` (forward). The temperature softens the cached log-probabilities (``log p /
    T``, renormalised over the top k; only with ``renormalize``). Normalised by the unmasked
    token count.
    """
    import math

    import torch
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import (
        at_least_float32,
        kl_div_terms,
        kl_with_probs,
    )

    if topk_logprobs.shape != topk_indices.shape or \
            topk_logprobs.shape[:-1] != student.shape[:-1]:
        raise ValueError(f"student {list(student.shape)}, topk_logprobs "
                         f"{list(topk_logprobs.shape)} and topk_indices "
                         f"{list(topk_indices.shape)} must agree on [B, T]")
    log_q_all = _log_probs(student, temperature)
    index = topk_indices.long()
    if index.numel() and not index.is_meta and int(index.max()) >= student.shape[-1]:
        raise ValueError(f"cached teacher token ids reach {int(index.max())} but the student "
                         f"vocabulary has {student.shape[-1]} ids: the cache was written with "
                         "another tokenizer")
    log_q = log_q_all.gather(-1, index)
    log_p = at_least_float32(topk_logprobs)
    if missing_mass == "renormalize":
        log_p = F.log_softmax(log_p / temperature, dim=-1)
        per = kl_div_terms(log_p, log_q)
    else:
        tiny = torch.finfo(log_q_all.dtype).tiny
        p = log_p.exp()
        # The teacher's mass outside its top k is known only as 1 - sum (the cache holds
        # nothing else), so it carries the cache's rounding.
        p_other = (1.0 - p.sum(-1)).clamp_min(0.0)
        # The student's is summed directly in log space, over the tokens outside the top k:
        # 1 - sum_K q cancels in float32 once the student puts nearly all its mass in the top
        # k. The extra entry log(tiny) floors q_other at the smallest normal float, so that
        # rounding noise in p_other against a student with nothing outside (k = vocabulary
        # size) stays a negligible finite term, not +inf.
        floor = log_q_all.new_full((*log_q_all.shape[:-1], 1), math.log(tiny))
        outside = torch.cat([log_q_all, floor], dim=-1)
        outside.scatter_(-1, index, float("-inf"))
        log_q_other = torch.logsumexp(outside, dim=-1)
        log_p_other = torch.where(p_other > 0, p_other, 1.0).log()
        other = p_other * torch.where(p_other > 0, log_p_other - log_q_other, 0.0)
        per = kl_with_probs(p, log_p, log_q) + other
    return masked_reduce(per * (temperature**2 if scale_by_t2 else 1.0), mask)


@loss("token_hidden", token_normalised=True)
def token_hidden(
    student: Features("B, T, H", "student hidden states (projected)"),
    teacher: Features("B, T, H", "teacher hidden states"),
    mask: _MASK = None, *,
    metric: Literal["mse", "cosine"] = param(
        "mse", doc="mse: mean over the hidden size of (s - t)^2 (MiniLM/TinyBERT hidden "
        "loss); cosine: 1 - cos(s, t) (DistilBERT)"),
) -> _OUT:
    """Hidden-state distillation per token: a student layer's states against a teacher's.

    ``mse``: ``mean_h (s - t)^2`` per token; ``cosine``: ``1 - cos(s, t)``. Wire a tapped
    student layer (through a ``token_projector`` when the widths differ) and a tapped teacher
    layer, one node per pair of the layer mapping, e.g. student ``model.transformer.h.0`` to
    teacher ``model.transformer.h.1``. Normalised by the unmasked token count.
    """
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32

    if student.shape != teacher.shape:
        raise ValueError(f"student hidden states {list(student.shape)} and teacher "
                         f"{list(teacher.shape)} differ: put a token_projector in front of the "
                         "student")
    s, t = at_least_float32(student), at_least_float32(teacher)
    if metric == "mse":
        per = (s - t).pow(2).mean(-1)
    else:
        per = 1.0 - F.cosine_similarity(s, t, dim=-1)
    return masked_reduce(per, mask)
