"""``ranking_agreement``: CycleAlign-style agreement between a black-box teacher's ranking of
candidate responses and a model's own likelihood ranking, as a filter.

CycleAlign (Hong et al., 2023) distils from a black-box LLM by letting it rank responses and
keeping the rankings on which it and the white-box model agree. Here, per example, the model
named by ``model`` (usually the student, read by reference, without gradients) scores each
candidate by its mean token log-likelihood over the candidate's response tokens

    s_c = (1 / |R_c|) sum_{t in R_c} log p(y_t | y_<t),

and the agreement with the teacher's ranks ``r`` (0 = best) is Kendall's tau-a over the
``C (C - 1) / 2`` candidate pairs

    tau = (1 / (C (C - 1) / 2)) sum_{i < j} sign(r_j - r_i) * sign(s_i - s_j)

(ties count 0). Examples with ``tau >= threshold`` are kept: ``keep`` ``[B]``, and the data's
``mask`` ``[B, T]`` with the dropped examples' rows cleared (feed it to ``token_ce`` or
``token_topk_kl``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dgraph.declare import Mask, NodeRef, Outputs, Tensor, Tokens, param, sampler

if TYPE_CHECKING:
    import torch

__all__ = ["candidate_scores", "kendall_tau", "ranking_agreement"]


def kendall_tau(teacher_rank: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-a ``[B]`` between ranks ``[B, C]`` (0 = best) and scores ``[B, C]``
    (higher = better); ties count 0."""
    import torch

    c = teacher_rank.shape[-1]
    if c < 2:
        return torch.ones(teacher_rank.shape[:-1], device=scores.device)
    rank = teacher_rank.to(scores.dtype)
    teacher_says = torch.sign(rank.unsqueeze(-2) - rank.unsqueeze(-1))   # [b, i, j]: r_j - r_i
    model_says = torch.sign(scores.unsqueeze(-1) - scores.unsqueeze(-2))  # s_i - s_j
    upper = torch.ones(c, c, dtype=scores.dtype, device=scores.device).triu(1)
    agree = (teacher_says * model_says * upper).sum((-2, -1))
    return agree / (c * (c - 1) / 2)


def candidate_scores(model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor,
                     attention: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean token log-likelihood ``[B, C]`` of each candidate's masked targets under
    ``model`` (a causal LM returning ``{"logits"}``); 0 for a candidate with no tokens."""
    import torch

    b, c, t = ids.shape
    with torch.no_grad():
        logits = model(input_ids=ids.reshape(b * c, t),
                       attention_mask=attention.reshape(b * c, t))["logits"].float()
        logp = torch.log_softmax(logits, -1).gather(-1, targets.reshape(b * c, t, 1))[..., 0]
        mask = loss_mask.reshape(b * c, t).bool()
        total = torch.where(mask, logp, torch.zeros_like(logp)).sum(-1)
        mean = total / mask.sum(-1).clamp_min(1)
    return mean.view(b, c)


@sampler("ranking_agreement")
def ranking_agreement(
    cand_ids: Tokens("B, C, T", "candidates: prompt + response tokens"),
    cand_targets: Tokens("B, C, T", "their next tokens"),
    cand_attention: Mask("B, C, T", "1 = real token"),
    cand_loss_mask: Mask("B, C, T", "1 = a response token is predicted"),
    teacher_rank: Tensor("B, C", "the black-box teacher's rank of each candidate (0 = best)"),
    mask: Mask("B, S", "the data's loss mask, filtered by the agreement"),
    *,
    model: NodeRef = param(doc="the model whose likelihoods rank the candidates (the "
                           "student: CycleAlign's white-box model)"),
    threshold: float = param(0.0, ge=-1.0, le=1.0, doc="keep examples whose Kendall tau "
                             "is at least this"),
) -> Outputs(
    tau=Tensor("B", "Kendall's tau between the teacher's and the model's ranking"),
    keep=Mask("B", "1 = the rankings agree (tau >= threshold)"),
    scores=Tensor("B, C", "the model's mean token log-likelihood of each candidate"),
    mask=Mask("B, S", "the input mask with the dropped examples' rows cleared"),
):
    """Keep the examples on which the black-box ranking and the model's agree (CycleAlign).

    Runs ``model`` without gradients on the ``B * C`` candidates; see the module's
    documentation for the score and Kendall's tau.
    """
    scores = candidate_scores(model, cand_ids, cand_targets, cand_attention, cand_loss_mask)
    tau = kendall_tau(teacher_rank, scores)
    keep = tau >= threshold - 1e-9
    return {"tau": tau, "keep": keep, "scores": scores,
            "mask": mask.bool() & keep.unsqueeze(-1)}
