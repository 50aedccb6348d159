"""The score-distillation zoo specs: dmd2_toy (a one-step generator, DMD2's two updates),
sds_toy and vsd_toy (a learnable set of particles against the frozen teacher).

The fast tier validates them, trains each for a few steps from a teacher trained for a few
steps (in the folder their ``init: {run: diffusion_teacher_toy}`` looks in), and resumes
``dmd2_toy`` bit-identically after SIGKILL (generator, fake score and both optimizers).
``--slow`` trains the full runs and checks the papers' results on the ring.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _kill_resume import assert_same_final, kill_and_resume
from helpers import QUIET
from safetensors.torch import load_file

from dgraph.api import train
from dgraph.cli import main

FAST = ["nodes.samples.params.num_samples=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("score_distillation")
    train("diffusion_teacher_toy", out=root / "diffusion_teacher_toy",
          overrides=["train.steps=20", "train.eval.every=20", *FAST,
                     "nodes.samples.params.steps=[1]"], **QUIET)
    return root


@pytest.mark.parametrize("name", ["dmd2_toy", "sds_toy", "vsd_toy"])
def test_score_distillation_specs_validate(name, capsys):
    assert main(["validate", name]) == 0
    assert "valid" in capsys.readouterr().out


def test_dmd2_generator_and_fake_score_train_at_their_ratio(runs):
    run = runs / "dmd2_toy"
    summary = train("dmd2_toy", out=run, overrides=["train.steps=6", "train.eval.every=6",
                                                    "train.log_every=1", *FAST], **QUIET)
    for key in ("samples/energy_distance@1", "samples/mode_coverage@1", "samples/in_modes@1"):
        assert torch.isfinite(torch.tensor(summary[key])), key
    teacher = load_file(str(runs / "diffusion_teacher_toy" / "final" / "teacher.safetensors"))
    generator = load_file(str(run / "final" / "generator.safetensors"))
    assert teacher.keys() == generator.keys()  # initialised from the teacher, then trained
    assert any(not torch.equal(teacher[k], generator[k]) for k in teacher)
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_with = {r["step"] for r in rows if "loss/dmd" in r and "eval/loss/dmd" not in r}
    steps_fake = {r["step"] for r in rows if "loss/fake_loss" in r
                  and "eval/loss/fake_loss" not in r}
    assert steps_fake == {1, 2, 3, 4, 5, 6}  # the fake score: every step
    assert steps_with == {1, 6}  # the generator: steps 0 and 5 (logged as 1 and 6)


@pytest.mark.parametrize("name,loss", [("sds_toy", "sds"), ("vsd_toy", "vsd")])
def test_particles_train_a_few_steps_against_the_teacher(name, loss, runs):
    run = runs / name
    summary = train(name, out=run, overrides=["train.steps=5", "train.eval.every=5"], **QUIET)
    for key in ("energy_distance", "mode_coverage", "in_modes", "spread"):
        assert torch.isfinite(torch.tensor(summary[f"samples/{key}"])), key
    assert f"loss/{loss}" in summary
    (particles,) = load_file(str(run / "final" / "particles.safetensors")).values()
    assert particles.shape == (512, 2) and torch.isfinite(particles).all()


RESUME = ["train.steps=12", "train.checkpoint_every=2", "train.eval.every=1000",
          "updates.generator.every=3", *FAST]


def test_dmd2_toy_resume_after_sigkill_is_bit_identical(runs):
    """Killed in a subprocess, resumed here; the reference also runs here (one thread)."""
    reference, killed = runs / "dmd2_reference", runs / "dmd2_killed"
    # killed after step 4 (between generator updates at 0, 3, 6, 9)
    kill_and_resume("dmd2_toy", reference, killed, RESUME, kill_after=4)
    assert_same_final(reference, killed, ("generator", "fake_score"))


@pytest.mark.slow
def test_dmd2_one_step_and_vsd_diversity_against_sds(tmp_path):
    teacher = train("diffusion_teacher_toy", out=tmp_path / "diffusion_teacher_toy", **QUIET)
    dmd2 = train("dmd2_toy", out=tmp_path / "dmd2_toy", **QUIET)
    assert dmd2["samples/mode_coverage@1"] == 1.0
    assert teacher["samples/energy_distance@1"] > 10 * dmd2["samples/energy_distance@1"]
    sds = train("sds_toy", out=tmp_path / "sds_toy", **QUIET)
    vsd = train("vsd_toy", out=tmp_path / "vsd_toy", **QUIET)
    assert vsd["samples/mode_coverage"] == 1.0 and vsd["samples/energy_distance"] < 0.05
    assert sds["samples/energy_distance"] > 10 * vsd["samples/energy_distance"]
