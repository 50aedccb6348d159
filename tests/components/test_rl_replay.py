"""Replay buffer (ring semantics, who acts, truncation-aware next observations, warm-up,
resume) and the Q-learning TD loss (DQN and double-DQN targets, terminated vs truncated)."""

from __future__ import annotations

import io

import pytest
import torch
from dgraph.components.rl.policy import CategoricalPolicy
from dgraph.components.rl.qlearning import td_loss, td_target
from dgraph.components.rl.replay import ReplayBuffer

from dgraph.errors import ValidationError
from dgraph.registry import COMPONENTS, BuildContext


def _env(env_id="CartPole-v1", num_envs=2, wrappers=()):
    comp = COMPONENTS.get("gym_env")
    params = comp.Params.model_validate({"id": env_id, "num_envs": num_envs,
                                         "wrappers": list(wrappers)})
    return comp(params, node="env").build(BuildContext(node="env"))


def _q(seed=0, obs_dim=4):
    torch.manual_seed(seed)
    return CategoricalPolicy.create(obs_dim=obs_dim, num_actions=2, hidden=[8], critic=False)


def _replay(source, policy, teacher=None, **params):
    refs = {"env": source, "policy": policy}
    names = {"env": "env", "policy": "policy"}
    if teacher is not None:
        refs["teacher"] = teacher
        names["teacher"] = "teacher"
    context = BuildContext(node="replay", references=refs)
    return ReplayBuffer.create(context, **names, **params)


def test_the_ring_overwrites_the_oldest_transitions_first():
    replay = _replay(_env(), _q(), capacity=5, learning_starts=0)
    for i in range(4):  # rows 2i, 2i + 1 (two envs a step)
        replay._write({"obs": torch.tensor([[2.0 * i], [2.0 * i + 1]]),
                       "rewards": torch.tensor([2.0 * i, 2.0 * i + 1])})
        assert replay.size == min(2 * (i + 1), 5)
    # 8 rows written into 5 slots: slot k holds the newest row r with r % 5 == k.
    assert replay.buffer["rewards"].tolist() == [5.0, 6.0, 7.0, 3.0, 4.0]
    assert replay.buffer["obs"][:, 0].tolist() == [5.0, 6.0, 7.0, 3.0, 4.0]
    assert replay.position == 3


def test_each_call_steps_the_envs_and_serves_a_uniform_minibatch_of_stored_rows():
    replay = _replay(_env(), _q(), capacity=7, batch_size=4, learning_starts=0, steps=2)
    torch.manual_seed(0)
    replay.set_step(0)
    batch = replay()
    assert replay.env_steps == 4 and replay.size == 4  # 2 steps x 2 envs
    stored = {tuple(r) for r in torch.cat([replay.buffer["obs"], replay.buffer["next_obs"]],
                                          1)[:4].tolist()}
    assert all(tuple(r) in stored for r in torch.cat([batch["obs"], batch["next_obs"]],
                                                     1).tolist())
    assert batch["actions"].dtype == torch.long and batch["obs"].shape == (4, 4)
    assert replay() is batch  # a second update of the same step reads the same minibatch
    for step in range(1, 4):
        replay.set_step(step)
        replay()
    assert replay.size == 7 and replay.env_steps == 16 and replay.calls == 4
    # The draw is torch's generator: the same seed serves the same rows.
    again = _replay(_env(), _q(), capacity=7, batch_size=4, learning_starts=0, steps=2)
    torch.manual_seed(0)
    again.set_step(0)
    assert all(torch.equal(again()[k], batch[k]) for k in batch)


def test_next_obs_is_the_final_observation_and_only_termination_stops_bootstrapping():
    # A time limit of 3 steps: CartPole episodes are cut (truncated, not terminated).
    source = _env(wrappers=[{"type": "time_limit", "max_episode_steps": 3}])
    replay = _replay(source, _q(), capacity=100, learning_starts=0, steps=1, epsilon=0.0)
    torch.manual_seed(0)
    for step in range(6):
        replay.set_step(step)
        replay()
    b = {k: v[:replay.size].reshape(6, 2, *v.shape[1:]) for k, v in replay.buffer.items()}
    assert b["truncated"][:, 0].tolist() == [0, 0, 1, 0, 0, 1]
    assert b["terminated"].sum() == 0  # 3 steps never end a CartPole episode
    for t in range(5):
        for e in range(2):
            if b["truncated"][t, e]:  # the stored next_obs is the episode's last observation
                assert not torch.equal(b["next_obs"][t, e], b["obs"][t + 1, e])
                # CartPole's Euler step: x' = x + 0.02 x_dot, theta' = theta + 0.02 theta_dot
                o, n = b["obs"][t, e].double(), b["next_obs"][t, e].double()
                assert float(n[0]) == pytest.approx(float(o[0] + 0.02 * o[1]), abs=1e-6)
                assert float(n[2]) == pytest.approx(float(o[2] + 0.02 * o[3]), abs=1e-6)
            else:
                assert torch.equal(b["next_obs"][t, e], b["obs"][t + 1, e])
    assert b["rewards"].eq(1.0).all()


def test_warm_up_fills_learning_starts_with_random_actions_first():
    replay = _replay(_env(), _q(), capacity=50, learning_starts=10, batch_size=3)
    torch.manual_seed(0)
    replay.set_step(0)
    replay()
    assert replay.size == 12 and replay.random_acted == 10  # then one greedy step of 2 envs
    replay.set_step(1)
    replay()
    assert replay.size == 14 and replay.random_acted == 10


def test_epsilon_and_beta_choose_who_acts_and_the_teacher_logits_are_stored():
    teacher = _q(seed=5)
    student = _q(seed=6)
    replay = _replay(_env(), student, teacher, beta=1.0, epsilon=0.0, capacity=20,
                     learning_starts=0, batch_size=4)
    torch.manual_seed(0)
    for step in range(3):
        replay.set_step(step)
        replay()
    stored = {k: v[:replay.size] for k, v in replay.buffer.items()}
    expected = teacher(obs=stored["obs"])["logits"]
    assert torch.allclose(stored["teacher_logits"], expected)
    assert torch.equal(stored["actions"], expected.argmax(-1))
    assert replay.teacher_acted == 6 and replay.random_acted == 0
    greedy = _replay(_env(), student, teacher, beta=0.0, capacity=20, learning_starts=0,
                     epsilon={"schedule": "linear", "start": 1.0, "end": 0.0, "steps": 2})
    torch.manual_seed(0)
    greedy.set_step(2)  # epsilon 0: the student's argmax
    greedy()
    assert greedy.epsilon == 0.0 and greedy.teacher_acted == 0
    assert torch.equal(greedy.buffer["actions"][:2],
                       student(obs=greedy.buffer["obs"][:2])["logits"].argmax(-1))
    greedy.set_step(0)  # epsilon 1: every action random
    greedy()
    assert greedy.epsilon == 1.0 and greedy.random_acted == 2


def test_the_replay_resumes_bit_identically_from_its_extra_state():
    def make():
        return _replay(_env(), _q(), capacity=6, batch_size=4, learning_starts=3,
                       epsilon=0.3)

    first = make()
    torch.manual_seed(3)
    for step in range(4):  # the ring has wrapped
        first.set_step(step)
        first()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    rng = torch.get_rng_state()
    expected = []
    for step in range(4, 12):
        first.set_step(step)
        expected.append(first())
    second = make()
    second.load_state_dict(saved)
    torch.set_rng_state(rng)
    for step, want in zip(range(4, 12), expected, strict=True):
        second.set_step(step)
        got = second()
        assert all(torch.equal(want[k], got[k]) for k in want)
    assert (second.env_steps, second.position, second.size, second.random_acted) == \
        (first.env_steps, first.position, first.size, first.random_acted)


def test_td_target_by_hand_terminated_and_truncated():
    rewards = torch.tensor([1.0, 1.0, 0.5])
    terminated = torch.tensor([0.0, 1.0, 0.0])  # row 2 was truncated: still bootstraps
    next_q = torch.tensor([[2.0, 3.0], [4.0, 1.0], [-1.0, 0.5]])
    online = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # DQN: y = r + 0.9 (1 - d) max_a Q_target(s', a)
    assert td_target(rewards, terminated, next_q, gamma=0.9).tolist() == pytest.approx(
        [1.0 + 0.9 * 3.0, 1.0, 0.5 + 0.9 * 0.5])
    # double DQN: a* from the online network (row 0 picks action 0: 2.0, not the max 3.0)
    assert td_target(rewards, terminated, next_q, online, gamma=0.9).tolist() == \
        pytest.approx([1.0 + 0.9 * 2.0, 1.0, 0.5 + 0.9 * 0.5])
    q = torch.tensor([[0.0, 2.0], [1.5, 0.0], [0.0, 3.0]], requires_grad=True)
    actions = torch.tensor([1, 0, 1])
    # errors Q(s, a) - y: 2 - 3.7 = -1.7, 1.5 - 1 = 0.5, 3 - 0.95 = 2.05
    mse = td_loss(q=q, actions=actions, rewards=rewards, terminated=terminated,
                  next_q=next_q, gamma=0.9, kind="mse")
    assert float(mse.detach()) == pytest.approx((1.7**2 + 0.5**2 + 2.05**2) / 3)
    huber = td_loss(q=q, actions=actions, rewards=rewards, terminated=terminated,
                    next_q=next_q, gamma=0.9, kind="huber", delta=1.0)
    assert float(huber.detach()) == pytest.approx(((1.7 - 0.5) + 0.5 * 0.5**2 + (2.05 - 0.5)) / 3)
    huber.backward()
    assert q.grad is not None and q.grad[:, 0].tolist()[0] == 0.0  # untaken actions: no grad
    with pytest.raises(ValueError) as info:
        td_loss(q=q, actions=actions.float(), rewards=rewards, terminated=terminated,
                next_q=next_q, gamma=0.9, kind="huber", delta=1.0)
    assert str(info.value) == ("td_loss takes discrete actions (indices); found actions of "
                               "dtype torch.float32: Q-learning here needs a Discrete action "
                               "space")


def test_a_short_dqn_training_learns_cartpoles_values():
    """Q-learning on replayed CartPole transitions with a hard-copied target: Q rises from ~0
    towards the discounted return of +1 a step, and the TD loss on a fixed batch falls."""
    from dgraph.components.models.targets import EMATarget

    torch.manual_seed(0)
    q = CategoricalPolicy.create(obs_dim=4, num_actions=2, hidden=[32], critic=False,
                                 activation="relu")
    target = EMATarget.create(BuildContext(node="target", references={"source": q}),
                              source="source", copy_every=20)
    replay = _replay(_env(num_envs=4), q, capacity=2000, batch_size=64, learning_starts=200,
                     epsilon=0.2)
    opt = torch.optim.Adam(q.parameters(), 1e-2)
    replay.set_step(0)
    probe = {k: v.clone() for k, v in replay().items()}

    def loss_on(b):
        return td_loss(q=q(obs=b["obs"])["logits"], actions=b["actions"], rewards=b["rewards"],
                       terminated=b["terminated"], next_q=target(obs=b["next_obs"])["logits"],
                       gamma=0.9, kind="huber", delta=1.0)

    start_q = float(q(obs=probe["obs"])["logits"].detach().mean())
    for step in range(1, 301):
        replay.set_step(step)
        loss = loss_on(replay())
        opt.zero_grad()
        loss.backward()
        opt.step()
        target.follow(q)
    with torch.no_grad():
        end_q = float(q(obs=probe["obs"])["logits"].mean())
    assert abs(start_q) < 0.5 and end_q > 4.0  # 1 / (1 - 0.9) = 10 for states far from failure
    assert replay.env_steps == 200 + 301 * 4  # warm-up, then 4 a call (probe included)


def test_replay_errors_are_located_and_complete(tmp_path, capsys):
    with pytest.raises(ValidationError) as info:
        _replay(_env(), _q(), capacity=10, learning_starts=20)
    assert str(info.value) == (
        "1 problem found in the spec:\nerror[warmup-larger-than-buffer]: node 'replay': "
        "params.learning_starts: 20 transitions do not fit in a buffer of capacity 10\n"
        "    expected: learning_starts <= 10\n    found:    20\n"
        "    hint: lower learning_starts to at most 10, or raise capacity")
    with pytest.raises(ValidationError) as info:
        _replay(_env(), _q(obs_dim=3))
    assert "error[observation-width-mismatch]: node 'replay': params.policy: the policy " \
        "takes observations of width 3 but CartPole-v1 (with its wrappers) observes 4 " \
        "values" in str(info.value)
    from dgraph.cli import main

    spec = tmp_path / "no_teacher.yaml"
    spec.write_text("dgraph: 1\nname: no_teacher\nextends: rl_qdagger_cartpole\nnodes:\n"
                    "  replay: {params: {teacher: null}}\n")
    assert main(["validate", "--static", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "beta is the probability that the teacher acts; it needs a teacher: set " \
        "params.teacher or beta: 0" in err


def test_a_gradient_asked_through_the_replay_is_refused_by_validation(tmp_path, capsys):
    from dgraph.cli import main

    spec = tmp_path / "through.yaml"
    spec.write_text("dgraph: 1\nname: through\nextends: rl_qdagger_cartpole\nnodes:\n"
                    "  imitate:\n    kind: loss\n    type: value_loss\n"
                    "    inputs: {value: replay.rewards, returns: replay.terminated}\n"
                    "updates:\n  main:\n    objective: {imitate: 1.0}\n")
    assert main(["validate", "--static", str(spec)]) == 1
    err = capsys.readouterr().err
    assert ("error[loss-reaches-nothing]: node 'imitate': loss 'imitate' in update 'main' "
            "reaches none of the parameters that update trains (student, student_next); "
            "'replay' uses 'student' only by reference (params.policy): no gradient flows "
            "through a reference (a rollout's outputs are data, not differentiable)\n") in err


def test_continuous_actions_are_stored_as_vectors_and_explore_within_the_box():
    from dgraph.components.rl.policy import GaussianPolicy

    source = _env("Pendulum-v1")
    torch.manual_seed(0)
    policy = GaussianPolicy.create(obs_dim=3, action_dim=1, hidden=[8])
    replay = _replay(source, policy, epsilon=1.0, capacity=10, learning_starts=0,
                     batch_size=4, random_warmup=False)
    replay.set_step(0)
    batch = replay()
    assert batch["actions"].shape == (4, 1) and batch["actions"].dtype == torch.float32
    assert replay.random_acted == 2
    assert (replay.buffer["actions"][:2].abs() <= 2.0).all()  # Pendulum's torque box
    assert "teacher_logits" not in batch
