"""Non-finite steps: caught on losses and gradients, never applied, reported with the first
non-finite parameter and node, on the per-step path and on the deferred (fused) path."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from helpers import make_trainer, write_spec
from pydantic import Field
from safetensors.torch import save_file
from torch import nn

from dgraph.errors import NonFiniteError
from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component
from dgraph.runtime.train import Trainer

TAIL = ("The step was skipped: parameters and optimizer state are unchanged. Lower the "
        "learning rate, clip gradients (clip_grad_norm), or check the data; the last "
        "checkpoint is intact")


class _SqrtParams(Params):
    offset: float = Field(0.0, allow_inf_nan=False)


class _SqrtModule(nn.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": (x - self.offset).sqrt().mean()}


@component("test_nonfinite_sqrt", roles=("loss",))
class _SqrtLoss(Component):
    """``loss = mean(sqrt(x - offset))``: NaN below the offset, infinite gradient at it."""

    Params = _SqrtParams
    inputs = {"x": Port("Tensor", None, "values")}
    outputs = {"loss": Port("Scalar", None, "mean square root")}

    def build(self, context: BuildContext):
        return _SqrtModule(self.params.offset)


def _trainer(tmp_path: Path, text: str, *overrides: str, run: str = "run") -> Trainer:
    return make_trainer(write_spec(tmp_path, text), tmp_path / run, *overrides)


SQRT = """
    dgraph: 1
    name: sqrt
    nodes:
      t: {kind: tensor, type: learnable_tensor, params: {shape: [1], init: ones}}
      fit: {kind: loss, type: test_nonfinite_sqrt, params: {offset: 0.75}, inputs: {x: t.value}}
    updates:
      main: {optimizer: {type: sgd, lr: 0.1}, params: [t], objective: {fit: 1.0}}
    train: {steps: 10, log_every: 1}
    """


def test_nan_loss_stops_the_run_before_the_step_is_applied(tmp_path):
    # Gradient descent on sqrt(t - 0.75) from t = 1 with lr 0.1 (by hand):
    # t <- t - 0.1 * 0.5 / sqrt(t - 0.75) gives 0.9, 0.77090, 0.42505, and then
    # sqrt(0.42505 - 0.75) is NaN at step 3.
    expected = 1.0
    for _ in range(3):
        expected -= 0.1 * 0.5 / math.sqrt(expected - 0.75)
    assert expected < 0.75
    trainer = _trainer(tmp_path, SQRT)
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    assert str(info.value) == (
        "step 3: update 'main' went non-finite (loss nan; first non-finite gradient: "
        "parameter 't.value'); the first node whose output went non-finite is 'fit' (port "
        f"'loss', loss 'test_nonfinite_sqrt'). {TAIL}")
    value = trainer.instances.modules["t"].value.detach()
    assert float(value) == pytest.approx(expected, rel=1e-6)
    assert trainer.instances.modules["t"].value.grad is None
    # The run stopped before logging the bad step: three records, all finite.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if "loss/total/main" in line]) == 3
    assert "NaN" not in "".join(lines)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_finite_loss_with_infinite_gradient_is_caught(tmp_path, clip):
    # sqrt at 0: the loss is 0.0, its gradient 0.5 / sqrt(0) is infinite.
    text = SQRT.replace("init: ones", "init: zeros").replace("offset: 0.75", "offset: 0.0")
    overrides = [] if clip is None else [f"updates.main.clip_grad_norm={clip}"]
    trainer = _trainer(tmp_path, text, *overrides)
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    assert str(info.value) == (
        "step 0: update 'main' went non-finite (loss 0.0; first non-finite gradient: "
        "parameter 't.value'); no node output was non-finite when the step was re-run. "
        + TAIL)
    assert torch.equal(trainer.instances.modules["t"].value.detach(), torch.zeros(1))
    assert trainer.optimizers["main"].state == {}


ADAM = SQRT.replace("{type: sgd, lr: 0.1}", "{type: adam, lr: 0.1}")


def test_adam_state_is_untouched_by_the_skipped_step(tmp_path):
    trainer = _trainer(tmp_path, ADAM)
    with pytest.raises(NonFiniteError, match=re.escape("step 3: update 'main'")):
        trainer.run()
    # The same run stopped after its three good steps.
    reference = _trainer(tmp_path, ADAM, "train.steps=3", run="reference")
    reference.run()
    assert torch.equal(trainer.instances.modules["t"].value, reference.instances.modules["t"].value)
    state = trainer.optimizers["main"].state_dict()["state"][0]
    expected = reference.optimizers["main"].state_dict()["state"][0]
    assert float(state["step"]) == 3.0
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key], expected[key]), key


def _nan_data(tmp_path: Path, bad: int) -> None:
    x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 24
    x[bad, 1] = float("nan")
    save_file({"x": x}, str(tmp_path / "d.safetensors"))


DATA = """
    dgraph: 1
    name: nan_data
    nodes:
      data:
        kind: data
        type: tensor_file
        params:
          path: d.safetensors
          batch_size: 2
          shuffle: false
          keys: {x: {key: x, type: Features, shape: "B, 3"}}
      p: {kind: tensor, type: learnable_tensor, params: {shape: [2, 3], init: zeros}}
      fit: {kind: loss, type: mse, inputs: {prediction: p.value, target: data.x}}
    updates:
      main: {optimizer: {type: adam, lr: 0.01}, params: [p], objective: {fit: 1.0}}
    train: {steps: 8, log_every: 4}
    """


def test_nan_in_a_micro_batch_names_the_data_port_and_micro_batch(tmp_path):
    _nan_data(tmp_path, bad=7)  # examples 6, 7 are the second micro-batch of step 1
    trainer = _trainer(tmp_path, DATA, "updates.main.accumulate=2")
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    assert str(info.value) == (
        "step 1: update 'main' went non-finite (loss nan; first non-finite gradient: "
        "parameter 'p.value'); the first node whose output went non-finite is 'data' (port "
        f"'x', data 'tensor_file', micro-batch 2 of 2). {TAIL}")


def _fused(trainer: Trainer) -> None:
    """The deferred path of a CUDA run, on CPU: a fused optimizer and no per-step read."""
    old = trainer.optimizers["main"]
    groups = [{"params": g["params"], "node": g["node"]} for g in old.param_groups]
    trainer.optimizers["main"] = torch.optim.Adam(groups, lr=0.01, fused=True)
    trainer.step_runner.defer_finite_checks = True


def test_deferred_check_skips_every_step_until_it_is_read(tmp_path):
    _nan_data(tmp_path, bad=5)  # step 2 draws examples 4 and 5
    trainer = _trainer(tmp_path, DATA)
    _fused(trainer)
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    # Read after step 3 (log_every 4): steps 2 and 3 were skipped on the device.
    assert str(info.value) == (
        "step 2: update 'main' went non-finite (loss nan; first non-finite gradient: "
        "parameter 'p.value'); the first node whose output went non-finite is 'data' (port "
        "'x', data 'tensor_file'). The step and the 1 step after it were skipped: parameters "
        "and optimizer state are unchanged. Lower the learning rate, clip gradients "
        "(clip_grad_norm), or check the data; the last checkpoint is intact")
    reference = _trainer(tmp_path, DATA, "train.steps=2", run="reference")
    _fused(reference)
    reference.run()
    assert torch.equal(trainer.instances.modules["p"].value, reference.instances.modules["p"].value)
    state = trainer.optimizers["main"].state_dict()["state"][0]
    expected = reference.optimizers["main"].state_dict()["state"][0]
    assert float(state["step"]) == 2.0
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key], expected[key]), key
    # The flag was reset with the report: the trainer is usable again.
    assert float(trainer.step_runner._found_inf) == 0.0 and trainer.step_runner._unread == []


def test_deferred_check_passes_clean_runs(tmp_path):
    save_file({"x": torch.arange(24, dtype=torch.float32).reshape(8, 3) / 24},
              str(tmp_path / "d.safetensors"))
    trainer = _trainer(tmp_path, DATA)
    _fused(trainer)
    trainer.run()
    reference = _trainer(tmp_path, DATA, run="reference")
    _fused(reference)
    reference.step_runner.defer_finite_checks = False
    reference.run()
    assert torch.equal(trainer.instances.modules["p"].value, reference.instances.modules["p"].value)
    assert trainer.step_runner._unread == []


def test_a_checkpoint_between_reads_first_reads_the_flag(tmp_path):
    # The checkpoint a signal asks for falls between two reads of the deferred flag: it is
    # read first, so the skipped step is reported and nothing is written.
    _nan_data(tmp_path, bad=5)  # step 2 draws examples 4 and 5
    trainer = _trainer(tmp_path, DATA, "train.log_every=100", "train.checkpoint_every=100",
                       "train.eval.every=100")
    _fused(trainer)
    stage = trainer.stages[0]
    for step in range(3):
        trainer.step_runner.run_update("main", stage, step, {})
        trainer.step = step + 1
    assert trainer.step_runner._unread  # steps 0-2 ran ahead, unread
    with pytest.raises(NonFiniteError, match=re.escape("step 2: update 'main' went non-finite")):
        trainer.save()
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert trainer.save() == tmp_path / "run" / "checkpoints" / "step_00000003.pt"


def test_fp16_loss_scaling_skips_infinite_gradients_itself(tmp_path):
    # Infinite gradients under fp16 are the GradScaler's: it skips the step and halves its
    # scale (65536 -> 32768 -> 16384 -> 8192 over three steps); no error.
    text = SQRT.replace("init: ones", "init: zeros").replace("offset: 0.75", "offset: 0.0")
    trainer = _trainer(tmp_path, text, "train.precision=fp16", "train.steps=3",
                       "train.device=cpu")
    trainer.run()
    assert torch.equal(trainer.instances.modules["t"].value.detach(), torch.zeros(1))
    assert trainer.scaler.get_scale() == 8192.0
