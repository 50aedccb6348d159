"""quant_kd: a few steps of KD into the fake-quantised student, its exact resume, and its export
to a QDQ ONNX file with int8 weights, verified with onnxruntime against the torch model.

Real training on digits (the teacher trained for a few steps first, where ``init: {run: ...}``
looks); the accuracy and size comparison over 3 seeds is benchmarks/quant_kd.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
import torch
from dgraph.exporters.api import export_run
from helpers import QUIET
from safetensors.torch import load_file

from dgraph.api import train

FAST = ["train.steps=20", "train.eval.every=20", "train.checkpoint_every=10",
        "nodes.student.params.calibrate_steps=15"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quant")
    train("teacher_digits", out=root / "teacher_digits", overrides=["train.steps=20"], **QUIET)
    train("quant_kd", out=root / "quant_kd", overrides=FAST, **QUIET)
    return root


def test_quant_kd_trains_and_learns_its_scales(runs):
    summary = (runs / "quant_kd" / "summary.json").read_text()
    assert '"student/accuracy"' in summary
    weights = load_file(str(runs / "quant_kd" / "final" / "student.safetensors"))
    # the ranges were observed during the calibration window only (15 of 20 steps)
    assert float(weights["head.input_quant.observed"]) == 15
    assert weights["head.weight_quant.scale"].shape == (10,)  # per output channel
    assert bool((weights["body.0.weight_quant.scale"] > 0).all())


def test_quant_kd_resumes_exactly_across_the_calibration_window(runs):
    resumed = runs / "quant_kd_resumed"
    shutil.copytree(runs / "quant_kd", resumed)
    (resumed / "checkpoints" / "step_00000020.pt").unlink()  # the run now ends at step 10
    shutil.rmtree(resumed / "final")
    lines = []
    train("quant_kd", out=resumed, overrides=FAST, resume=True, progress=False,
          log=lines.append)
    assert any("resuming from" in line and "(step 10)" in line for line in lines), lines
    want = load_file(str(runs / "quant_kd" / "final" / "student.safetensors"))
    got = load_file(str(resumed / "final" / "student.safetensors"))
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_quant_kd_exports_qdq_with_int8_weights_verified_by_onnxruntime(runs, tmp_path):
    train("kd", out=runs / "kd", overrides=FAST[:3], **QUIET)
    quant = export_run(runs / "quant_kd", tmp_path / "student.onnx")
    assert quant.verification is not None and quant.verification.passed
    assert quant.verification.tolerance == 0.05  # the spec's export tolerance
    model = onnx.load(str(tmp_path / "student.onnx"))
    ops = [node.op_type for node in model.graph.node]
    # two layers: input (activation) and weight Q/DQ for each; weights only DQ (folded Q)
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 4
    types = {t.name: t.data_type for t in model.graph.initializer}
    int8 = sorted(list(t.dims) for t in model.graph.initializer
                  if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2)
    assert int8 == [[10, 24], [24, 64]]  # head and body.0 weights, stored as int8
    assert not any(kind == onnx.TensorProto.FLOAT and name.endswith("weight")
                   for name, kind in types.items())
    float_export = export_run(runs / "kd", tmp_path / "float.onnx")
    assert float_export.verification is not None and float_export.verification.passed
    quant_size = (tmp_path / "student.onnx").stat().st_size
    float_size = (tmp_path / "float.onnx").stat().st_size
    assert quant_size < 0.6 * float_size, (quant_size, float_size)
