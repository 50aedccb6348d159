"""The RL zoo specs: a few steps each, exact resume of rl_distill_cartpole and of
rl_qdagger_cartpole (its replay buffer), RND with an intrinsic critic, the student's ONNX
export played in the env with onnxruntime; ``--slow``: the returns the zoo promises."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dgraph.components.rl.metrics import play_episodes
from dgraph.components.rl.policy import CategoricalPolicy
from helpers import ENV, QUIET
from safetensors.torch import load_file

from dgraph.api import train
from dgraph.graph import validate
from dgraph.registry import COMPONENTS, BuildContext
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec

FEW = ["train.eval.every=40", "nodes.episode_return.params.episodes=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """rl_teacher_cartpole trained for 40 steps (two rollouts), where rl_distill_cartpole
    looks for its teacher."""
    root = tmp_path_factory.mktemp("rl")
    train("rl_teacher_cartpole", out=root / "rl_teacher_cartpole",
          overrides=["train.steps=40", *FEW], **QUIET)
    return root


def test_the_teacher_spec_trains_and_reports_episode_returns(runs):
    summary = json.loads((runs / "rl_teacher_cartpole" / "summary.json").read_text())
    assert {"episode_return/mean", "episode_return/min", "loss/ppo_clip",
            "loss/value"} <= set(summary)
    assert summary["episode_return/env_steps"] == 2 * 32 * 8  # two rollouts of 32 x 8 envs
    assert 8 <= summary["episode_return/min"] <= summary["episode_return/mean"] <= 500


def _distill(run: Path, *extra: str) -> list[str]:
    return ["train.steps=60", "train.checkpoint_every=20", *FEW,
            "nodes.teacher_episode_return.params.episodes=2", *extra]


def test_distill_spec_trains_and_resumes_bit_identically(runs):
    reference = runs / "rl_distill_cartpole"
    summary = train("rl_distill_cartpole", out=reference, overrides=_distill(reference), **QUIET)
    assert {"episode_return/mean", "episode_return/min", "teacher_episode_return/mean",
            "teacher_episode_return/min", "loss/ce", "loss/kl"} <= set(summary)
    # Resume from the checkpoint of step 40 (collections at steps 0, 20, 40: the resumed run
    # restores the envs mid-episode and the aggregated dataset).
    resumed = runs / "rl_distill_resumed"
    shutil.copytree(reference, resumed)
    for path in ("final", "summary.json"):
        target = resumed / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    (resumed / "checkpoints" / "step_00000060.pt").unlink(missing_ok=True)
    for extra in (resumed / "checkpoints").glob("step_*60*"):
        extra.unlink()
    graph, _ = validate(load_spec("rl_distill_cartpole", _distill(resumed)))
    Trainer(graph, resumed, **QUIET).run(resume=True)
    for name in ("student",):
        a = load_file(str(reference / "final" / f"{name}.safetensors"))
        b = load_file(str(resumed / "final" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((resumed / "summary.json").read_text()) == \
        json.loads((reference / "summary.json").read_text())


def _qdagger(*extra: str) -> list[str]:
    return ["train.steps=30", "train.checkpoint_every=10", *FEW,
            "nodes.replay.params.learning_starts=64", *extra]


def test_qdagger_spec_trains_from_replay_and_resumes_bit_identically(runs):
    reference = runs / "rl_qdagger_cartpole"
    summary = train("rl_qdagger_cartpole", out=reference, overrides=_qdagger(), **QUIET)
    assert {"episode_return/mean", "episode_return/min", "loss/td", "loss/distill"} \
        <= set(summary)
    assert summary["episode_return/env_steps"] == 64 + 30 * 8  # warm-up, then 8 a step
    # Resume from step 20's checkpoint: the ring buffer, its position, the envs mid-episode.
    resumed = runs / "rl_qdagger_resumed"
    shutil.copytree(reference, resumed)
    for path in ("final", "summary.json"):
        target = resumed / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for extra in (resumed / "checkpoints").glob("step_*30*"):
        extra.unlink()
    graph, _ = validate(load_spec("rl_qdagger_cartpole", _qdagger()))
    Trainer(graph, resumed, **QUIET).run(resume=True)
    for name in ("student", "target"):
        a = load_file(str(reference / "final" / f"{name}.safetensors"))
        b = load_file(str(resumed / "final" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((resumed / "summary.json").read_text()) == summary


def test_privileged_spec_gives_the_teacher_the_state_and_the_student_frames(runs):
    overrides = ["train.steps=20", *FEW, "nodes.teacher_episode_return.params.episodes=2"]
    summary = train("rl_privileged_cartpole", out=runs / "rl_privileged_cartpole",
                    overrides=overrides, **QUIET)
    assert {"episode_return/mean", "episode_return/min", "teacher_episode_return/mean",
            "teacher_episode_return/min"} <= set(summary)
    graph, _ = validate(load_spec("rl_privileged_cartpole", overrides))
    assert graph.nodes["env"].outputs["obs"].shape == "B, 6"  # (x, theta) x 3 frames


def test_rnd_spec_trains_two_updates_on_one_rollout(runs):
    summary = train("rl_rnd", out=runs / "rl_rnd", overrides=[
        "train.steps=32", "train.eval.every=32", "nodes.episode_return.params.episodes=2",
        "nodes.novelty.params.samples=16"], **QUIET)
    assert {"episode_return/mean", "episode_return/min", "episode_return/terminated",
            "novelty/seen", "novelty/unseen", "novelty/ratio", "loss/distill",
            "loss/ppo_clip"} <= set(summary)
    # Both updates read the same minibatch each step: 32 steps are 2 rollouts of 16 calls.
    assert summary["episode_return/env_steps"] == 2 * 128 * 8


def test_rnd_with_an_intrinsic_critic_trains_both_value_heads(runs, tmp_path):
    spec = tmp_path / "rl_rnd_two_heads.yaml"  # not beside the runs: 'rl_rnd' is a run there
    spec.write_text(
        "dgraph: 1\nname: rl_rnd_two_heads\nextends: rl_rnd\nnodes:\n"
        "  rollout: {params: {intrinsic_critic: int_critic}}\n"
        "  int_critic:\n    kind: model\n    type: mlp_value\n"
        "    params: {obs_dim: 2, hidden: [64, 64]}\n    inputs: {obs: rollout.obs}\n"
        "  int_value:\n    kind: loss\n    type: value_loss\n"
        "    inputs: {value: int_critic.value, returns: rollout.int_returns}\n"
        "updates:\n  critic:\n    optimizer: {type: adam, lr: 0.0003}\n"
        "    params: [int_critic]\n    objective: {int_value: 0.5}\n")
    summary = train(spec, out=runs / "rl_rnd_two_heads", overrides=[
        "train.steps=16", "train.eval.every=16", "nodes.episode_return.params.episodes=2",
        "nodes.novelty.params.samples=16"], **QUIET)
    assert {"loss/int_value", "loss/value", "loss/distill", "episode_return/mean"} \
        <= set(summary)
    first = load_file(str(runs / "rl_rnd_two_heads" / "final" / "int_critic.safetensors"))
    assert first and all(torch.isfinite(v).all() for v in first.values())


class _OnnxPolicy:
    """An onnxruntime session that acts like a policy module for ``play_episodes``."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.actions: list[np.ndarray] = []

    def parameters(self):
        return iter(())

    def forward(self, obs):
        (logits,) = self.session.run(["logits"], {"obs": obs.numpy()})
        self.actions.append(logits.argmax(-1))
        return {"logits": torch.from_numpy(logits)}

    __call__ = forward


class _Recording(torch.nn.Module):
    def __init__(self, policy) -> None:
        super().__init__()
        self.policy = policy
        self.actions: list[np.ndarray] = []

    def forward(self, obs):
        out = self.policy(obs=obs)
        self.actions.append(out["logits"].argmax(-1).numpy())
        return out


def test_the_distilled_student_exports_to_onnx_and_plays_the_same_episodes(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    from dgraph.exporters import export_run

    run = runs / "rl_distill_cartpole"
    if not (run / "final").exists():
        train("rl_distill_cartpole", out=run, overrides=_distill(run), **QUIET)
    out = tmp_path / "student.onnx"
    export_run(run, out, log=lambda _m: None)
    spec = load_spec("rl_distill_cartpole")
    student = CategoricalPolicy.create(**spec.nodes["student"].params)
    student.load_state_dict(load_file(str(run / "final" / "student.safetensors")))
    env = COMPONENTS.get("gym_env")
    config = env(env.Params.model_validate(spec.nodes["env"].params), node="env").build(
        BuildContext(node="env")).info["gym"]
    torch_policy, onnx_policy = _Recording(student.eval()), _OnnxPolicy(out)
    with torch.no_grad():
        expected = play_episodes(torch_policy, config, 3, 1_000_000)
    found = play_episodes(onnx_policy, config, 3, 1_000_000)
    assert found == expected
    assert len(onnx_policy.actions) == len(torch_policy.actions)
    assert all(np.array_equal(a, b) for a, b in zip(onnx_policy.actions, torch_policy.actions,
                                                    strict=True))


# -- the long tier -----------------------------------------------------------------------------
def _cli(spec: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dgraph.cli", "train", spec, "--out",
                             str(out), "--quiet", *extra], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_the_zoo_teacher_and_student_reach_the_promised_returns(tmp_path):
    teacher = train("rl_teacher_cartpole", out=tmp_path / "rl_teacher_cartpole", **QUIET)
    assert teacher["episode_return/mean"] >= 475, teacher
    student = train("rl_distill_cartpole", out=tmp_path / "rl_distill_cartpole", **QUIET)
    assert student["episode_return/mean"] >= 475, student
    assert student["teacher_episode_return/mean"] == teacher["episode_return/mean"]


@pytest.mark.slow
def test_qdagger_student_reaches_the_teachers_return(tmp_path):
    teacher = train("rl_teacher_cartpole", out=tmp_path / "rl_teacher_cartpole", **QUIET)
    student = train("rl_qdagger_cartpole", out=tmp_path / "rl_qdagger_cartpole", **QUIET)
    assert student["episode_return/mean"] >= min(475.0, teacher["episode_return/mean"]), student


@pytest.mark.slow
def test_distill_sigkill_then_resume_is_bit_identical(runs, tmp_path):
    overrides = [x for o in ["train.steps=300", "train.checkpoint_every=10",
                             "train.eval.every=100"] for x in ("--set", o)]
    shutil.copytree(runs / "rl_teacher_cartpole", tmp_path / "rl_teacher_cartpole")
    reference = tmp_path / "reference"
    done = _cli("rl_distill_cartpole", reference, *overrides)
    assert done.wait(timeout=600) == 0, done.stderr.read() if done.stderr else ""
    interrupted = tmp_path / "interrupted"
    proc = _cli("rl_distill_cartpole", interrupted, *overrides)
    deadline = time.monotonic() + 600
    while len(list((interrupted / "checkpoints").glob("step_*.pt"))
               if (interrupted / "checkpoints").exists() else []) < 2 \
            or max(int(p.stem.split("_")[1]) for p in
                   (interrupted / "checkpoints").glob("step_*.pt")) < 130:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = _cli("rl_distill_cartpole", interrupted, *overrides, "--resume")
    assert again.wait(timeout=600) == 0, again.stderr.read() if again.stderr else ""
    for name in ("student",):
        a = load_file(str(reference / "final" / f"{name}.safetensors"))
        b = load_file(str(interrupted / "final" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
