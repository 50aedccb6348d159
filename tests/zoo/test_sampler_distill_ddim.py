"""The learned DDIM solver's zoo specs: sampler_distill_ddim_toy (the ring's DDIM teacher) and
sampler_distill_digits (the digits' guided UNet teacher).

The fast tier validates them, trains each for a few steps from a teacher trained for a few
steps (in the folder their ``init: {run: ...}`` looks in): only the solvers' timesteps and
coefficients train and are saved, the learned and the plain samplers are both evaluated, and
each resumes bit-identically after SIGKILL (solvers and optimizer state). ``--slow`` trains
the ring's zoo runs and checks that the learned solvers beat plain DDIM at few steps.
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

RING = ["nodes.samples.params.num_samples=64", "nodes.plain.params.num_samples=64",
        "nodes.plain.params.steps=[1, 50]"]
DIGITS = ["nodes.samples.params.num_samples=20", "nodes.samples.params.steps=[1, 2]",
          "nodes.plain.params.num_samples=20", "nodes.plain.params.steps=[1]",
          "nodes.data.params.batch_size=8", "nodes.reference.params.steps=4",
          "nodes.solver.params.steps=[1, 2]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The ring's and the digits' teachers (and the digits judge), a few steps each."""
    root = tmp_path_factory.mktemp("sampler_ddim")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train("diffusion_teacher_toy", out=root / "diffusion_teacher_toy",
              overrides=["train.steps=20", "train.eval.every=20",
                         "nodes.samples.params.num_samples=64",
                         "nodes.samples.params.steps=[1]"], **QUIET)
        train("teacher_digits_cnn", out=root / "teacher_digits_cnn",
              overrides=["train.steps=3"], **QUIET)
        train("diffusion_teacher_digits", out=root / "diffusion_teacher_digits",
              overrides=["nodes.samples.params.num_samples=20", "nodes.samples.params.steps=[1]",
                         "train.steps=3", "train.eval.every=3"], **QUIET)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("name", ["sampler_distill_ddim_toy", "sampler_distill_digits"])
def test_ddim_sampler_specs_validate(name, capsys):
    assert main(["validate", name]) == 0
    assert capsys.readouterr().out.startswith(f"{name}: valid (")


def solver_keys(steps):
    return sorted(f"{g}.{k}" for g in ("extrapolate", "logits", "scale", "start") for k in steps)


def test_ring_sampler_distillation_trains_only_the_solver(runs):
    run = runs / "sampler_distill_ddim_toy"
    summary = train("sampler_distill_ddim_toy", out=run,
                    overrides=["train.steps=6", "train.eval.every=6", *RING], **QUIET)
    assert_finite(summary, [f"samples/{m}@{k}" for m in ("energy_distance", "mode_coverage")
                     for k in (1, 2, 4, 8)])
    assert_finite(summary, ["plain/energy_distance@1", "plain/energy_distance@50"])
    assert sorted(p.name for p in (run / "final").glob("*.safetensors")) == \
        ["solver.safetensors"]  # the teacher is frozen: never trained, never saved
    solver = load_file(str(run / "final" / "solver.safetensors"))
    assert sorted(solver) == solver_keys((1, 2, 4, 8))
    assert not torch.equal(solver["logits.4"], torch.zeros(4))  # the timesteps moved
    assert not torch.equal(solver["start.2"], torch.ones(1))  # 999 / 999 at the start
    assert not torch.equal(solver["scale.1"], torch.ones(1))


def test_digits_sampler_distillation_trains_only_the_solver(runs):
    run = runs / "sampler_distill_digits"
    summary = train("sampler_distill_digits", out=run,
                    overrides=["train.steps=2", "train.eval.every=2", *DIGITS], **QUIET)
    assert_finite(summary, [f"samples/{m}@{k}" for m in ("frechet", "class_coverage",
                                                    "class_accuracy") for k in (1, 2)])
    assert_finite(summary, ["plain/frechet@1", "plain/class_accuracy@1"])
    assert sorted(p.name for p in (run / "final").glob("*.safetensors")) == \
        ["solver.safetensors"]
    solver = load_file(str(run / "final" / "solver.safetensors"))
    assert sorted(solver) == solver_keys((1, 2))
    assert not torch.equal(solver["logits.2"], torch.zeros(2))


def test_a_step_count_without_a_solver_is_located(capsys):
    code = main(["validate", "sampler_distill_ddim_toy", "--set",
                 "nodes.samples.params.steps=[1, 2, 16]"])
    text = "".join(capsys.readouterr())
    assert code == 1
    assert ("<--set nodes.samples.params.steps=[1, 2, 16]>: error[bad-param]: node 'samples': "
            "params.steps: the sampler node takes [1, 2, 4, 8] steps, not [16]") in text


RESUME = ["train.steps=8", "train.checkpoint_every=2", "train.eval.every=1000"]


@pytest.mark.parametrize(("name", "extra"), [
    ("sampler_distill_ddim_toy", ["nodes.reference.params.steps=8",
                                  "nodes.solver.params.steps=[2, 4]",
                                  "nodes.samples.params.steps=[2]", *RING]),
    ("sampler_distill_digits", [*DIGITS, "nodes.data.params.batch_size=2",
                                "nodes.reference.params.steps=2", "nodes.solver.params.steps=[1]",
                                "nodes.samples.params.steps=[1]",
                                "nodes.samples.params.num_samples=10",
                                "nodes.plain.params.num_samples=10"])])
def test_resume_after_sigkill_is_bit_identical(runs, name, extra):
    """Killed in a subprocess, resumed here; the reference also runs here (one thread)."""
    reference, killed = runs / f"{name}_reference", runs / f"{name}_killed"
    kill_and_resume(name, reference, killed, [*RESUME, *extra])
    expected = assert_same_final(reference, killed, ("solver",))["solver"]
    steps = (2, 4) if name == "sampler_distill_ddim_toy" else (1,)
    assert sorted(expected) == solver_keys(steps)


@pytest.mark.slow
def test_learned_ddim_solver_beats_plain_ddim_at_few_steps(tmp_path):
    train("diffusion_teacher_toy", out=tmp_path / "diffusion_teacher_toy", **QUIET)
    learned = train("sampler_distill_ddim_toy", out=tmp_path / "sampler_distill_ddim_toy",
                    **QUIET)
    for k in (2, 4):
        assert learned[f"samples/energy_distance@{k}"] < learned[f"plain/energy_distance@{k}"]
    assert learned["samples/in_modes@4"] > learned["plain/in_modes@4"]
