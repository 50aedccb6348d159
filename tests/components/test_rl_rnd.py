"""RND: the error formula, running statistics, the intrinsic reward a rollout adds, and the
seen/unseen novelty metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dgraph.components.rl.env import EnvConfig, make_vector_env
from dgraph.components.rl.policy import CategoricalPolicy
from dgraph.components.rl.rnd import RND, RNDNovelty
from dgraph.components.rl.rollout import PPORollout

from dgraph.registry import COMPONENTS, BuildContext


def _rnd(**params):
    torch.manual_seed(0)
    return RND.create(obs_dim=2, hidden=[8], embedding=4, **params)


def test_error_is_the_mean_squared_gap_on_normalised_observations():
    rnd = _rnd()
    data = torch.randn(500, 2) * torch.tensor([3.0, 0.01]) + torch.tensor([1.0, -2.0])
    rnd.observe(data[:200])
    rnd.observe(data[200:])  # two batches merge into the statistics of all 500
    assert torch.allclose(rnd.obs_mean, data.mean(0), atol=1e-5)
    assert torch.allclose(rnd.obs_var, data.var(0, unbiased=False), rtol=1e-4)
    obs = data[:5]
    out = rnd(obs=obs)
    x = ((obs - data.mean(0)) / data.var(0, unbiased=False).sqrt()).clamp(-5, 5)
    assert torch.allclose(out["target"], rnd.target_net(x), atol=1e-5)
    assert torch.allclose(out["prediction"], rnd.predictor(x), atol=1e-5)
    assert torch.allclose(out["error"], (rnd.predictor(x) - rnd.target_net(x)).pow(2).mean(-1),
                          atol=1e-5)
    assert not out["target"].requires_grad and out["prediction"].requires_grad
    assert all(not p.requires_grad for p in rnd.target_net.parameters())


def test_training_the_predictor_lowers_the_error_on_what_it_saw_only():
    rnd = _rnd()
    seen = torch.randn(64, 2) * 0.1
    rnd.observe(torch.randn(1000, 2))
    opt = torch.optim.Adam(rnd.predictor.parameters(), 3e-2)
    for _ in range(100):
        out = rnd(obs=seen)
        loss = (out["prediction"] - out["target"]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    far = torch.full((64, 2), 4.0) + torch.randn(64, 2) * 0.1
    assert float(rnd.intrinsic(far).mean()) > 10 * float(rnd.intrinsic(seen).mean())


def _env_source(env_id="MountainCar-v0", num_envs=2, wrappers=()):
    comp = COMPONENTS.get("gym_env")
    params = comp.Params.model_validate({"id": env_id, "num_envs": num_envs,
                                         "wrappers": list(wrappers)})
    return comp(params, node="env").build(BuildContext(node="env"))


def test_the_rollout_adds_the_normalised_intrinsic_reward():
    source = _env_source()
    torch.manual_seed(0)
    policy = CategoricalPolicy.create(obs_dim=2, num_actions=3, hidden=[8])
    rnd = _rnd()

    def rollout(coef):
        context = BuildContext(node="rollout", references={"env": source, "policy": policy,
                                                           "rnd": rnd})
        return PPORollout.create(context, env="env", policy="policy", rnd="rnd", steps=6,
                                 epochs=1, minibatch_size=12, gamma=0.5, gae_lambda=0.0,
                                 extrinsic_coef=0.5, intrinsic_coef=coef)

    with_bonus, without = rollout(2.0), rollout(0.0)
    torch.manual_seed(1)
    with_bonus()
    torch.manual_seed(1)
    without()
    # lambda = 0: A = r + gamma V' - V, so the difference of advantages is 2 r_int (the same
    # actions were sampled, the envs and the policy are the same).
    diff = (with_bonus.storage["advantages"] - without.storage["advantages"]).reshape(6, 2)
    assert torch.equal(with_bonus.storage["actions"], without.storage["actions"])
    assert (diff > 0).all()
    assert with_bonus.last_intrinsic > 0
    assert float(diff.mean()) == pytest.approx(2 * with_bonus.last_intrinsic, rel=1e-4)


def test_novelty_metric_compares_reset_states_with_uniform_ones():
    source = _env_source()
    rnd = _rnd()
    context = BuildContext(node="novelty", references={"rnd": rnd, "env": source})
    metric = RNDNovelty.create(context, rnd="rnd", env="env", samples=64)
    env = EnvConfig("MountainCar-v0").make()
    resets = np.stack([env.reset(seed=2_000_000 + i)[0] for i in range(64)])
    out = metric.compute()
    assert out["seen"] == pytest.approx(float(rnd.intrinsic(torch.as_tensor(resets)).mean()))
    assert out["ratio"] == pytest.approx(out["unseen"] / out["seen"])


def test_rescale_observation_maps_the_box_to_minus_one_one():
    envs = make_vector_env(EnvConfig("MountainCar-v0", {}, (
        {"type": "rescale_observation"},), 1, 0), 1)
    obs, _ = envs.reset(seed=[0])
    raw, _ = EnvConfig("MountainCar-v0").make().reset(seed=0)
    low, high = np.array([-1.2, -0.07]), np.array([0.6, 0.07])
    assert np.allclose(obs[0], 2 * (raw - low) / (high - low) - 1, atol=1e-6)
    assert envs.single_observation_space.low.tolist() == [-1.0, -1.0]
