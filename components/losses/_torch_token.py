"""The torch modules behind the token-level losses (imported only when a graph is built).

Every module returns ``{"loss": sum / count, "sum": sum, "count": count}``: ``sum`` adds the
per-token terms over positions with ``mask`` true and ``count`` is the number of such
positions (a float). Under gradient accumulation the runtime back-propagates the ``sum``s and
divides by the total ``count``, so the result does not depend on how a batch is split. No
position at all (an empty batch, or a mask with no true entry) gives ``loss = sum = count = 0``,
still connected to the inputs (backward gives zero gradients). Narrow floats (fp16, bf16) are
computed in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from dgraph.components.losses._torch_divergence import (
    at_least_float32,
    generalized_jsd,
    kl_div_terms,
    kl_with_probs,
)
from torch import nn

__all__ = [
    "PerplexityModule",
    "TokenCELoss",
    "TokenFeatureLoss",
    "TokenJSDLoss",
    "TokenKLLoss",
    "TokenTopKKLLoss",
    "generalized_jsd",
    "masked_reduce",
    "token_kl",
]


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        vs, vt = student.shape[-1], teacher.shape[-1]
        if student.shape[:-1] == teacher.shape[:-1] and vs != vt:
            raise ValueError(
                f"student vocabulary {vs} != teacher vocabulary {vt}: token-level KD needs "
                "one tokenizer for both (use the teacher's tokenizer for the student), or "
                "sequence-level KD (lm_sampler), or a vocabulary-alignment component")
        raise ValueError(f"student logits {list(student.shape)} and teacher logits "
                         f"{list(teacher.shape)} must have the same shape")


def masked_reduce(per_token: torch.Tensor, mask: torch.Tensor | None
                  ) -> dict[str, torch.Tensor]:
    """``{"loss", "sum", "count"}`` of a ``[B, T]`` tensor over the positions in ``mask``.

    Positions outside the mask are selected away (``where``, not a product), so an infinite
    or NaN term there changes nothing in the value. Its gradient is then 0 as well, except
    where the term itself has no finite derivative (an infinite KL, a row of only ``-inf``
    logits): give masked positions finite logits, e.g. 0, rather than ``-inf`` everywhere.
    """
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


def token_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per position over the last dimension (``0 log 0 = 0``, exactly: a zero
    ``p`` contributes neither value nor gradient; ``p > 0`` with ``q = 0`` gives ``+inf``)."""
    return kl_div_terms(log_p, log_q)


class _Softened(nn.Module):
    def __init__(self, temperature: float = 1.0, scale_by_t2: bool = True) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.scale = self.temperature ** 2 if scale_by_t2 else 1.0

    def _log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        z = at_least_float32(logits)
        if self.temperature != 1.0:  # a constant of the module: no data-dependent branch
            z = z / self.temperature
        return F.log_softmax(z, dim=-1)


class TokenKLLoss(_Softened):
    """Forward ``KL(p_t || p_s)`` or reverse ``KL(p_s || p_t)`` per token, masked."""

    def __init__(self, direction: str = "forward", temperature: float = 1.0,
                 scale_by_t2: bool = True) -> None:
        super().__init__(temperature, scale_by_t2)
        self.direction = direction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        _check_pair(student, teacher)
        log_s, log_t = self._log_probs(student), self._log_probs(teacher)
        per = token_kl(log_t, log_s) if self.direction == "forward" else token_kl(log_s, log_t)
        return masked_reduce(per * self.scale, mask)


class TokenJSDLoss(_Softened):
    """Generalized Jensen–Shannon divergence with weight ``beta``, per token, masked."""

    def __init__(self, beta: float = 0.5, temperature: float = 1.0,
                 scale_by_t2: bool = True) -> None:
        super().__init__(temperature, scale_by_t2)
        self.beta = float(beta)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        _check_pair(student, teacher)
        per = generalized_jsd(self._log_probs(student), self._log_probs(teacher), self.beta)
        return masked_reduce(per * self.scale, mask)


class TokenCELoss(nn.Module):
    """Next-token cross-entropy ``-log softmax(z_t)[y_t]`` over the masked positions."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if logits.shape[:-1] != targets.shape:
            raise ValueError(f"logits {list(logits.shape)} and targets {list(targets.shape)} "
                             "must agree on [B, T]")
        per = F.cross_entropy(at_least_float32(logits).flatten(0, -2), targets.reshape(-1).long(),
                              reduction="none", label_smoothing=self.label_smoothing)
        return masked_reduce(per.view(targets.shape), mask)


class TokenTopKKLLoss(_Softened):
    """Forward KL from cached top-k teacher log-probabilities to the student.

    ``renormalize``: the teacher is renormalised over its top k, ``p~_i = p_i / sum_K p``,
    and ``loss = sum_{i in K} p~_i (log p~_i - log q_i)`` with the student's full softmax.
    ``other``: the missing mass goes to an extra bucket for both distributions,
    ``p_o = 1 - sum_K p_i``, ``q_o = 1 - sum_K q_i``, and the KL runs over k + 1 buckets.
    With ``k`` = the vocabulary size both equal the full forward KL. The temperature
    softens the cached log-probabilities (``log p / T``, renormalised over the top k; only
    with ``renormalize``).
    """

    def __init__(self, missing_mass: str = "renormalize", temperature: float = 1.0,
                 scale_by_t2: bool = True) -> None:
        super().__init__(temperature, scale_by_t2)
        if missing_mass == "other" and temperature != 1.0:
            raise ValueError("missing_mass 'other' needs temperature 1 (the cached mass "
                             "outside the top k cannot be re-tempered)")
        self.missing_mass = missing_mass

    def forward(self, student: torch.Tensor, topk_logprobs: torch.Tensor,
                topk_indices: torch.Tensor, mask: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        if topk_logprobs.shape != topk_indices.shape or \
                topk_logprobs.shape[:-1] != student.shape[:-1]:
            raise ValueError(f"student {list(student.shape)}, topk_logprobs "
                             f"{list(topk_logprobs.shape)} and topk_indices "
                             f"{list(topk_indices.shape)} must agree on [B, T]")
        log_q_all = self._log_probs(student)
        index = topk_indices.long()
        if index.numel() and not index.is_meta and int(index.max()) >= student.shape[-1]:
            raise ValueError(f"cached teacher token ids reach {int(index.max())} but the "
                             f"student vocabulary has {student.shape[-1]} ids: the cache was "
                             "written with another tokenizer")
        log_q = log_q_all.gather(-1, index)
        log_p = at_least_float32(topk_logprobs)
        if self.missing_mass == "renormalize":
            log_p = F.log_softmax(log_p / self.temperature, dim=-1)
            per = token_kl(log_p, log_q)
        else:
            tiny = torch.finfo(log_q_all.dtype).tiny
            p = log_p.exp()
            # The teacher's mass outside its top k is known only as 1 - sum (the cache holds
            # nothing else), so it carries the cache's rounding.
            p_other = (1.0 - p.sum(-1)).clamp_min(0.0)
            # The student's is summed directly in log space, over the tokens outside the top
            # k: 1 - sum_K q cancels in float32 once the student puts nearly all its mass in
            # the top k. The extra entry log(tiny) floors q_other at the smallest normal float
            # (as before), so that rounding noise in p_other against a student with nothing
            # outside (k = vocabulary size) stays a negligible finite term, not +inf.
            floor = log_q_all.new_full((*log_q_all.shape[:-1], 1), math.log(tiny))
            outside = torch.cat([log_q_all, floor], dim=-1)
            outside.scatter_(-1, index, float("-inf"))
            log_q_other = torch.logsumexp(outside, dim=-1)
            log_p_other = torch.where(p_other > 0, p_other, 1.0).log()
            other = p_other * torch.where(p_other > 0, log_p_other - log_q_other, 0.0)
            per = kl_with_probs(p, log_p, log_q) + other
        return masked_reduce(per * self.scale, mask)


class TokenFeatureLoss(nn.Module):
    """Hidden-state matching per token: ``mean_h (s - t)^2`` or ``1 - cos(s, t)``, masked."""

    def __init__(self, metric: str = "mse") -> None:
        super().__init__()
        self.metric = metric

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if student.shape != teacher.shape:
            raise ValueError(f"student hidden states {list(student.shape)} and teacher "
                             f"{list(teacher.shape)} differ: put a token_projector in front "
                             "of the student")
        s, t = at_least_float32(student), at_least_float32(teacher)
        if self.metric == "mse":
            per = (s - t).pow(2).mean(-1)
        else:
            per = 1.0 - F.cosine_similarity(s, t, dim=-1)
        return masked_reduce(per, mask)


class PerplexityModule(nn.Module):
    """``{"perplexity", "nll", "sum", "count"}`` of next-token predictions."""

    def __init__(self) -> None:
        super().__init__()
        self.ce = TokenCELoss()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.ce(logits, targets, mask)
        nll = out["loss"]
        return {"perplexity": nll.exp(), "nll": nll, "sum": out["sum"], "count": out["count"]}
