"""Mixed precision (bf16, fp16 with a grad scaler) and torch.compile of the generated step."""

from __future__ import annotations

import pytest
import torch

from dgraph.graph import validate
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec


def _trainer(tmp_path, *overrides: str) -> Trainer:
    graph, _ = validate(load_spec("teacher_digits", ["train.device=cpu", *overrides]))
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    return Trainer(graph, tmp_path / "run", progress=False, log=lambda _m: None)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_the_step_in_low_precision(tmp_path, precision, dtype):
    trainer = _trainer(tmp_path, f"train.precision={precision}", "train.steps=40",
                       "train.eval.every=40")
    seen = []
    trainer.instances.modules["teacher"].head.register_forward_hook(
        lambda _m, _i, out: seen.append(out.dtype))
    summary = trainer.run()
    assert seen and set(seen) == {dtype}
    # the master weights stay fp32, and training still learns
    assert trainer.instances.modules["teacher"].head.weight.dtype == torch.float32
    assert summary["teacher/accuracy"] > 0.5
    if precision == "fp16":
        assert trainer.scaler is not None and trainer.state()["scaler"]["scale"] > 0
    else:
        assert trainer.scaler is None


def test_compiled_step_matches_eager(tmp_path):
    eager = _trainer(tmp_path / "a", "train.steps=3")
    compiled = _trainer(tmp_path / "b", "train.steps=3", "train.compile=true")
    compiled.instances.modules["teacher"].load_state_dict(
        eager.instances.modules["teacher"].state_dict())
    for step in range(3):
        a = eager.step_runner.run_update("main", eager.stages[0], step, {})
        b = compiled.step_runner.run_update("main", compiled.stages[0], step, {})
        torch.testing.assert_close(b["total"], a["total"], rtol=1e-4, atol=1e-5)
    assert "compile" in type(compiled.program.plans["main"].step).__module__ or \
        hasattr(compiled.program.plans["main"].step, "_torchdynamo_orig_callable")
