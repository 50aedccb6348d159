"""RL losses: PPO's clipped surrogate, its value and entropy terms, and policy distillation.

A PPO objective is three loss nodes weighted in the update (``{ppo_clip: 1, value: 0.5,
entropy: 0.01}``), so each is logged on its own. They take the policy's outputs on the
rollout's observations (``logits``, or ``mean`` and ``log_std`` for a Gaussian policy) and
the rollout's stored ``actions``, ``log_prob``, ``advantages`` and ``returns``.
"""

from __future__ import annotations

from typing import Any

from dgraph.declare import Actions, Logits, Scalar, Scheduled, Tensor, loss, param

__all__ = ["entropy_bonus", "policy_distill_kl", "ppo_clip", "value_loss"]


def _distribution(logits: Any, mean: Any, log_std: Any, what: str) -> Any:
    from dgraph.components.rl.policy import distribution

    if logits is not None:
        return distribution({"logits": logits})
    if mean is None or log_std is None:
        raise ValueError(f"{what} needs either 'logits' (a categorical policy) or both 'mean' "
                         "and 'log_std' (a Gaussian policy) wired in")
    return distribution({"mean": mean, "log_std": log_std})


@loss("ppo_clip")
def ppo_clip(
    actions: Actions("N, ...", "the actions the rollout took"),
    log_prob: Tensor("N", "their log-probability under the acting (old) policy"),
    advantages: Tensor("N", "their advantages (GAE)"),
    logits: Logits("N, A", "the current policy's action scores (categorical)") = None,
    mean: Tensor("N, A", "the current policy's mean action (Gaussian)") = None,
    log_std: Tensor("N, A", "the current policy's log standard deviation (Gaussian)") = None,
    *,
    clip: Scheduled = param(0.2, doc="epsilon: the ratio is clipped to [1 - eps, 1 + eps]; a "
                            "number or a schedule of the step"),
    normalize: bool = param(True, doc="standardise the advantages within the minibatch"),
) -> Scalar(None, "negative clipped surrogate"):
    """PPO's clipped surrogate (Schulman et al. 2017), as a loss to minimise.

    ``r = exp(log pi(a|s) - log_prob)``, ``A`` the advantages (standardised within the
    minibatch, ``(A - mean) / (std + 1e-8)``, when ``normalize``);
    ``loss = -mean(min(r A, clip(r, 1 - eps, 1 + eps) A))``.
    """
    import torch

    dist = _distribution(logits, mean, log_std, "ppo_clip")
    ratio = torch.exp(dist.log_prob(actions) - log_prob.float())
    adv = advantages.float()
    if normalize and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clip = float(clip)
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    return -surrogate.mean()


@loss("value_loss")
def value_loss(
    value: Tensor("N", "the current critic's V(s)"),
    returns: Tensor("N", "value targets from the rollout"),
) -> Scalar(None, "mean squared error of the value"):
    """``loss = mean((V(s) - returns)^2)`` (weight it with PPO's value coefficient)."""
    return (value.float() - returns.float()).pow(2).mean()


@loss("entropy_bonus")
def entropy_bonus(
    logits: Logits("N, A", "action scores (categorical)") = None,
    mean: Tensor("N, A", "mean action (Gaussian)") = None,
    log_std: Tensor("N, A", "log standard deviation (Gaussian)") = None,
) -> Scalar(None, "minus the mean entropy"):
    """``loss = -mean(H(pi(.|s)))``: a positive weight rewards exploration."""
    return -_distribution(logits, mean, log_std, "entropy_bonus").entropy().mean()


@loss("policy_distill_kl")
def policy_distill_kl(
    student: Logits("N, A", "the student's action scores"),
    teacher: Logits("N, A", "the teacher's action scores (same actions)"),
    *,
    temperature: float = param(1.0, gt=0.0, le=1000.0, doc="tau: the teacher's softmax "
                               "temperature (below 1 sharpens it)"),
) -> Scalar(None, "KL(teacher || student)"):
    """Policy distillation's KL (Rusu et al. 2016, eq. 3), with the teacher's temperature.

    ``loss = (1/N) sum_n sum_a p_t log(p_t / p_s)`` with ``p_t = softmax(teacher / tau)``
    and ``p_s = softmax(student)``: only the teacher is softened (sharpened for ``tau < 1``),
    the student is matched at temperature 1 so that it acts with what it learnt.
    """
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32, kl_div_terms, same_shape

    same_shape(student, teacher, "student", "teacher", "both must score the same actions")
    log_t = F.log_softmax(at_least_float32(teacher) / temperature, dim=-1)
    log_s = F.log_softmax(at_least_float32(student), dim=-1)
    return kl_div_terms(log_t, log_s, dim=None) / max(student.shape[:-1].numel(), 1)
