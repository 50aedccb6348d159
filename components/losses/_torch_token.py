"""The torch modules behind the token-level losses (imported only when a graph is built).

Every module returns ``{"loss": sum / count, "sum": sum, "count": count}``: ``sum`` adds the
per-token terms over positions with ``mask`` true and ``count`` is the number of such
positions (a float). Under gradient accumulation the runtime back-propagates the ``sum``s and
divides by the total ``count``, so the result does not depend on how a batch is split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
    """``{"loss", "sum", "count"}`` of a ``[B, T]`` tensor over the positions in ``mask``."""
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
    """``KL(p || q)`` per position over the last dimension (``0 log 0 = 0``)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def generalized_jsd(log_s: torch.Tensor, log_t: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD of the GKD paper (Agarwal et al., 2024) per position.

    ``JSD(beta) = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)`` with the mixture
    ``m = beta * p_t + (1 - beta) * p_s``. Since ``JSD(beta) / beta -> KL(p_t || p_s)`` as
    ``beta -> 0`` and ``JSD(beta) / (1 - beta) -> KL(p_s || p_t)`` as ``beta -> 1``, the
    endpoints are defined as those limits, as in TRL's GKD trainer: ``beta = 0`` is the
    forward KL and ``beta = 1`` the reverse KL.
    """
    if beta <= 0.0:
        return token_kl(log_t, log_s)
    if beta >= 1.0:
        return token_kl(log_s, log_t)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta),
                                         log_s + math.log(1.0 - beta)]), dim=0)
    return beta * token_kl(log_t, log_m) + (1.0 - beta) * token_kl(log_s, log_m)


class _Softened(nn.Module):
    def __init__(self, temperature: float = 1.0, scale_by_t2: bool = True) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.scale = self.temperature ** 2 if scale_by_t2 else 1.0

    def _log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits.float() / self.temperature, dim=-1)


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
        per = F.cross_entropy(logits.float().flatten(0, -2), targets.reshape(-1).long(),
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
        log_p = topk_logprobs.float()
        if self.missing_mass == "renormalize":
            log_p = F.log_softmax(log_p / self.temperature, dim=-1)
            per = token_kl(log_p, log_q)
        else:
            eps = torch.finfo(log_p.dtype).tiny
            p_other = (1.0 - log_p.exp().sum(-1)).clamp_min(0.0)
            q_other = (1.0 - log_q.exp().sum(-1)).clamp_min(eps)
            other = torch.where(p_other > 0, p_other * (p_other.clamp_min(eps).log()
                                                        - q_other.log()),
                                torch.zeros_like(p_other))
            per = token_kl(log_p, log_q) + other
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
        s, t = student.float(), teacher.float()
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
