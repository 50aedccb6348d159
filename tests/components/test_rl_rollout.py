"""Rollout nodes: on-policy PPO storage with GAE, DAgger's mixture and aggregated dataset,
what they serve per call, evaluation mode, checks against the spaces, and exact resume."""

from __future__ import annotations

import io

import pytest
import torch
from dgraph.components.rl.policy import CategoricalPolicy, distribution
from dgraph.components.rl.rollout import DAggerCollector, PPORollout, gae

from dgraph.errors import ValidationError
from dgraph.registry import COMPONENTS, BuildContext


def _env(num_envs=2, wrappers=()):
    comp = COMPONENTS.get("gym_env")
    params = comp.Params.model_validate({"id": "CartPole-v1", "num_envs": num_envs,
                                         "wrappers": list(wrappers)})
    return comp(params, node="env").build(BuildContext(node="env"))


def _policy(obs_dim=4, **params):
    torch.manual_seed(0)
    return CategoricalPolicy.create(obs_dim=obs_dim, num_actions=2, hidden=[8], **params)


def _ppo(source, policy, **params):
    context = BuildContext(node="rollout", references={"env": source, "policy": policy})
    return PPORollout.create(context, env="env", policy="policy", **params)


def _dagger(source, student, teacher, **params):
    context = BuildContext(node="collector", references={"env": source, "student": student,
                                                          "teacher": teacher})
    return DAggerCollector.create(context, env="env", student="student", teacher="teacher",
                                  **params)


def test_ppo_rollout_serves_epochs_of_minibatches_and_refreshes():
    rollout = _ppo(_env(), _policy(), steps=4, epochs=2, minibatch_size=4, gamma=0.9,
                   gae_lambda=0.8)
    assert rollout.refresh == 4  # 2 epochs x (2 envs x 4 steps // 4) minibatches
    torch.manual_seed(1)
    served = [rollout() for _ in range(4)]
    assert rollout.env_steps == 8
    storage = rollout.storage
    for epoch in (served[:2], served[2:]):  # each epoch covers the storage once
        seen = torch.cat([b["obs"] for b in epoch])
        assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, storage["obs"].tolist()))
    batch = served[0]
    assert batch["obs"].shape == (4, 4) and batch["actions"].dtype == torch.long
    # The stored log-probabilities are the acting policy's; returns = advantages + values.
    out = rollout._policy[0](obs=batch["obs"])
    assert torch.allclose(distribution(out).log_prob(batch["actions"]), batch["log_prob"])
    assert torch.allclose(batch["value"], out["value"])
    assert torch.allclose(storage["returns"], storage["advantages"] + storage["value"])
    rollout()
    assert rollout.env_steps == 16  # the 5th call collected again


def test_continuous_actions_roll_out_with_a_gaussian_policy():
    from dgraph.components.rl.losses import ppo_clip
    from dgraph.components.rl.policy import GaussianPolicy

    comp = COMPONENTS.get("gym_env")
    source = comp(comp.Params.model_validate({"id": "Pendulum-v1", "num_envs": 2}),
                  node="env").build(BuildContext(node="env"))
    torch.manual_seed(0)
    policy = GaussianPolicy.create(obs_dim=3, action_dim=1, hidden=[8])
    rollout = _ppo(source, policy, steps=4, epochs=1, minibatch_size=8)
    batch = rollout()
    assert batch["actions"].shape == (8, 1) and batch["actions"].dtype == torch.float32
    out = policy(obs=batch["obs"])
    # The acting policy is the current one: every ratio is 1, so the loss is -mean(A).
    loss = ppo_clip(actions=batch["actions"], log_prob=batch["log_prob"],
                    advantages=batch["advantages"], mean=out["mean"], log_std=out["log_std"],
                    clip=0.2, normalize=False)
    assert float(loss.detach()) == pytest.approx(-float(batch["advantages"].mean()), abs=1e-5)
    with pytest.raises(ValidationError) as info:
        _ppo(source, _policy(obs_dim=3))
    assert "error[action-space-mismatch]: node 'rollout': params.policy: the policy is " \
        "discrete but Pendulum-v1's actions are continuous" in str(info.value)


def test_ppo_advantages_are_gae_of_the_stored_rewards():
    rollout = _ppo(_env(num_envs=1), _policy(), steps=30, epochs=1, minibatch_size=30,
                   gamma=0.9, gae_lambda=0.8)
    torch.manual_seed(0)
    rollout()
    values = rollout.storage["value"].reshape(30, 1)
    # CartPole pays 1 per step; episodes of a random policy end within 30 steps.
    ended = rollout.finished
    assert ended, "an episode should have ended"
    dones = torch.zeros(30, 1)
    # Recover where episodes ended from the returns' resets: with dones known, GAE matches.
    obs = rollout.storage["obs"]
    next_value = rollout._policy[0](obs=rollout.obs)["value"].detach()
    for t in range(29):
        dones[t] = float(not torch.allclose(obs[t + 1], _step_of(obs[t], rollout, t)))
    expected = gae(torch.ones(30, 1), values, dones, next_value, 0.9, 0.8)
    assert torch.allclose(rollout.storage["advantages"], expected.flatten(), atol=1e-5)


def _step_of(obs, rollout, t):
    """CartPole's next state from ``obs`` and the stored action (its Euler step)."""
    x, x_dot, theta, theta_dot = obs.double().tolist()
    action = int(rollout.storage["actions"][t])
    import math

    force = 10.0 if action == 1 else -10.0
    cos, sin = math.cos(theta), math.sin(theta)
    temp = (force + 0.05 * theta_dot**2 * sin) / 1.1
    theta_acc = (9.8 * sin - cos * temp) / (0.5 * (4.0 / 3.0 - 0.1 * cos**2 / 1.1))
    x_acc = temp - 0.05 * theta_acc * cos / 1.1
    nxt = [x + 0.02 * x_dot, x_dot + 0.02 * x_acc, theta + 0.02 * theta_dot,
           theta_dot + 0.02 * theta_acc]
    return torch.tensor(nxt, dtype=torch.float32)


def test_updates_of_one_step_read_the_same_minibatch():
    rollout = _ppo(_env(), _policy(), steps=4, epochs=1, minibatch_size=4)
    torch.manual_seed(0)
    rollout.set_step(0)
    first, again = rollout(), rollout()  # two updates reading the node in step 0
    assert first is again and rollout.calls == 1
    rollout.set_step(1)
    assert rollout() is not first and rollout.calls == 2


def test_evaluation_mode_serves_the_last_minibatch_and_changes_nothing():
    rollout = _ppo(_env(), _policy(), steps=4, epochs=1, minibatch_size=4)
    torch.manual_seed(0)
    last = rollout()
    state = (rollout.calls, rollout.env_steps)
    rollout.eval()
    again = rollout()
    assert (rollout.calls, rollout.env_steps) == state
    assert all(torch.equal(again[k], last[k]) for k in last)


def test_rollout_resumes_bit_identically_from_its_extra_state():
    def make():
        return _ppo(_env(), _policy(), steps=8, epochs=2, minibatch_size=4)

    first = make()
    torch.manual_seed(3)
    for _ in range(5):  # mid-epoch of the first rollout
        first()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    rng = torch.get_rng_state()
    expected = [first() for _ in range(20)]  # crosses two refreshes
    second = make()
    second.load_state_dict(saved)
    torch.set_rng_state(rng)
    found = [second() for _ in range(20)]
    for a, b in zip(expected, found, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.env_steps == second.env_steps


def test_dagger_with_beta_one_acts_with_the_teacher_and_stores_its_actions():
    student, teacher = _policy(), _policy()
    torch.manual_seed(1)
    teacher = CategoricalPolicy.create(obs_dim=4, num_actions=2, hidden=[8])
    collector = _dagger(_env(), student, teacher, beta=1.0, steps=5, collect_every=3,
                        capacity=12, batch_size=6)
    batch = collector()
    assert collector.teacher_acted == 10
    assert torch.equal(batch["teacher_actions"], teacher(obs=batch["state"])["logits"]
                       .argmax(-1))
    assert torch.equal(batch["obs"], batch["state"])  # not privileged: the same observation
    collector()
    collector()
    collector()  # the 4th call collects again: 20 transitions, capacity 12
    assert collector.buffer["obs"].shape[0] == 12


def test_dagger_beta_follows_its_schedule_and_the_student_acts_when_it_is_zero():
    collector = _dagger(_env(), _policy(), _policy(), steps=4, collect_every=1,
                        beta={"schedule": "linear", "start": 1.0, "end": 0.0, "steps": 10})
    collector.set_step(5)
    assert collector.beta == pytest.approx(0.5)
    collector.set_step(10)
    collector()
    assert collector.beta == 0.0 and collector.teacher_acted == 0


def test_privileged_dagger_gives_the_teacher_the_full_state():
    source = _env(wrappers=[{"type": "mask_observation", "keep": [0, 2]}])
    collector = _dagger(source, _policy(obs_dim=2, critic=False), _policy(), privileged=True,
                        steps=4, collect_every=5, batch_size=8)
    batch = collector()
    assert batch["obs"].shape == (8, 2) and batch["state"].shape == (8, 4)
    assert torch.equal(batch["obs"], batch["state"][:, [0, 2]])


def test_a_policy_that_does_not_fit_the_env_is_a_located_error(capsys):
    from dgraph.cli import main

    assert main(["validate", "rl_teacher_cartpole", "--set",
                 "nodes.teacher.params.obs_dim=3"]) == 1
    err = capsys.readouterr().err
    assert err.endswith(
        "rl_teacher_cartpole.yaml:16:32: error[observation-width-mismatch]: node 'rollout': "
        "params.policy: the policy takes observations of width 3 but CartPole-v1 (with its "
        "wrappers) observes 4 values\n    expected: obs_dim: 4\n    found:    obs_dim: 3\n"
        "    hint: set the policy's obs_dim to 4\n1 error: the spec is not valid\n")
    with pytest.raises(ValidationError) as info:
        _ppo(_env(), CategoricalPolicy.create(obs_dim=4, num_actions=3))
    assert str(info.value) == (
        "1 problem found in the spec:\nerror[action-head-mismatch]: node 'rollout': "
        "params.policy: the policy has 3 actions but CartPole-v1 has 2\n"
        "    expected: num_actions: 2\n    found:    num_actions: 3\n"
        "    hint: set the policy's num_actions to 2")


def test_a_gradient_asked_through_a_rollout_is_refused_by_validation(tmp_path, capsys):
    from dgraph.cli import main

    spec = tmp_path / "through.yaml"
    spec.write_text("dgraph: 1\nname: through\nextends: rl_teacher_cartpole\nnodes:\n"
                    "  imitate:\n    kind: loss\n    type: value_loss\n"
                    "    inputs: {value: rollout.value, returns: rollout.returns}\n"
                    "updates:\n  main:\n    objective: {imitate: 1.0}\n")
    assert main(["validate", "--static", str(spec)]) == 1
    err = capsys.readouterr().err
    assert ("error[loss-reaches-nothing]: node 'imitate': loss 'imitate' in update 'main' "
            "reaches none of the parameters that update trains (teacher); 'rollout' uses "
            "'teacher' only by reference (params.policy): no gradient flows through a "
            "reference (a rollout's outputs are data, not differentiable)\n") in err
