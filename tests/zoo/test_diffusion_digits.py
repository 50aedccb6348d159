"""The digits few-step zoo specs: lcm_lora_digits (LoRA adapters on a frozen copy of the
teacher's UNet, consistency-distilled) and dmd2_digits (a one-step generator, DMD2's two time
scales and GAN head).

The fast tier validates them and trains each for a few steps from a digits teacher and judge
trained for a few steps (in the folder their ``init: {run: ...}`` looks in): the LoRA student
starts as the teacher, only its adapters change, and its export to ONNX (adapters merged into
the UNet) gives the adapted model's outputs under onnxruntime; the DMD2 generator and fake
score train at their ratio with the GAN terms in each objective. Errors of a GAN head
named on a network without a known bottleneck, or without a network or in_features, are
checked in full. ``--slow`` trains the zoo runs and checks the few-step results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUIET
from safetensors.torch import load_file

from dgraph.api import train
from dgraph.cli import main

TINY = ["nodes.samples.params.num_samples=20", "nodes.samples.params.steps=[1]",
        "train.steps=3", "train.eval.every=3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The judge CNN's and the digits teacher's runs, a few steps each."""
    root = tmp_path_factory.mktemp("diffusion_digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train("teacher_digits_cnn", out=root / "teacher_digits_cnn",
              overrides=["train.steps=3"], **QUIET)
        train("diffusion_teacher_digits", out=root / "diffusion_teacher_digits",
              overrides=TINY, **QUIET)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("name", ["lcm_lora_digits", "dmd2_digits"])
def test_digits_few_step_specs_validate(name, capsys):
    assert main(["validate", name]) == 0
    assert f"{name}: valid" in capsys.readouterr().out


LORA = [*TINY, "nodes.samples.params.steps=[1, 2]"]


def test_lcm_lora_starts_as_the_teacher_and_trains_only_its_adapters(runs, tmp_path):
    from dgraph.graph import validate
    from dgraph.runtime.train import Trainer
    from dgraph.spec import load_spec

    torch.set_num_threads(1)
    # The student as the run starts (same seed: same adapters), built beside the teacher.
    graph, _ = validate(load_spec("lcm_lora_digits", LORA))
    (runs / "lcm_lora_start").mkdir()
    trainer = Trainer(graph, runs / "lcm_lora_start", **QUIET)
    student = trainer.instances.modules["student"]
    teacher = load_file(str(runs / "diffusion_teacher_digits" / "final" / "teacher.safetensors"))
    before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    frozen = {k: v for k, v in before.items() if "lora_" not in k}
    assert len(frozen) == len(teacher)  # the frozen copy holds the teacher's run weights
    for key, value in frozen.items():
        name = key.removeprefix("base.").replace("base_model.model.", "", 1) \
            .replace(".base_layer.", ".")
        assert torch.equal(value, teacher[name]), key
    trainable = {n: p.numel() for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    # rank r = 8 on 28 layers (conv1/conv2/time_emb_proj of 7 resnets, q/k/v/out of the mid
    # attention): A is [r, in, k, k], B [out, r] per layer; the full UNet has 652,449
    adapted = [m for n, m in trainer.instances.modules["teacher"].named_modules()
               if n.endswith(("conv1", "conv2", "time_emb_proj", "to_q", "to_k", "to_v",
                              "to_out.0"))]
    assert len(adapted) == 28 and len(trainable) == 2 * 28
    expected = sum(8 * (m.weight[0].numel() + m.weight.shape[0]) for m in adapted)
    assert sum(trainable.values()) == expected == 93_696
    assert sum(p.numel() for p in student.parameters()) - expected == 652_449
    assert all(not v.any() for k, v in before.items() if "lora_B" in k)  # B starts at 0
    summary = train("lcm_lora_digits", out=runs / "lcm_lora_digits", overrides=LORA, **QUIET)
    after = load_file(str(runs / "lcm_lora_digits" / "final" / "student.safetensors"))
    assert after.keys() == before.keys()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all("lora_A" in k or "lora_B" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # B left zero: the adapters act
    for key in ("frechet@1", "class_coverage@1", "frechet@2", "class_coverage@2"):
        assert torch.isfinite(torch.tensor(summary[f"samples/{key}"])), key


def test_lcm_lora_exports_the_merged_unet_equal_to_the_adapted_one(runs, tmp_path):
    import onnx
    import onnxruntime as ort
    from dgraph.components.diffusion.unet import UNetDenoiser
    from dgraph.components.models.lora import LoRA
    from dgraph.exporters import export_run

    from dgraph.registry import BuildContext

    run = runs / "lcm_lora_digits"
    assert (run / "final" / "student.safetensors").exists(), "needs the LoRA test's run"
    out = tmp_path / "student.onnx"
    export_run(run, out, check=False)  # checked below against the unmerged adapters
    names = [init.name for init in onnx.load(str(out)).graph.initializer]
    assert names and not any("lora" in n for n in names)  # merged: the plain UNet
    # The adapted model as trained: a copy of the teacher with the trained adapters.
    spec = json.loads(json.dumps(_student_params()))
    base = UNetDenoiser.create(**spec["base"]).eval()
    lora = LoRA.create(BuildContext(node="student", references={"base": base}),
                       base="base", **spec["lora"]).eval()
    lora.load_state_dict(load_file(str(run / "final" / "student.safetensors")))
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    t = torch.tensor([999, 759, 499, 259, 39, 0])
    y = torch.tensor([0, 1, 2, 3, 9, 10])  # 10: the null class
    with torch.no_grad():
        expected = lora(sample=x, timestep=t, class_labels=y)["prediction"].numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {i.name: v for i, v in zip(session.get_inputs(), (x.numpy(), t.numpy(), y.numpy()),
                                       strict=True)}
    (found,) = session.run(["prediction"], feeds)
    np.testing.assert_allclose(found, expected, atol=1e-4, rtol=1e-4)
    assert np.abs(expected).max() > 0.1


def _student_params() -> dict:
    from dgraph.spec import load_spec

    nodes = load_spec("lcm_lora_digits").nodes
    params = dict(nodes["student"].params)
    params.pop("base")
    return {"base": dict(nodes["teacher"].params), "lora": params}


def test_dmd2_digits_trains_generator_and_fake_score_at_their_ratio_with_the_gan(runs):
    torch.set_num_threads(1)
    run = runs / "dmd2_digits"
    summary = train("dmd2_digits", out=run, overrides=[
        "train.steps=3", "train.eval.every=3", "train.log_every=1",
        "updates.generator.every=2", "nodes.samples.params.num_samples=20"], **QUIET)
    for key in ("frechet@1", "class_coverage@1", "class_accuracy@1"):
        assert torch.isfinite(torch.tensor(summary[f"samples/{key}"])), key
    teacher = load_file(str(runs / "diffusion_teacher_digits" / "final" / "teacher.safetensors"))
    for name in ("generator", "fake_score"):  # both start from the teacher, both trained
        weights = load_file(str(run / "final" / f"{name}.safetensors"))
        assert weights.keys() == teacher.keys()
        assert any(not torch.equal(teacher[k], weights[k]) for k in teacher), name
    disc = load_file(str(run / "final" / "disc.safetensors"))
    assert disc and not any(k.startswith("model.") for k in disc)  # the head only
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    def steps(loss: str) -> set[int]:
        return {r["step"] for r in rows if f"loss/{loss}" in r}

    assert steps("fake_loss") == steps("gan_d") == {1, 2, 3}
    assert steps("dmd") == steps("gan_g") == {1, 3}  # every 2nd here: steps 0 and 2


def test_a_gan_head_on_a_network_without_a_known_bottleneck_is_located(capsys):
    code = main(["validate", "dmd2_digits", "--set", "nodes.disc.params.network=judge"])
    text = "".join(capsys.readouterr())
    assert code == 1
    assert ("<--set nodes.disc.params.network=judge>: error[bad-reference]: node 'disc': "
            "params.network: the GAN head reads the bottleneck of a unet_denoiser (its mid "
            "block) or a time_mlp (its last hidden layer), and the node named is neither"
            ) in text
    assert "expected: a unet_denoiser or time_mlp node (the fake score)" in text
    assert "found:    CNN" in text
    assert "hint: name the fake-score network, or set network: null for the head's own trunk" \
        in text


def test_a_gan_head_without_network_or_in_features_is_located(capsys):
    code = main(["validate", "dmd2_digits", "--set", "nodes.disc.params.network=null"])
    text = "".join(capsys.readouterr())
    assert code == 1
    assert "dmd2_digits.yaml:" in text and "node 'disc'" in text
    assert ("a gan_head without 'network' needs 'in_features' (the values per sample) for "
            "its own trunk") in text
    assert main(["validate", "dmd2_digits", "--set", "nodes.disc.params.network=null",
                 "--set", "nodes.disc.params.in_features=64"]) == 0


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three full zoo runs: 11 min idle, ~35 min on 2 busy shared cores
def test_digits_few_step_students_from_the_zoo_teacher(tmp_path):
    teacher = train("diffusion_teacher_digits", out=tmp_path / "diffusion_teacher_digits",
                    **QUIET)
    lcm = train("lcm_lora_digits", out=tmp_path / "lcm_lora_digits", **QUIET)
    dmd2 = train("dmd2_digits", out=tmp_path / "dmd2_digits", **QUIET)
    for student in (lcm, dmd2):  # seed 0 (1200-step teacher): 44 / 8.5 / 1.3
        assert student["samples/class_coverage@1"] == 1.0
        assert teacher["samples/frechet@1"] > 2 * student["samples/frechet@1"]
    # DMD2's one step beats the teacher's eight (seed 0: 1.3 against 5.3)
    assert dmd2["samples/frechet@1"] < teacher["samples/frechet@8"]
