"""gym_env: ports typed from the spaces, seeded envs, wrappers, and env state that restores."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch
from dgraph.components.rl.env import (
    EnvConfig,
    env_state,
    make_vector_env,
    privileged_states,
    restore_env_state,
)

from dgraph.registry import BuildContext

NO_VELOCITY = [{"type": "mask_observation", "keep": [0, 2]}, {"type": "frame_stack", "size": 3}]


def test_ports_are_typed_from_the_spaces(make):
    plain = make("gym_env", id="CartPole-v1")
    assert plain.resolved_outputs({})["obs"].type == "Observations"
    assert plain.resolved_outputs({})["obs"].shape == "B, 4"
    assert plain.port_params()["num_actions"] == 2
    stacked = make("gym_env", id="CartPole-v1", wrappers=NO_VELOCITY)
    assert stacked.resolved_outputs({})["obs"].shape == "B, 6"  # 2 kept values x 3 frames
    pendulum = make("gym_env", id="Pendulum-v1").port_params()
    assert (pendulum["obs_dim"], pendulum["num_actions"]) == (3, 1)


def test_unknown_and_importing_ids_are_refused(make):
    with pytest.raises(Exception) as info:
        make("gym_env", id="CartPole-v9")
    assert ("unknown gymnasium environment 'CartPole-v9'; did you mean 'CartPole-v1', "
            "'CartPole-v0', 'phys2d/CartPole-v1'?") in str(info.value)
    with pytest.raises(Exception) as info:
        make("gym_env", id="os:system")
    assert ("environment id 'os:system' names a module to import; a spec may only name "
            "environments already registered with gymnasium") in str(info.value)
    with pytest.raises(Exception) as info:
        make("gym_env", id="CartPole-v1", kwargs={"render_mode": "human"})
    assert "kwargs.render_mode is not allowed: dgraph runs envs headless" in str(info.value)


def test_the_source_holds_each_envs_seeded_first_observation(make):
    comp = make("gym_env", id="CartPole-v1", num_envs=3, seed=5)
    source = comp.build(BuildContext(node="env", seed=2))
    base = 5 + 2 * 65_537
    expected = np.stack([gym.make("CartPole-v1").reset(seed=base + i)[0] for i in range(3)])
    assert torch.equal(source.train["obs"], torch.as_tensor(expected))
    assert source.info["gym"] == EnvConfig("CartPole-v1", {}, (), 3, base)
    assert source.info["spaces"].discrete and source.info["spaces"].num_actions == 2


def _roll(envs, actions):
    out = []
    for a in actions:
        obs, reward, term, trunc, _ = envs.step(a)
        out.append((obs.copy(), reward.copy(), term.copy(), trunc.copy()))
    return out


def test_env_state_restores_bit_identically_through_a_safe_checkpoint():
    config = EnvConfig("CartPole-v1", {}, tuple(NO_VELOCITY) + (
        {"type": "observation_noise", "std": 0.1},), 2, 11)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, (120, 2))  # long enough for episodes to end and reset
    first = make_vector_env(config, 2)
    first.reset(seed=[11, 12])
    _roll(first, actions[:30])
    buffer = io.BytesIO()
    torch.save(env_state(first), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    expected = _roll(first, actions[30:])
    second = make_vector_env(config, 2)
    second.reset(seed=[99, 98])  # a different start, overwritten by the restore
    assert restore_env_state(second, saved, reseed=0) == {}
    found = _roll(second, actions[30:])
    assert any(t.any() for _, _, t, _ in expected)  # an episode ended (and auto-reset)
    for (o1, r1, t1, u1), (o2, r2, t2, u2) in zip(expected, found, strict=True):
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2)
        assert np.array_equal(t1, t2) and np.array_equal(u1, u2)


def test_wrappers_mask_and_stack_and_the_full_state_stays_readable():
    config = EnvConfig("CartPole-v1", {}, tuple(NO_VELOCITY), 2, 0)
    envs = make_vector_env(config, 2)
    obs, _ = envs.reset(seed=[0, 1])
    state = privileged_states(envs)
    assert obs.shape == (2, 6) and state.shape == (2, 4)
    # Before the first step the first observation (x, theta) stands for the older frames.
    assert np.array_equal(obs, np.tile(state[:, [0, 2]], 3))
    obs2, *_ = envs.step(np.array([0, 1]))
    assert np.array_equal(obs2[:, 2:4], state[:, [0, 2]])
    assert np.array_equal(obs2[:, 4:], privileged_states(envs)[:, [0, 2]])
    # With differences: the newest frame, then k * (newer - older), newest pair first.
    diff = make_vector_env(EnvConfig("CartPole-v1", {}, (
        {"type": "mask_observation", "keep": [0, 2]},
        {"type": "frame_stack", "size": 3, "differences": 50.0}), 1, 0), 1)
    first, _ = diff.reset(seed=[0])
    assert np.array_equal(first[0, 2:], np.zeros(4))  # no motion seen yet
    frames = [privileged_states(diff)[0, [0, 2]]]
    for action in (1, 1):
        out, *_ = diff.step(np.array([action]))
        frames.append(privileged_states(diff)[0, [0, 2]])
    f0, f1, f2 = frames
    expected = np.concatenate([f2, 50 * (f2 - f1), 50 * (f1 - f0)]).astype(np.float32)
    assert np.allclose(out[0], expected, atol=1e-6)


def test_a_bad_wrapper_is_a_located_validation_error(capsys):
    from dgraph.cli import main

    override = "nodes.env.params.wrappers=[{type: stack, size: 2}]"
    assert main(["validate", "rl_teacher_cartpole", "--set", override]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"<--set {override}>: error[bad-param]: node 'env': parameter 'wrappers.0' of "
        "'gym_env': Input tag 'stack' found using 'type' does not match any of the expected "
        "tags: 'mask_observation', 'frame_stack', 'observation_noise', "
        "'rescale_observation', 'time_limit', 'clip_action'\n")
