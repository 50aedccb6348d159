"""The flow zoo specs: the ring's flow-matching teacher, the flow-map student and the learned
sampler.

The fast tier validates them, trains each for a few steps (the teacher first, in the folder
the others' ``init: {run: flow_teacher_toy}`` looks in), exports the flow-map student's one
call per step to ONNX (checked with onnxruntime), checks a located error of a step count the
learned sampler has no solver for, and resumes ``sampler_distill_toy`` (its learnable
timesteps and coefficients, and their optimizer) bit-identically after SIGKILL. ``--slow``
trains the zoo's full runs and checks the papers' result: one flow-map jump far better than
one teacher Euler step, and learned few-step solvers better than the plain ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _kill_resume import assert_same_final, kill_and_resume
from helpers import QUIET, assert_finite
from safetensors.torch import load_file

from dgraph.api import train
from dgraph.cli import main

FAST = ["nodes.samples.params.num_samples=64"]
SAMPLER = ["nodes.samples.params.num_samples=64", "nodes.plain.params.num_samples=64",
           "nodes.plain.params.steps=[1, 50]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flow")
    train("flow_teacher_toy", out=root / "flow_teacher_toy",
          overrides=["train.steps=20", "train.eval.every=20", *FAST], **QUIET)
    return root


@pytest.mark.parametrize("name", ["flow_teacher_toy", "flowmap_toy", "sampler_distill_toy"])
def test_flow_specs_validate(name, capsys):
    assert main(["validate", name]) == 0
    assert capsys.readouterr().out.startswith(f"{name}: valid (")


def test_teacher_metrics_at_every_step_count(runs):
    import json

    summary = json.loads((runs / "flow_teacher_toy" / "summary.json").read_text())
    assert_finite(summary, [f"samples/{m}@{k}" for m in ("energy_distance", "mode_coverage")
                     for k in (1, 2, 4, 8, 50)])


def test_flowmap_student_trains_from_the_teacher_and_exports(runs, tmp_path, capsys):
    run = runs / "flowmap_toy"
    summary = train("flowmap_toy", out=run, overrides=["train.steps=6", "train.eval.every=6",
                                                       *FAST], **QUIET)
    assert_finite(summary, [f"samples/{m}@{k}" for m in ("energy_distance", "mode_coverage")
                     for k in (1, 2, 4)])
    teacher = load_file(str(runs / "flow_teacher_toy" / "final" / "teacher.safetensors"))
    student = load_file(str(run / "final" / "student.safetensors"))
    # the teacher's weights, and the second time embedding (time_to.*) beside them
    assert set(student) - set(teacher) == {f"time_to.{i}.{p}" for i in (0, 2)
                                           for p in ("weight", "bias")}
    assert set(teacher) <= set(student)
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # it trained
    onnx = tmp_path / "flowmap.onnx"
    assert main(["export", str(run), "-o", str(onnx)]) == 0
    text = capsys.readouterr().out
    assert "input   to_timestep: Timesteps[B]  dynamic: B" in text
    assert "verified on 2 cases" in text and onnx.is_file()


def test_sampler_distillation_trains_only_the_solver(runs):
    run = runs / "sampler_distill_toy"
    summary = train("sampler_distill_toy", out=run,
                    overrides=["train.steps=6", "train.eval.every=6", *SAMPLER], **QUIET)
    assert_finite(summary, [f"samples/{m}@{k}" for m in ("energy_distance", "mode_coverage")
                     for k in (1, 2, 4, 8)])
    assert_finite(summary, ["plain/energy_distance@1", "plain/energy_distance@50"])
    assert sorted(p.name for p in (run / "final").glob("*.safetensors")) == \
        ["solver.safetensors"]  # the teacher is frozen: never trained, never saved
    solver = load_file(str(run / "final" / "solver.safetensors"))
    assert sorted(solver) == sorted(f"{g}.{k}" for g in ("extrapolate", "logits", "scale")
                                    for k in (1, 2, 4, 8))
    assert not torch.equal(solver["logits.4"], torch.zeros(4))  # the timesteps moved
    assert not torch.equal(solver["scale.1"], torch.ones(1))


def test_a_step_count_without_a_solver_is_located(capsys):
    code = main(["validate", "sampler_distill_toy", "--set",
                 "nodes.samples.params.steps=[1, 2, 16]"])
    text = "".join(capsys.readouterr())
    assert code == 1
    assert ("<--set nodes.samples.params.steps=[1, 2, 16]>: error[bad-param]: node 'samples': "
            "params.steps: the sampler node takes [1, 2, 4, 8] steps, not [16]") in text


RESUME = ["train.steps=8", "train.checkpoint_every=2", "train.eval.every=1000",
          "nodes.reference.params.steps=8", "nodes.solver.params.steps=[2, 4]",
          "nodes.samples.params.steps=[2]", *SAMPLER]


def test_sampler_distill_resume_after_sigkill_is_bit_identical(runs):
    """Killed in a subprocess, resumed here; the reference also runs here (one thread)."""
    reference, killed = runs / "sd_reference", runs / "sd_killed"
    kill_and_resume("sampler_distill_toy", reference, killed, RESUME)
    expected = assert_same_final(reference, killed, ("solver",))["solver"]
    assert sorted(expected) == ["extrapolate.2", "extrapolate.4", "logits.2", "logits.4",
                                "scale.2", "scale.4"]


@pytest.mark.slow
def test_flow_map_and_learned_solver_beat_the_teacher_at_few_steps(tmp_path):
    teacher = train("flow_teacher_toy", out=tmp_path / "flow_teacher_toy", **QUIET)
    assert teacher["samples/energy_distance@50"] < 0.01
    assert teacher["samples/mode_coverage@50"] == 1.0
    student = train("flowmap_toy", out=tmp_path / "flowmap_toy", **QUIET)
    assert student["samples/mode_coverage@1"] == 1.0
    assert teacher["samples/energy_distance@1"] > 10 * student["samples/energy_distance@1"]
    learned = train("sampler_distill_toy", out=tmp_path / "sampler_distill_toy", **QUIET)
    # measured (3 seeds): energy 1.40 -> 0.14 at 1 step, 0.17 -> 0.019 at 2; at 4 steps both
    # energies are near the estimate's noise floor, and the share of samples in a mode tells
    for k in (1, 2):
        assert learned[f"samples/energy_distance@{k}"] < learned[f"plain/energy_distance@{k}"]
    assert learned["samples/mode_coverage@2"] == 1.0
    assert learned["samples/in_modes@4"] > learned["plain/in_modes@4"] + 0.1
