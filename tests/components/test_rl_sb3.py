"""sb3_policy: a stable-baselines3 PPO save read through policy.pth only, weights_only."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest
import torch

from dgraph.errors import ValidationError
from dgraph.registry import COMPONENTS, BuildContext


def _sb3_zip(path, obs_dim=4, actions=2, hidden=(64, 64), members=()):
    """A save in stable-baselines3's layout, written by hand (its keys, its zip members)."""
    torch.manual_seed(1)
    state, width = {}, obs_dim
    for i, size in enumerate(hidden):
        for net in ("policy_net", "value_net"):
            state[f"mlp_extractor.{net}.{2 * i}.weight"] = torch.randn(size, width)
            state[f"mlp_extractor.{net}.{2 * i}.bias"] = torch.randn(size)
        width = size
    state.update({"action_net.weight": torch.randn(actions, width),
                  "action_net.bias": torch.randn(actions),
                  "value_net.weight": torch.randn(1, width), "value_net.bias": torch.randn(1)})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("policy.pth", buffer.getvalue())
        for name, data in members:
            archive.writestr(name, data)
    return state


def _build(tmp_path, **params):
    comp = COMPONENTS.get("sb3_policy")
    built = comp(comp.Params.model_validate(params), node="teacher")
    return built.build(BuildContext(node="teacher", spec_dir=tmp_path))


@pytest.mark.slow  # importing stable-baselines3 alone takes seconds
def test_ppo_saves_load_and_act_like_stable_baselines3(tmp_path):
    sb3 = pytest.importorskip("stable_baselines3")
    for env_id, obs_dim, actions, continuous in (("CartPole-v1", 4, 2, False),
                                                  ("Pendulum-v1", 3, 1, True)):
        model = sb3.PPO("MlpPolicy", env_id, device="cpu", seed=0)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.policy.parameters():  # away from the near-zero action head
                p.normal_(0.0, 0.5)
        model.save(tmp_path / "teacher.zip")
        policy = _build(tmp_path, path="teacher.zip", obs_dim=obs_dim, num_actions=actions,
                        continuous=continuous)
        obs = torch.randn(16, obs_dim)
        with torch.no_grad():
            ours = policy(obs=obs)
            dist = model.policy.get_distribution(obs).distribution
            values = model.policy.predict_values(obs).squeeze(-1)
        if continuous:
            assert torch.allclose(ours["mean"], dist.mean, atol=1e-6)
            assert torch.allclose(ours["log_std"].exp(), dist.stddev, atol=1e-6)
        else:
            assert torch.allclose(ours["logits"].softmax(-1), dist.probs, atol=1e-6)
        assert torch.allclose(ours["value"], values, atol=1e-5)


def test_the_keys_map_onto_actor_and_critic(tmp_path):
    state = _sb3_zip(tmp_path / "teacher.zip", hidden=(8,))
    policy = _build(tmp_path, path="teacher.zip", obs_dim=4, num_actions=2, hidden=[8])
    obs = torch.randn(3, 4)
    hidden = torch.tanh(obs @ state["mlp_extractor.policy_net.0.weight"].T
                        + state["mlp_extractor.policy_net.0.bias"])
    logits = hidden @ state["action_net.weight"].T + state["action_net.bias"]
    value_hidden = torch.tanh(obs @ state["mlp_extractor.value_net.0.weight"].T
                              + state["mlp_extractor.value_net.0.bias"])
    value = (value_hidden @ state["value_net.weight"].T + state["value_net.bias"]).squeeze(-1)
    with torch.no_grad():
        out = policy(obs=obs)
    assert torch.allclose(out["logits"], logits, atol=1e-6)
    assert torch.allclose(out["value"], value, atol=1e-6)


class _Trap:
    def __reduce__(self):
        return (os.system, ("touch TRAPPED",))


def test_only_policy_pth_is_read_and_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A 'data' member that would run a command when unpickled is never opened.
    _sb3_zip(tmp_path / "teacher.zip", members=[("data", pickle.dumps(_Trap()))])
    _build(tmp_path, path="teacher.zip", obs_dim=4, num_actions=2)
    assert not (tmp_path / "TRAPPED").exists()
    # policy.pth itself holding an object is refused by torch.load(weights_only=True).
    buffer = io.BytesIO()
    torch.save({"weights": _Trap()}, buffer)
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("policy.pth", buffer.getvalue())
    with pytest.raises(ValidationError) as info:
        _build(tmp_path, path="evil.zip", obs_dim=4, num_actions=2)
    assert not (tmp_path / "TRAPPED").exists()
    message = str(info.value)
    assert message.startswith("1 problem found in the spec:\nerror[bad-file]: node 'teacher': "
                              "params.path: 'evil.zip' cannot be read as a stable-baselines3 "
                              "save\n    expected: a zip with policy.pth holding tensors only\n"
                              "    found:    UnpicklingError: ")
    assert message.endswith("    hint: save the model with stable-baselines3's model.save(); "
                            "only policy.pth is read, with torch.load(weights_only=True)")


def test_a_declared_architecture_that_differs_is_a_located_error(tmp_path):
    _sb3_zip(tmp_path / "teacher.zip")
    with pytest.raises(ValidationError) as info:
        _build(tmp_path, path="teacher.zip", obs_dim=4, num_actions=2, hidden=[32, 32])
    assert str(info.value).startswith(
        "1 problem found in the spec:\nerror[architecture-mismatch]: node 'teacher': "
        "params.path: 'teacher.zip' does not hold the declared architecture\n"
        "    expected: obs_dim 4, num_actions 2, hidden [32, 32], discrete\n"
        "    found:    shapes actor.0.bias [64] (declared [32]),")
