"""The check catches a wrong export; every failure is a clear ``error:`` with exit code 1."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from dgraph.exporters import export_run, onnx_export
from onnx import numpy_helper
from torch import nn

from dgraph.cli import main
from dgraph.errors import ExportError


def _perturb_weights(path) -> None:
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.size > 100:
            noisy = values + np.float32(0.05) * np.sign(values)
            tensor.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
    onnx.save(model, str(path))


def test_weights_perturbed_after_export_fail_the_check(mlp_run, tmp_path, monkeypatch, capsys):
    real_export = onnx_export.export_module

    def export_then_perturb(wrapper, args, path, **kwargs):
        info = real_export(wrapper, args, path, **kwargs)
        _perturb_weights(path)
        return info

    monkeypatch.setattr(onnx_export, "export_module", export_then_perturb)
    out = tmp_path / "wrong.onnx"
    assert main(["export", str(mlp_run), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert "error: verification failed" in captured.err
    assert "max abs diff" in captured.err and "max rel diff" in captured.err
    assert "output 'logits'" in captured.err or "output 'features'" in captured.err
    assert "tolerance 0.0001" in captured.err


def test_fallback_exporter_is_used_and_reported(mlp_run, tmp_path, monkeypatch, capsys):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("pretend torch.export cannot trace this model")

    monkeypatch.setattr(onnx_export, "_export_dynamo", refuse)
    out = tmp_path / "fallback.onnx"
    result = export_run(mlp_run, out, log=print)
    assert result.exporter == "torchscript"
    assert "pretend torch.export" in (result.fallback_reason or "")
    assert result.verification is not None and result.verification.passed
    text = capsys.readouterr().out
    assert "TorchScript-based, the fallback" in text and "pretend torch.export" in text
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 64):
        (logits,) = session.run(["logits"], {"x": np.random.rand(batch, 64).astype("float32")})
        assert logits.shape == (batch, 10)


@torch.library.custom_op("dgraph_test::wobble", mutates_args=())
def wobble(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@wobble.register_fake
def _(x):
    return torch.empty_like(x)


class Wobble(nn.Module):
    def forward(self, x):
        return wobble(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), Wobble())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return {"y": self.head(self.body(x))}


def test_unsupported_operator_is_named_with_its_module(tmp_path):
    wrapper = onnx_export.PortModule(Net().eval(), ["x"], ["y"])
    with pytest.raises(ExportError) as caught:
        onnx_export.export_module(wrapper, (torch.randn(3, 4),), tmp_path / "w.onnx",
                                  opset=18, dynamic=[{0: "B"}], output_dynamic=[{0: "B"}],
                                  what="node 'net'")
    message = str(caught.value)
    assert "operator 'dgraph_test::wobble'" in message
    assert "submodule 'body.1' (Wobble)" in message
    assert "node 'net'" in message


def test_unknown_node(mlp_run, tmp_path, capsys):
    assert main(["export", str(mlp_run), "-o", str(tmp_path / "m.onnx"),
                 "--node", "studnet"]) == 1
    err = capsys.readouterr().err
    assert "error: unknown node 'studnet'" in err and "did you mean 'student'" in err


def test_node_that_is_not_a_model(mlp_run, tmp_path, capsys):
    assert main(["export", str(mlp_run), "-o", str(tmp_path / "m.onnx"), "--node", "ce"]) == 1
    assert "node 'ce' is a loss" in capsys.readouterr().err


def test_node_never_trained(cnn_run, tmp_path, capsys):
    assert main(["export", str(cnn_run), "-o", str(tmp_path / "t.onnx"),
                 "--node", "teacher"]) == 1
    err = capsys.readouterr().err
    assert "error: node 'teacher' was never trained" in err
    assert "final weights" in err and "student" in err
    assert not (tmp_path / "t.onnx").exists()


def test_run_without_final_weights(mlp_run, tmp_path, capsys):
    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "spec.resolved.yaml").write_text((mlp_run / "spec.resolved.yaml").read_text())
    assert main(["export", str(run), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "training did not finish" in capsys.readouterr().err


def test_not_a_run_directory(tmp_path, capsys):
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "not a dgraph run directory" in capsys.readouterr().err


def test_onnxruntime_missing(mlp_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    out = tmp_path / "m.onnx"
    assert main(["export", str(mlp_run), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime is not installed" in err
    assert 'dgraph[cpu]' in err and "--no-check" in err
    assert not out.exists()  # refused before exporting
    assert main(["export", str(mlp_run), "-o", str(out), "--no-check"]) == 0
    assert out.exists()


def test_cuda_provider_unavailable(mlp_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CPUExecutionProvider"])
    assert main(["export", str(mlp_run), "-o", str(tmp_path / "m.onnx"),
                 "--provider", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "--provider cuda" in err and "CUDAExecutionProvider" in err
    assert 'pip install "dgraph[gpu]"' in err
