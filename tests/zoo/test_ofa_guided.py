"""The zoo's `ofa_kd` and `self_distill_guided`: a few real training steps each, the reverse
OFA variant and the baselines of benchmarks/ofa_guided.py, and the closed-form weight of each
round checked against the teacher's features and predictions on the training split."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from dgraph.components.losses.guided import kernel_ridge_alpha
from helpers import QUIET

from dgraph.api import train
from dgraph.graph import validate
from dgraph.runtime.checkpoint import latest_checkpoint, load_checkpoint
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec, zoo_names

ROOT = Path(__file__).resolve().parents[2]
FEW = ["train.steps=10", "train.eval.every=10"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ofa_guided")
    for name in ("teacher_digits", "teacher_digits_cnn"):
        train(name, out=root / name, overrides=["train.steps=20"], **QUIET)
    return root


def _benchmark():
    spec = importlib.util.spec_from_file_location("ofa_guided",
                                                  ROOT / "benchmarks" / "ofa_guided.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_specs_are_in_the_zoo_and_name_their_papers():
    assert {"ofa_kd", "self_distill_guided"} <= set(zoo_names())
    for name, author in (("ofa_kd", "Hao et al."), ("self_distill_guided", "Borup & Andersen")):
        header = (ROOT / "specs" / f"{name}.yaml").read_text().split("dgraph: 1")[0]
        assert author in header and "L" in header, name


def test_ofa_kd_trains_the_student_and_its_branches(runs):
    graph, _ = validate(load_spec("ofa_kd", FEW))
    run = runs / "ofa_kd"
    run.mkdir()
    trainer = Trainer(graph, run, **QUIET)
    before = {n: [p.detach().clone() for p in trainer.instances.modules[n].parameters()]
              for n in ("student", "branch1", "branch2")}
    summary = trainer.run()
    assert 0.0 <= summary["student/accuracy"] <= 1.0
    assert all(torch.isfinite(torch.tensor(summary[f"loss/{n}"])) for n in ("ofa", "ofa1",
                                                                             "ofa2"))
    for name, old in before.items():
        new = list(trainer.instances.modules[name].parameters())
        assert any(not torch.equal(a, b.detach()) for a, b in zip(old, new, strict=True)), name
    assert (run / "final" / "student.safetensors").exists()


def test_the_benchmark_variants_validate_and_train_a_few_steps(runs, tmp_path):
    specs = _benchmark().write_specs(tmp_path / "specs")
    assert set(specs) == {"kd_hetero", "scratch_hetero", "ofa_kd_reverse", "kd_reverse",
                          "scratch_reverse"}
    for name in ("ofa_kd_reverse", "kd_hetero"):
        summary = train(str(specs[name]), out=runs / name, overrides=FEW, **QUIET)
        assert 0.0 <= summary["student/accuracy"] <= 1.0, name
    reverse, _ = validate(load_spec(str(specs["ofa_kd_reverse"])))
    assert reverse.nodes["teacher"].spec.type == "mlp"
    assert reverse.nodes["student"].spec.type == "cnn"


def test_self_distill_guided_computes_the_weight_of_each_round(runs):
    # 30 steps: gen0 (labels), gen1 and gen2 (guided) of 10 steps each.
    graph, _ = validate(load_spec("self_distill_guided", ["train.steps=30",
                                                          "train.eval.every=30",
                                                          "train.checkpoint_every=30"]))
    run = runs / "self_distill_guided"
    run.mkdir()
    trainer = Trainer(graph, run, **QUIET)
    guided = trainer.instances.modules["guided"]
    data = trainer.instances.data["data"]
    seen: list[tuple[str, float, float]] = []
    begin = trainer.begin_stage

    def record(stage):
        if stage.name == "gen2":  # gen1 is over: its weight, and what it should have been
            seen.append((stage.name, float(guided.alpha), expected))
        begin(stage)

    def closed_form():  # the kernel-ridge weight, scored on a seeded fifth of the train rows
        teacher = trainer.instances.modules["teacher"]
        with torch.no_grad():
            out = teacher(x=data.train["x"])
        probs, feats, labels = torch.softmax(out["logits"], -1), out["features"], data.train["y"]
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        held, rest = order[:round(0.2 * len(labels))], order[round(0.2 * len(labels)):]
        return float(kernel_ridge_alpha(feats[rest], probs[rest], labels[rest], feats[held],
                                        labels[held]))

    trainer.begin_stage = record
    expected = float("nan")
    original = guided.refresh

    def refresh():
        nonlocal expected
        original()
        expected = closed_form()

    guided.refresh = refresh
    summary = trainer.run()
    assert 0.0 <= summary["student/accuracy"] <= 1.0
    assert seen and seen[0][1] == pytest.approx(seen[0][2])
    assert float(guided.alpha) == pytest.approx(closed_form())
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert torch.equal(state["modules"]["guided"]["alpha"], guided.alpha)


def test_self_distill_guided_with_a_fixed_weight(runs):
    summary = train("self_distill_guided", out=runs / "guided_fixed",
                    overrides=["train.steps=30", "train.eval.every=30",
                               "nodes.guided.params.alpha=0.5"], **QUIET)
    assert 0.0 <= summary["student/accuracy"] <= 1.0
