"""Q-learning's temporal-difference loss (DQN, double DQN) on replayed transitions.

A Q-network is a ``mlp_policy`` without a critic: its ``logits`` are ``Q(s, a)``, one per
action, and the replay buffer acts with their argmax (epsilon-greedy). The target network is a
``target`` node of type ``ema`` following it (``decay``: Polyak averaging; ``copy_every: K``:
DQN's hard copy every K updates), run on the replay's ``next_obs``. Wiring (see
``specs/rl_qdagger_cartpole.yaml``)::

    q:        {kind: student, type: mlp_policy, params: {..., critic: false},
               inputs: {obs: replay.obs}}
    q_target: {kind: target, type: ema, params: {source: q, copy_every: 500},
               inputs: {obs: replay.next_obs}}
    q_next:   {shares: q, inputs: {obs: replay.next_obs}}          # double DQN only
    td:       {kind: loss, type: td_loss,
               inputs: {q: q.logits, actions: replay.actions, rewards: replay.rewards,
                        terminated: replay.terminated, next_q: q_target.logits,
                        next_q_online: q_next.logits}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from dgraph.declare import Actions, Logits, Rewards, Scalar, Tensor, loss, param

if TYPE_CHECKING:
    import torch

__all__ = ["td_loss", "td_target"]


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
              next_q_online: torch.Tensor | None = None, *, gamma: float) -> torch.Tensor:
    """``y = r + gamma (1 - terminated) Q_target(s', a*)`` without gradient; ``a*`` is the
    argmax of ``next_q_online`` (double DQN) or of ``next_q`` itself (DQN)."""
    import torch

    with torch.no_grad():
        choose = next_q if next_q_online is None else next_q_online
        best = choose.float().argmax(-1, keepdim=True)
        following = next_q.float().gather(-1, best).squeeze(-1)
        return rewards.float() + gamma * (1.0 - terminated.float()) * following


@loss("td_loss")
def td_loss(
    q: Logits("N, A", "the online network's Q(s, .) on the replayed observations"),
    actions: Actions("N", "the actions taken (indices)"),
    rewards: Rewards("N", "the rewards received"),
    terminated: Tensor("N", "1 where the episode terminated after the action (no bootstrap)"),
    next_q: Logits("N, A", "the target network's Q(s', .)"),
    next_q_online: Logits("N, A", "the online network's Q(s', .): chooses a* (double DQN)")
    = None,
    *,
    gamma: float = param(0.99, ge=0.0, le=1.0, doc="discount"),
    kind: Literal["huber", "mse"] = param("huber", doc="huber (smooth L1, DQN) or mse"),
    delta: float = param(1.0, gt=0.0, doc="the Huber loss's threshold between its quadratic "
                         "and linear parts"),
) -> Scalar(None, "mean TD loss"):
    """One-step Q-learning (Mnih et al. 2015; van Hasselt et al. 2016 with ``next_q_online``).

    ``y = r + gamma (1 - terminated) Q_target(s', a*)`` (no gradient), ``a* = argmax_a
    Q_target(s', a)`` (DQN) or ``argmax_a Q_online(s', a)`` (double DQN);
    ``loss = mean(huber_delta(Q(s, a) - y))`` or ``mean((Q(s, a) - y)^2)``. Only a terminal
    state stops the bootstrap: a transition cut by a time limit is ``terminated = 0`` with
    ``s'`` its final observation, so its target still bootstraps.
    """
    import torch.nn.functional as F

    if q.shape != next_q.shape:
        raise ValueError(f"q {tuple(q.shape)} and next_q {tuple(next_q.shape)} must score the "
                         "same actions for the same transitions")
    if actions.dtype.is_floating_point:
        raise ValueError("td_loss takes discrete actions (indices); found actions of dtype "
                         f"{actions.dtype}: Q-learning here needs a Discrete action space")
    target = td_target(rewards, terminated, next_q, next_q_online, gamma=gamma)
    taken = q.float().gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    if kind == "mse":
        return F.mse_loss(taken, target)
    return F.huber_loss(taken, target, delta=delta)
