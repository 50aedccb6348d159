"""The method zoo's specs train for a few steps, draw, and keep their state where promised.

Real torch training on digits (no mocks); the teachers are trained for a few steps first, in
the folder the students' ``init: {run: ...}`` looks in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dgraph.components.data._dd_eval import random_real_set, train_on_set
from helpers import QUIET, make_trainer

from dgraph.api import train
from dgraph.graph import validate
from dgraph.runtime.checkpoint import latest_checkpoint, load_checkpoint, load_weights
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec, zoo_names
from dgraph.viz import render

ZOO = ["fitnet", "at", "rkd", "dkd", "crd", "born_again", "multi_teacher", "dd_dm"]
TEACHERS = ["teacher_digits", "teacher_digits_cnn"]
# dd_dm's evaluator nodes (dd_evaluator), one seed and a few steps: the default trains 12
# networks for 300 steps at each evaluation.
DD_FAST = [f"nodes.{node}.params.{value}" for node in ("synthetic", "random_real")
           for value in ("seeds=[0]", "steps=20")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    for name in TEACHERS:
        train(name, out=root / name, overrides=["train.steps=20"], **QUIET)
    return root


def test_the_zoo_lists_every_method():
    assert set(ZOO + TEACHERS) <= set(zoo_names())


@pytest.mark.parametrize("name", ZOO)
def test_zoo_spec_trains_a_few_steps_and_draws(name, runs):
    run = runs / name
    summary = train(name, out=run, overrides=["train.steps=10", "train.eval.every=10",
                                              *(DD_FAST if name == "dd_dm" else [])], **QUIET)
    assert summary, name
    assert all(torch.isfinite(torch.tensor(v)) for v in summary.values()), summary
    if name != "dd_dm":
        assert 0.0 <= summary["student/accuracy"] <= 1.0
    else:
        assert 0.0 <= summary["synthetic/accuracy"] <= 1.0
        assert 0.0 <= summary["random_real/accuracy"] <= 1.0
    svg = render(validate(load_spec(name))[0], str(runs / f"{name}.svg"))
    del svg
    assert (runs / f"{name}.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert (run / "graph.svg").exists()


def test_every_zoo_spec_names_its_paper_in_the_header():
    specs = Path(__file__).resolve().parents[2] / "specs"
    papers = {"at": "Zagoruyko", "rkd": "Park", "dkd": "Zhao", "crd": "Tian",
              "born_again": "Furlanello", "multi_teacher": "Multi-teacher", "dd_dm": "Bilen"}
    for name, author in papers.items():
        header = (specs / f"{name}.yaml").read_text().split("dgraph: 1")[0]
        assert author.lower() in header.lower() and "L" in header, name


def test_crd_memory_bank_is_saved_in_checkpoints_and_restored(runs):
    run = runs / "crd_ckpt"
    overrides = ["train.steps=6", "train.checkpoint_every=3", "train.eval.every=6"]
    # CRD's teacher run is looked for beside the run: the module-level teacher run.
    trainer = make_trainer("crd", run, *overrides)
    initial = trainer.instances.modules["crd"].memory_teacher.clone()
    trainer.run()
    bank = trainer.instances.modules["crd"]
    assert not torch.equal(bank.memory_teacher, initial)  # training wrote into the bank
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert torch.equal(state["modules"]["crd"]["memory_teacher"], bank.memory_teacher)
    assert torch.equal(state["modules"]["crd"]["memory_student"], bank.memory_student)

    fresh = make_trainer("crd", runs / "crd_ckpt_fresh", *overrides)
    assert not torch.equal(fresh.instances.modules["crd"].memory_teacher, bank.memory_teacher)
    fresh.load_state(state, run)
    assert torch.equal(fresh.instances.modules["crd"].memory_teacher, bank.memory_teacher)
    assert torch.equal(fresh.instances.modules["crd"].memory_student, bank.memory_student)


def test_crd_resumed_run_ends_with_the_same_bank(runs):
    # A constant learning rate: the first part of the run can then be a run of 3 steps.
    constant = ("updates.main.scheduler.type=constant", "train.checkpoint_every=3")
    straight = make_trainer("crd", runs / "crd_straight", "train.steps=6", *constant)
    straight.run()
    # The same run stopped after step 3 (its checkpoint), then resumed.
    first = make_trainer("crd", runs / "crd_resumed", "train.steps=3", *constant)
    first.run()
    resumed = make_trainer("crd", runs / "crd_resumed", "train.steps=6", *constant)
    resumed.run(resume=True)
    for name in ("memory_student", "memory_teacher"):
        assert torch.equal(getattr(straight.instances.modules["crd"], name),
                           getattr(resumed.instances.modules["crd"], name)), name


def test_born_again_rounds_copy_the_student_into_the_teacher(runs):
    graph, _ = validate(load_spec("born_again", ["train.steps=30"]))
    (runs / "born_again_rounds").mkdir()
    trainer = Trainer(graph, runs / "born_again_rounds", **QUIET)
    seen = []
    begin = trainer.begin_stage

    def record(stage):
        def weights(node):
            return {k: v.clone() for k, v in trainer.instances.modules[node].state_dict().items()}

        student = weights("student")
        begin(stage)
        teacher, fresh = weights("teacher"), weights("student")
        seen.append((stage.name, all(torch.equal(student[k], teacher[k]) for k in student),
                     any(not torch.equal(student[k], fresh[k]) for k in student)))

    trainer.begin_stage = record
    trainer.run()
    assert seen == [("gen0", False, False), ("gen1", True, True), ("gen2", True, True)]


def test_dd_dm_learns_the_synthetic_set_through_the_frozen_random_network(runs):
    run = runs / "dd_dm_short"
    graph, _ = validate(load_spec("dd_dm", ["train.steps=5", *DD_FAST]))
    run.mkdir()
    trainer = Trainer(graph, run, **QUIET)
    syn = trainer.instances.modules["syn"]
    before = syn.images.detach().clone()
    assert list(syn.labels) == [c for c in range(10) for _ in range(10)]
    assert list(trainer.instances.modules["embed"].parameters()) == []
    trainer.run()
    assert not torch.equal(syn.images.detach(), before)
    saved = load_weights(run / "final" / "syn.safetensors")
    assert torch.equal(saved["images"], syn.images.detach())
    # The embedding network is re-sampled at every call, from the global generator.
    embed = trainer.instances.modules["embed"]
    x = torch.rand(4, 1, 8, 8)
    torch.manual_seed(0)
    a = embed(real=x, synthetic=x)["real_features"]
    b = embed(real=x, synthetic=x)["real_features"]
    torch.manual_seed(0)
    c = embed(real=x, synthetic=x)["real_features"]
    assert not torch.equal(a, b) and torch.equal(a, c)


def test_synthetic_set_evaluation_trains_only_on_the_set():
    images, labels = random_real_set(2, seed=0)
    assert images.shape == (20, 1, 8, 8) and labels.tolist() == [c for c in range(10)
                                                                 for _ in range(2)]
    state = torch.random.get_rng_state()
    first = train_on_set(images, labels, seed=0, steps=50)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert first == train_on_set(images, labels, seed=0, steps=50)
    assert 0.3 < first <= 1.0
    noise = torch.rand(20, 1, 8, 8)
    assert train_on_set(noise, labels, seed=0, steps=50) < first


@pytest.mark.parametrize("name", zoo_names())
def test_every_zoo_spec_passes_validation_with_the_dry_run(name, capsys):
    """What `dgraph validate NAME` does: static checks, then the meta-device dry run."""
    from dgraph.cli import main

    assert main(["validate", name]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"{name}: valid (")
