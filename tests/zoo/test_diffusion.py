"""The diffusion zoo specs: the ring's teacher, progressive and consistency distillation.

The fast tier validates them, trains each for a few steps (the teacher first, in the folder
the students' ``init: {run: diffusion_teacher_toy}`` looks in), checks the located errors of
a prediction-type mismatch and of timesteps outside the scheduler, and resumes
``consistency_toy`` bit-identically after SIGKILL. ``--slow`` trains the zoo's full runs and
checks the papers' result: the few-step students far better than the teacher at 1 step.
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

FAST = ["nodes.samples.params.num_samples=64", "nodes.samples.params.steps=[1, 2]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diffusion")
    train("diffusion_teacher_toy", out=root / "diffusion_teacher_toy",
          overrides=["train.steps=20", "train.eval.every=20", *FAST], **QUIET)
    return root


@pytest.mark.parametrize("name", ["diffusion_teacher_toy", "progressive_toy",
                                  "consistency_toy", "diffusion_teacher_digits",
                                  "consistency_digits"])
def test_diffusion_specs_validate(name, capsys):
    assert main(["validate", name]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["progressive_toy", "consistency_toy"])
def test_students_train_a_few_steps_from_the_teacher(name, runs):
    run = runs / name
    summary = train(name, out=run, overrides=["train.steps=8", "train.eval.every=8", *FAST],
                    **QUIET)
    for key in ("samples/energy_distance@1", "samples/energy_distance@2",
                "samples/mode_coverage@1", "samples/in_modes@2"):
        assert key in summary and torch.isfinite(torch.tensor(summary[key])), key
    teacher = load_file(str(runs / "diffusion_teacher_toy" / "final" / "teacher.safetensors"))
    student = load_file(str(run / "final" / "student.safetensors"))
    assert teacher.keys() == student.keys()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # it trained


def test_digits_teacher_and_consistency_student_train_a_few_steps(runs):
    """The judge CNN's run and the teacher's are trained first (a few steps), beside."""
    tiny = ["nodes.samples.params.num_samples=20", "nodes.samples.params.steps=[1]",
            "train.steps=3", "train.eval.every=3"]
    train("teacher_digits_cnn", out=runs / "teacher_digits_cnn", overrides=["train.steps=3"],
          **QUIET)
    teacher = train("diffusion_teacher_digits", out=runs / "diffusion_teacher_digits",
                    overrides=tiny, **QUIET)
    student = train("consistency_digits", out=runs / "consistency_digits", overrides=tiny,
                    **QUIET)
    for summary in (teacher, student):
        for key in ("frechet@1", "class_coverage@1", "class_accuracy@1", "energy_distance@1"):
            value = summary[f"samples/{key}"]
            assert torch.isfinite(torch.tensor(value)), key
        assert 0.0 <= summary["samples/class_accuracy@1"] <= 1.0


def test_progressive_stages_halve_the_grid_and_copy_the_student(runs):
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    spec = load_spec("progressive_toy")
    stages = spec.stages
    assert [s.updates for s in stages] == [["to_8"], ["to_4"], ["to_2"], ["to_1"]]
    assert [s.copy_weights for s in stages] == [{}] + [{"teacher": "student"}] * 3
    assert [spec.nodes[f"t_{n}"].params["grid_steps"] for n in (8, 4, 2, 1)] == [8, 4, 2, 1]
    graph, problems = validate(spec)
    assert graph is not None and not [p for p in problems if p.severity == "error"]


def test_prediction_type_mismatch_is_located(capsys):
    code = main(["validate", "progressive_toy", "--set",
                 "nodes.teacher.params.prediction_type=epsilon"])
    text = "".join(capsys.readouterr())
    assert code == 1
    assert "progressive_toy.yaml:" in text and "error[prediction-type-mismatch]" in text
    assert ("params.denoiser: the denoiser predicts 'epsilon' but the scheduler reads its "
            "output as 'v_prediction'") in text


def test_timesteps_outside_the_scheduler_are_located(capsys, tmp_path):
    code = main(["validate", "diffusion_teacher_toy", "--set", "nodes.t.params.high=1000"])
    text = "".join(capsys.readouterr())
    assert code == 1
    assert ("<--set nodes.t.params.high=1000>: error[timestep-range]: node 't': params.high: "
            "timestep 1000 is outside the scheduler's range") in text
    assert "hint: the scheduler's timesteps are 0..999 (num_train_timesteps 1000)" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("dgraph: 1\nname: bad\nextends: diffusion_teacher_toy\nnodes:\n  t:\n"
                   "    params: {mode: fixed, value: 5000}\n")
    assert main(["validate", str(bad)]) == 1
    text = "".join(capsys.readouterr())
    assert f"{bad}:6:" in text and "error[timestep-range]" in text
    assert "params.value: timestep 5000 is outside the scheduler's range" in text


RESUME = ["train.steps=12", "train.checkpoint_every=2", "train.eval.every=1000", *FAST]


def test_consistency_toy_resume_after_sigkill_is_bit_identical(runs):
    """Killed in a subprocess, resumed here; the reference also runs here (one thread)."""
    reference, killed = runs / "cd_reference", runs / "cd_killed"
    kill_and_resume("consistency_toy", reference, killed, RESUME)
    # the EMA target is saved and restored too
    assert_same_final(reference, killed, ("student", "target"))


@pytest.mark.slow
def test_few_step_students_beat_the_teacher_at_one_step(tmp_path):
    teacher = train("diffusion_teacher_toy", out=tmp_path / "diffusion_teacher_toy", **QUIET)
    assert teacher["samples/energy_distance@50"] < 0.01
    assert teacher["samples/mode_coverage@50"] == 1.0
    for name in ("progressive_toy", "consistency_toy"):
        student = train(name, out=tmp_path / name, **QUIET)
        assert student["samples/energy_distance@1"] < 0.05, name
        assert student["samples/mode_coverage@1"] == 1.0, name
        assert teacher["samples/energy_distance@1"] > 10 * student["samples/energy_distance@1"]
