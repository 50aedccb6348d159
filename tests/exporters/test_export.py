"""``dgraph export``: each student kind goes to ONNX, reloads in onnxruntime and matches torch.

The MLP and CNN students of the zoo, a transformers causal LM (dynamic batch and sequence
length) and a diffusers UNet. The torch side is rebuilt here from the run's spec and final
weights, independently of the exporter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from dgraph.exporters import export_run, read_metadata
from safetensors.torch import load_file

from dgraph.cli import main
from dgraph.graph import validate
from dgraph.registry import BuildContext
from dgraph.spec import load_spec

TOL = 1e-4


def torch_model(run: Path, node: str) -> torch.nn.Module:
    spec = load_spec(run / "spec.resolved.yaml")
    graph, _ = validate(spec)
    module = graph.nodes[node].component.build(BuildContext(node=node))
    module.load_state_dict(load_file(str(run / "final" / f"{node}.safetensors")))
    return module.eval()


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def assert_matches(session, module, inputs: dict[str, torch.Tensor], tol: float = TOL) -> None:
    with torch.no_grad():
        expected = module(**inputs)
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, {k: v.numpy() for k, v in inputs.items()})
    for name, value in zip(names, got, strict=True):
        diff = np.abs(value - expected[name].numpy()).max()
        assert diff <= tol, (name, diff)


def test_mlp_student_cli_export(mlp_run, tmp_path, capsys):
    out = tmp_path / "mlp.onnx"
    assert main(["export", str(mlp_run), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "torch.onnx.export(dynamo=True)" in text
    assert "onnx.checker: ok" in text
    assert "real" in text and "random" in text and "pass" in text and "FAIL" not in text

    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["logits", "features"]
    assert dims(model.graph.input[0]) == ["B", 64]
    assert dims(model.graph.output[0]) == ["B", 10]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    module = torch_model(mlp_run, "student")
    for batch in (1, 64):
        assert_matches(session, module, {"x": torch.rand(batch, 64)})

    meta = read_metadata(out)
    assert meta["dgraph.version"]
    assert meta["dgraph.spec.name"] == "student_digits"
    resolved = (mlp_run / "spec.resolved.yaml").read_text()
    assert meta["dgraph.spec.sha256"] == hashlib.sha256(resolved.encode()).hexdigest()
    assert meta["dgraph.node"] == "student" and meta["dgraph.node.type"] == "mlp"
    assert json.loads(meta["dgraph.label_names"]) == [str(i) for i in range(10)]
    inputs = json.loads(meta["dgraph.inputs"])
    assert inputs["x"]["type"] == "Features" and inputs["x"]["dims"] == ["B", 64]
    assert inputs["x"]["shape"] == "B, {in_features}"
    outputs = json.loads(meta["dgraph.outputs"])
    assert outputs["logits"] == {**outputs["logits"], "type": "Logits", "dims": ["B", 10]}
    assert json.loads(meta["dgraph.dynamic_axes"]) == {"x": {"0": "B"}}
    assert meta["dgraph.exporter"] == "dynamo" and meta["dgraph.precision"] == "fp32"


def test_cnn_student_export(cnn_run, tmp_path):
    out = tmp_path / "cnn.onnx"
    result = export_run(cnn_run, out)  # default node: the student
    assert result.node == "student" and result.exporter == "dynamo"
    report = result.verification
    assert report is not None and report.passed and report.tolerance == TOL
    assert {(c.inputs, c.sizes["B"]) for c in report.cases} == {
        ("random", 1), ("random", 5), ("real", 1), ("real", 5)}
    assert all(c.max_abs < TOL for c in report.cases)

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert dims(onnx.load(str(out)).graph.input[0]) == ["B", 1, 8, 8]
    module = torch_model(cnn_run, "student")
    for batch in (2, 64):
        assert_matches(session, module, {"x": torch.rand(batch, 1, 8, 8)})
    assert json.loads(read_metadata(out)["dgraph.label_names"])[3] == "3"


def test_transformer_student_export(lm_run, tmp_path, capsys):
    out = tmp_path / "lm.onnx"
    assert main(["export", str(lm_run), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "torch.onnx.export(dynamo=True)" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("inputs"))
    assert header.split()[:3] == ["inputs", "B", "T"]  # two batch sizes x two lengths

    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert dims(model.graph.input[0]) == ["B", "T"]
    assert dims(model.graph.input[1]) == ["B", "T"]
    assert dims(model.graph.output[0]) == ["B", "T", 100]
    meta = read_metadata(out)
    assert json.loads(meta["dgraph.dynamic_axes"]) == {
        "input_ids": {"0": "B", "1": "T"}, "attention_mask": {"0": "B", "1": "T"}}
    assert json.loads(meta["dgraph.outputs"])["logits"]["dims"] == ["B", "T", 100]
    assert "dgraph.label_names" not in meta

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    mask_type = session.get_inputs()[1].type  # the data source's dtype (tensor_file: bool)
    module = torch_model(lm_run, "student")
    generator = torch.Generator().manual_seed(3)
    for batch, seq in ((2, 5), (2, 13), (7, 5), (7, 13)):
        ids = torch.randint(0, 100, (batch, seq), generator=generator)
        mask = torch.ones(batch, seq, dtype=torch.bool)
        mask[0, seq // 2:] = False  # right padding in one row
        if mask_type != "tensor(bool)":
            mask = mask.long()
        assert_matches(session, module, {"input_ids": ids, "attention_mask": mask})


def test_unet_student_export(unet_run, tmp_path):
    out = tmp_path / "unet.onnx"
    result = export_run(unet_run, out)
    assert result.exporter == "dynamo"
    assert result.verification is not None and result.verification.passed
    assert [i.name for i in result.inputs] == ["sample", "timestep"]
    assert [o.name for o in result.outputs] == ["noise_pred"]
    assert {c.inputs for c in result.verification.cases} == {"random", "real"}

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = onnx.load(str(out))
    assert dims(model.graph.input[0]) == ["B", 3, 16, 16]
    assert dims(model.graph.output[0]) == ["B", 3, 16, 16]
    module = torch_model(unet_run, "student")
    for batch in (1, 4):
        assert_matches(session, module, {"sample": torch.randn(batch, 3, 16, 16),
                                         "timestep": torch.randint(0, 1000, (batch,))})


def test_fp16_export_states_its_tolerance(mlp_run, tmp_path, capsys):
    out = tmp_path / "mlp16.onnx"
    assert main(["export", str(mlp_run), "-o", str(out), "--fp16"]) == 0
    text = capsys.readouterr().out
    assert "fp16, tolerance 0.01" in text
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    assert read_metadata(out)["dgraph.precision"] == "fp16"
    x = torch.rand(8, 64)
    got = session.run(["logits"], {"x": x.half().numpy()})[0].astype(np.float32)
    with torch.no_grad():
        want = torch_model(mlp_run, "student")(x=x.half().float())["logits"].numpy()
    assert np.abs(got - want).max() <= 1e-2 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("opset", [17])
def test_opset_and_no_check(mlp_run, tmp_path, opset, capsys):
    out = tmp_path / "mlp17.onnx"
    assert main(["export", str(mlp_run), "-o", str(out), "--opset", str(opset),
                 "--no-check"]) == 0
    assert "not verified" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert {o.domain: o.version for o in model.opset_import}[""] == opset
    assert read_metadata(out)["dgraph.opset"] == str(opset)
