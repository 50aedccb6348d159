"""The runtime end to end: run directories, stages, targets, the teacher cache, ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import QUIET, make_trainer, write_spec
from safetensors.torch import load_file

from dgraph.api import train
from dgraph.errors import NonFiniteError
from dgraph.spec import load_spec, zoo_names


def test_run_directory_holds_everything(tmp_path):
    run = tmp_path / "run"
    summary = train("teacher_digits", out=run, overrides=["train.steps=40", "train.log_every=10",
                                                        "train.eval.every=20"], **QUIET)
    assert set(summary) == {"loss/ce", "teacher/accuracy"}
    assert 0.5 < summary["teacher/accuracy"] <= 1.0
    assert json.loads((run / "summary.json").read_text()) == summary
    assert "steps: 40" in (run / "spec.resolved.yaml").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss/ce" in r]
    assert [r["step"] for r in train_records] == [10, 20, 30, 40]
    for record in train_records:
        assert {"loss/total/main", "lr/main", "grad_norm/main",
                "throughput/samples_per_s"} <= set(record)
        assert record["grad_norm/main"] > 0  # taken before the gradients are cleared
    assert [r["step"] for r in records if "eval/teacher/accuracy" in r] == [20, 40]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 1})
    events.Reload()
    assert {"loss/ce", "loss/total/main", "lr/main", "eval/teacher/accuracy"} <= set(
        events.Tags()["scalars"])
    assert events.Tags()["images"] == ["graph"]
    picture = events.Images("graph")[0]
    assert picture.width > 200 and picture.height > 50
    assert (run / "checkpoints" / "step_00000040.pt").exists()
    weights = load_file(str(run / "final" / "teacher.safetensors"))
    assert weights["head.weight"].shape == (10, 256)


# Runs other specs read (teachers, expert trajectories) come first: the specs that use them
# find their runs beside their own in the shared folder (alone, a spec trains what it needs).
# In this order: diffusion_teacher_digits reads teacher_digits_cnn's classifier.
PRODUCERS = ["teacher_digits", "teacher_digits_cnn", "llm_teacher", "dd_mtt_experts",
             "rl_teacher_cartpole", "diffusion_teacher_toy", "diffusion_teacher_digits",
             "arithmetic_teacher"]
# llm_7b_validate is for validation only: its teacher has 7B parameters. dd_mtt matches expert
# trajectories: 4 expert steps barely move the experts, and the normalised distance divides by
# that movement; tests/zoo/test_dd_mtt.py trains it on a buffer made for it.
# The slowest specs to train are trained by their own zoo tests, with overrides chosen for
# them (training them here as well cost about a fifth of the suite): spec -> that test file.
TRAINED_ELSEWHERE = {
    "lcm_lora_digits": "tests/zoo/test_diffusion_digits.py",
    "dmd2_digits": "tests/zoo/test_diffusion_digits.py",
    "dd_quantization": "tests/zoo/test_dd_more.py",
    "dd_committee": "tests/zoo/test_dd_more.py",
    "dd_gm": "tests/zoo/test_dd_gm.py",
    "flowmap_toy": "tests/zoo/test_diffusion_flow_zoo.py",
    "sampler_distill_ddim_toy": "tests/zoo/test_sampler_distill_ddim.py",
    "sampler_distill_digits": "tests/zoo/test_sampler_distill_ddim.py",
}
ZOO = sorted((n for n in zoo_names()
              if n not in ("llm_7b_validate", "dd_mtt", *TRAINED_ELSEWHERE)),
             key=lambda n: (PRODUCERS.index(n) if n in PRODUCERS else len(PRODUCERS), n))


def test_the_specs_trained_elsewhere_are_trained_there():
    root = Path(__file__).resolve().parents[2]
    for name, test_file in TRAINED_ELSEWHERE.items():
        text = (root / test_file).read_text()
        assert f'train("{name}"' in text or f"train('{name}'" in text, (name, test_file)


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_spec_trains_with_steps_and_seed_overrides(zoo_runs, name):
    run = zoo_runs / name
    # Dataset-distillation evaluators train fresh networks: one seed, a few steps here.
    # Sample metrics draw fewer samples.
    # Generators of 4-step models keep anything (threshold 0) from a few prompts.
    fast_params = {"dd_evaluator": ("seeds=[0]", "steps=5"),
                   "diffusion_samples": ("num_samples=64",),
                   "lm_generator": ("threshold=0.0", "max_prompts=16"),
                   "exact_match": ("max_examples=16",)}
    fast = [f"nodes.{node}.params.{value}"
            for node, spec in load_spec(name).nodes.items()
            for value in fast_params.get(spec.type or "", ())]
    summary = train(name, out=run, overrides=["train.steps=4", "train.seed=7", *fast], **QUIET)
    assert summary, name
    assert "seed: 7" in (run / "spec.resolved.yaml").read_text()


STAGES = """
dgraph: 1
name: stages
nodes:
  data: {kind: data, type: digits, params: {batch_size: 32}}
  student:
    kind: student
    type: mlp
    params: {in_features: 64, hidden: [16], num_classes: 10}
    inputs: {x: data.x}
  teacher:
    kind: teacher
    type: mlp
    params: {in_features: 64, hidden: [16], num_classes: 10}
    inputs: {x: data.x}
  second:
    kind: model
    type: mlp
    params: {in_features: 64, hidden: [8], num_classes: 10}
    inputs: {x: data.x}
  ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
  kd:
    kind: loss
    type: hinton_kd
    inputs: {student: second.logits, teacher: teacher.logits}
updates:
  supervised: {params: [student], objective: {ce: 1.0}}
  distil: {params: [second], objective: {kd: 1.0}}
stages:
  - {name: one, steps: 6, updates: [supervised]}
  - {name: two, steps: 4, updates: [distil], copy: {teacher: student}}
train: {steps: 10, eval: {every: 100}}
"""


def test_stage_copies_trained_student_into_teacher(tmp_path):
    trainer = make_trainer(write_spec(tmp_path, STAGES), tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.instances.modules["teacher"].state_dict().items()}
    trainer.run()
    student = trainer.instances.modules["student"].state_dict()
    teacher = trainer.instances.modules["teacher"].state_dict()
    assert all(torch.equal(student[k], teacher[k]) for k in student)
    assert not all(torch.equal(before[k], teacher[k]) for k in before)
    # The student trained only in stage one: 6 optimizer steps; the second model 4.
    assert int(trainer.optimizers["supervised"].state_dict()["state"][0]["step"]) == 6
    assert int(trainer.optimizers["distil"].state_dict()["state"][0]["step"]) == 4


def test_stage_lengths_scale_with_train_steps(tmp_path):
    trainer = make_trainer(write_spec(tmp_path, STAGES), tmp_path / "run", "train.steps=20")
    assert [(s.start, s.end) for s in trainer.stages] == [(0, 12), (12, 20)]


def test_update_ratio_five_to_one(tmp_path):
    trainer = make_trainer(Path(load_spec("adversarial_toy").path), tmp_path / "run",
                       "train.steps=20", "train.eval.every=100")
    trainer.run()
    steps = {name: int(opt.state_dict()["state"][0]["step"])
             for name, opt in trainer.optimizers.items()}
    assert steps == {"critic": 20, "generator": 4}


EMA = """
dgraph: 1
name: ema
nodes:
  data: {kind: data, type: digits, params: {batch_size: 32}}
  student:
    kind: student
    type: mlp
    params: {in_features: 64, hidden: [16], num_classes: 10}
    inputs: {x: data.x}
  mean_teacher:
    kind: target
    type: ema
    params: {source: student, decay: %s}
    inputs: {x: data.x}
  ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
  consistency:
    kind: loss
    type: hinton_kd
    inputs: {student: student.logits, teacher: mean_teacher.logits}
updates:
  main: {params: [student], objective: {ce: 1.0, consistency: 0.5}}
train: {steps: 5, eval: {every: 100}}
"""


def test_ema_target_follows_its_source_by_the_formula(tmp_path):
    trainer = make_trainer(write_spec(tmp_path, EMA % "0.9"), tmp_path / "run")
    student = trainer.instances.modules["student"]
    target = trainer.instances.modules["mean_teacher"]
    expected = {k: v.clone() for k, v in target.model.state_dict().items()}
    original_step = trainer.optimizers["main"].step

    def step_then_record(*args, **kwargs):
        result = original_step(*args, **kwargs)
        for key, value in student.state_dict().items():
            expected[key] = 0.9 * expected[key] + 0.1 * value
        return result

    trainer.optimizers["main"].step = step_then_record
    trainer.run()
    for key, value in target.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)
    assert not target.model.head.weight.requires_grad
    assert int(target.updates) == 5


def test_ema_with_zero_decay_is_a_stop_gradient_copy(tmp_path):
    trainer = make_trainer(write_spec(tmp_path, EMA % "0.0"), tmp_path / "run")
    trainer.run()
    student = trainer.instances.modules["student"].state_dict()
    target = trainer.instances.modules["mean_teacher"].model.state_dict()
    assert all(torch.equal(student[k], target[k]) for k in student)


CACHE = """
dgraph: 1
name: cached
nodes:
  data: {kind: data, type: digits, params: {batch_size: 32}}
  teacher:
    kind: teacher
    type: mlp
    params: {in_features: 64, hidden: [64], num_classes: 10}
    inputs: {x: data.x}
  student:
    kind: student
    type: mlp
    params: {in_features: 64, hidden: [16], num_classes: 10}
    inputs: {x: data.x}
  kd:
    kind: loss
    type: hinton_kd
    inputs: {student: student.logits, teacher: teacher.logits}
updates:
  main: {params: [student], objective: {kd: 1.0}}
train: {steps: 30, eval: {every: 100}, seed: 1}
"""


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_teacher_cache_reuses_outputs_without_running_the_teacher(tmp_path, where):
    path = write_spec(tmp_path, CACHE)
    plain = make_trainer(path, tmp_path / "plain")
    plain.run()
    cached = make_trainer(path, tmp_path / "cached", f"nodes.teacher.cache.where={where}")
    calls = []
    cached.instances.modules["teacher"].register_forward_hook(lambda *a: calls.append(1))
    for plan in cached.program.plans.values():
        assert "m_teacher(" not in plan.source and "c_teacher['logits']" in plan.source
    cached.run()
    # Evaluation runs the teacher on held-out data; training never does.
    eval_batches = -(-len(cached.instances.data["data"].eval["x"]) // 512)
    assert len(calls) == eval_batches
    for key, value in plain.instances.modules["student"].state_dict().items():
        torch.testing.assert_close(cached.instances.modules["student"].state_dict()[key], value,
                                   rtol=1e-5, atol=1e-6)
    if where == "disk":
        stored = load_file(str(tmp_path / "cached" / "cache" / "teacher.safetensors"))
        assert stored["logits"].shape == (len(cached.instances.data["data"]), 10)


def test_disk_cache_is_written_in_the_run_and_read_from_an_earlier_one(tmp_path):
    """``cache.path`` names an earlier run's cache to read; writes stay in this run."""
    path = write_spec(tmp_path, CACHE)
    first = make_trainer(path, tmp_path / "first", "nodes.teacher.cache.where=disk")
    written = tmp_path / "first" / "cache" / "teacher.safetensors"
    assert written.is_file()
    shared = tmp_path / "shared"
    shared.mkdir()
    before = written.read_bytes()
    second = make_trainer(path, tmp_path / "second", "nodes.teacher.cache.where=disk",
                      f"nodes.teacher.cache.path={tmp_path / 'first' / 'cache'}")
    torch.testing.assert_close(second.program.caches["teacher"]["logits"],
                               first.program.caches["teacher"]["logits"])
    assert not (tmp_path / "second" / "cache").exists()  # read, not written again
    assert written.read_bytes() == before
    # A folder without a cache: computed and written into this run only.
    third = make_trainer(path, tmp_path / "third", "nodes.teacher.cache.where=disk",
                     f"nodes.teacher.cache.path={shared}")
    assert list(shared.iterdir()) == []
    assert (tmp_path / "third" / "cache" / "teacher.safetensors").is_file()
    assert "teacher" in third.program.caches


def test_non_finite_loss_names_the_first_node(tmp_path):
    path = write_spec(tmp_path, """
        dgraph: 1
        name: blowup
        nodes:
          data: {kind: data, type: digits}
          big:
            kind: tensor
            type: learnable_tensor
            params: {shape: [64, 64], init: normal, std: 1.0e+30}
          fit: {kind: loss, type: mse, inputs: {prediction: big.value, target: data.x}}
        updates:
          main: {params: [big], objective: {fit: 1.0}}
        train: {steps: 3}
        """)
    trainer = make_trainer(path, tmp_path / "run")
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    assert str(info.value) == (
        "step 0: update 'main' went non-finite (loss inf; gradients finite); the first node "
        "whose output went non-finite is 'fit' (port 'loss', loss 'mse'). The step was "
        "skipped: parameters and optimizer state are unchanged. Lower the learning rate, clip "
        "gradients (clip_grad_norm), or check the data; the last checkpoint is intact")
