"""RND's intrinsic value head: a separate critic, non-episodic intrinsic GAE with its own
discount, and the combined advantage ``extrinsic_coef A_ext + intrinsic_coef A_int``."""

from __future__ import annotations

import pytest
import torch
from dgraph.components.rl.critic import ValueNet
from dgraph.components.rl.policy import CategoricalPolicy
from dgraph.components.rl.rnd import RND
from dgraph.components.rl.rollout import PPORollout, gae

from dgraph.errors import ValidationError
from dgraph.registry import COMPONENTS, BuildContext


def _source(num_envs=2):
    comp = COMPONENTS.get("gym_env")
    params = comp.Params.model_validate({"id": "MountainCar-v0", "num_envs": num_envs})
    return comp(params, node="env").build(BuildContext(node="env"))


def _parts(critic_dim=2):
    torch.manual_seed(0)
    policy = CategoricalPolicy.create(obs_dim=2, num_actions=3, hidden=[8])
    rnd = RND.create(obs_dim=2, hidden=[8], embedding=4)
    critic = ValueNet.create(obs_dim=critic_dim, hidden=[8])
    with torch.no_grad():  # a critic far from zero, so a wrong bootstrap would show
        critic.net[-1].bias.fill_(3.0)
    return policy, rnd, critic


def _rollout(source, policy, rnd, critic, **params):
    refs = {"env": source, "policy": policy, "rnd": rnd, "intrinsic_critic": critic}
    context = BuildContext(node="rollout", references=refs)
    return PPORollout.create(context, env="env", policy="policy", rnd="rnd",
                             intrinsic_critic="critic", **params)


def test_two_heads_combine_separate_extrinsic_and_non_episodic_intrinsic_advantages():
    policy, rnd, critic = _parts()
    rollout = _rollout(_source(), policy, rnd, critic, steps=6, epochs=1, minibatch_size=12,
                       gamma=0.9, gae_lambda=0.0, intrinsic_gamma=0.5, extrinsic_coef=2.0,
                       intrinsic_coef=3.0)
    torch.manual_seed(1)
    rollout()
    s = {k: v.reshape(6, 2) if v.dim() == 1 else v.reshape(6, 2, -1)
         for k, v in rollout.storage.items()}
    with torch.no_grad():
        v_int = critic(obs=s["obs"].reshape(12, 2))["value"].reshape(6, 2)
        v_int_last = critic(obs=rollout.obs)["value"]
        v_ext_last = policy(obs=rollout.obs)["value"]
    assert torch.allclose(s["int_value"], v_int, atol=1e-6)
    # The extrinsic head: MountainCar pays -1 a step, scaled by extrinsic_coef (its critic
    # learns the scaled return, so this is 2 A_ext); no episode ends in 6 steps.
    ext = gae(-2.0 * torch.ones(6, 2), s["value"], torch.zeros(6, 2), v_ext_last, 0.9, 0.0)
    assert torch.allclose(s["returns"], ext + s["value"], atol=1e-5)
    int_adv = (s["advantages"] - ext) / 3.0
    assert torch.allclose(s["int_returns"] - s["int_value"], int_adv, atol=1e-4)
    # lambda = 0: A_int = r_int + 0.5 V_int(s') - V_int(s), so r_int is recovered exactly and
    # is the normalised RND error (mean = last_intrinsic, all positive).
    following = torch.cat([v_int[1:], v_int_last[None]])
    r_int = int_adv - 0.5 * following + v_int
    assert (r_int > 0).all()
    assert float(r_int.mean()) == pytest.approx(rollout.last_intrinsic, rel=1e-4)


def test_the_intrinsic_return_ignores_episode_ends():
    rewards = torch.ones(3, 1)
    values = torch.zeros(3, 1)
    ended = torch.tensor([[0.0], [1.0], [0.0]])
    episodic = gae(rewards, values, ended, torch.zeros(1), 0.5, 1.0)
    non_episodic = gae(rewards, values, torch.zeros(3, 1), torch.zeros(1), 0.5, 1.0)
    assert episodic.flatten().tolist() == [1.5, 1.0, 1.0]
    assert non_episodic.flatten().tolist() == [1.75, 1.5, 1.0]


def test_intrinsic_critic_errors_are_located(tmp_path, capsys):
    policy, rnd, critic = _parts(critic_dim=3)
    with pytest.raises(ValidationError) as info:
        _rollout(_source(), policy, rnd, critic, steps=4, minibatch_size=8)
    assert str(info.value) == (
        "1 problem found in the spec:\nerror[observation-width-mismatch]: node 'rollout': "
        "params.intrinsic_critic: the critic takes observations of width 3 but MountainCar-v0 "
        "(with its wrappers) observes 2 values\n    expected: obs_dim: 2\n"
        "    found:    obs_dim: 3\n    hint: set the critic's obs_dim to 2")
    from dgraph.cli import main

    spec = tmp_path / "no_rnd.yaml"
    spec.write_text("dgraph: 1\nname: no_rnd\nextends: rl_teacher_cartpole\nnodes:\n"
                    "  rollout: {params: {intrinsic_critic: teacher}}\n")
    assert main(["validate", "--static", str(spec)]) == 1
    assert "intrinsic_critic learns the value of RND's intrinsic reward; it needs an rnd " \
        "node: set params.rnd, or drop params.intrinsic_critic" in capsys.readouterr().err
    # Without an intrinsic critic the rollout has no int_returns port.
    spec.write_text("dgraph: 1\nname: no_port\nextends: rl_rnd\nnodes:\n"
                    "  int_value:\n    kind: loss\n    type: value_loss\n"
                    "    inputs: {value: policy.value, returns: rollout.int_returns}\n"
                    "updates:\n  main:\n    objective: {int_value: 0.5}\n")
    assert main(["validate", str(spec)]) == 1
    assert "node 'int_value', port 'returns': 'rollout.int_returns'" in \
        capsys.readouterr().err
