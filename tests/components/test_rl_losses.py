"""RL losses and GAE against values computed by hand from their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from dgraph.components.rl.losses import entropy_bonus, policy_distill_kl, ppo_clip, value_loss
from dgraph.components.rl.rollout import gae

LN3 = math.log(3.0)


def _ppo(**kwargs):
    params = {"clip": 0.2, "normalize": False}
    params.update({k: kwargs.pop(k) for k in list(kwargs) if k in params})
    return float(ppo_clip(**kwargs, **params).detach())


def test_ppo_clip_takes_the_pessimistic_clipped_term():
    # pi = [0.5, 0.5], [0.75, 0.25], [0.5, 0.5]; every action 0.
    logits = torch.tensor([[0.0, 0.0], [LN3, 0.0], [0.0, 0.0]], requires_grad=True)
    actions = torch.tensor([0, 0, 0])
    old = torch.log(torch.tensor([0.25, 0.75, 1.0]))  # ratios 2, 1, 0.5
    adv = torch.tensor([1.0, -1.0, -1.0])
    # min(2*1, 1.2*1) = 1.2; min(-1, -1) = -1; min(0.5*-1, 0.8*-1) = -0.8 -> mean -0.2/3
    value = _ppo(actions=actions, log_prob=old, advantages=adv, logits=logits)
    assert value == pytest.approx(-(1.2 - 1.0 - 0.8) / 3, abs=1e-6)
    loss = ppo_clip(actions=actions, log_prob=old, advantages=adv, logits=logits, clip=0.2,
                    normalize=False)
    loss.backward()
    # Only the unclipped middle term has a gradient: d(-r A / 3)/dz for A = -1, r = 1.
    assert logits.grad[0].abs().sum() == 0 and logits.grad[2].abs().sum() == 0
    assert logits.grad[1].tolist() == pytest.approx([0.25 / 3, -0.25 / 3], abs=1e-6)


def test_ppo_clip_normalises_advantages_within_the_minibatch():
    logits = torch.tensor([[0.0, 0.0], [LN3, 0.0]])
    old = torch.log(torch.tensor([0.25, 0.75]))  # ratios 2 and 1
    adv = torch.tensor([3.0, 1.0])  # standardised: +-1/sqrt(2) (unbiased std sqrt(2))
    a = 1 / math.sqrt(2)
    value = float(ppo_clip(actions=torch.tensor([0, 0]), log_prob=old, advantages=adv,
                           logits=logits, clip=0.2, normalize=True))
    assert value == pytest.approx(-(1.2 * a - a) / 2, abs=1e-6)


def test_ppo_clip_on_a_gaussian_policy():
    # N(0, 1) at a = 1: log pi = -0.5 - 0.5 ln(2 pi); the old policy gave the same: ratio 1.
    logp = -0.5 - 0.5 * math.log(2 * math.pi)
    value = float(ppo_clip(actions=torch.tensor([[1.0]]), log_prob=torch.tensor([logp]),
                           advantages=torch.tensor([2.0]), mean=torch.zeros(1, 1),
                           log_std=torch.zeros(1, 1), clip=0.2, normalize=False))
    assert value == pytest.approx(-2.0, abs=1e-6)
    with pytest.raises(ValueError) as info:
        ppo_clip(actions=torch.tensor([[1.0]]), log_prob=torch.tensor([logp]),
                 advantages=torch.tensor([2.0]), mean=torch.zeros(1, 1))
    assert str(info.value) == ("ppo_clip needs either 'logits' (a categorical policy) or both "
                               "'mean' and 'log_std' (a Gaussian policy) wired in")


def test_value_loss_and_entropy_bonus():
    assert float(value_loss(value=torch.tensor([1.0, 2.0]), returns=torch.tensor([0.0, 4.0]))) \
        == pytest.approx(2.5)
    assert float(entropy_bonus(logits=torch.zeros(3, 2))) == pytest.approx(-math.log(2))
    # One Gaussian dimension of std 1: H = 0.5 ln(2 pi e).
    assert float(entropy_bonus(mean=torch.zeros(2, 1), log_std=torch.zeros(2, 1))) == \
        pytest.approx(-0.5 * math.log(2 * math.pi * math.e), abs=1e-6)


def test_policy_distill_kl_softens_only_the_teacher():
    student = torch.zeros(1, 2)  # p_s = [0.5, 0.5]
    teacher = torch.tensor([[LN3, 0.0]])  # p_t = [0.75, 0.25] at tau = 1
    kl1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(policy_distill_kl(student=student, teacher=teacher, temperature=1.0)) == \
        pytest.approx(kl1, abs=1e-6)
    # tau = 0.5 sharpens the teacher to [0.9, 0.1]; the student stays at temperature 1.
    kl_half = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    assert float(policy_distill_kl(student=student, teacher=teacher, temperature=0.5)) == \
        pytest.approx(kl_half, abs=1e-6)


def test_gae_by_hand():
    # T = 3, one env; the episode ends at t = 1; gamma 0.9, lambda 0.8, V(s_3) = 2.
    rewards = torch.ones(3, 1)
    values = torch.full((3, 1), 0.5)
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    adv = gae(rewards, values, dones, torch.tensor([2.0]), 0.9, 0.8)
    # A_2 = 1 + 0.9*2 - 0.5 = 2.3; A_1 = 1 - 0.5 = 0.5 (no bootstrap across the end);
    # A_0 = (1 + 0.9*0.5 - 0.5) + 0.9*0.8*0.5 = 1.31
    assert adv.flatten().tolist() == pytest.approx([1.31, 0.5, 2.3], abs=1e-6)
