"""ONNX outputs are named after ports, also when a port is named like a value inside the graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from dgraph.exporters.onnx_export import DYNAMO, PortModule, export_module
from torch import nn


class _Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(11, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        vectors = self.table(ids)  # an aten::embedding value inside the graph
        return {"embedding": vectors.mean(dim=1), "logits": self.head(vectors).sum(dim=1)}


def test_a_port_named_like_an_inner_value_is_exported_under_its_name(tmp_path):
    torch.manual_seed(0)
    wrapper = PortModule(_Embedder().eval(), ["ids"], ["embedding", "logits"])
    ids = torch.tensor([[1, 2, 3], [4, 5, 10]])
    path = tmp_path / "m.onnx"
    info = export_module(wrapper, (ids,), path, opset=18, dynamic=[{0: "batch"}],
                         output_dynamic=[{0: "batch"}, {0: "batch"}])
    assert info.exporter == DYNAMO, info.fallback_reason
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["embedding", "logits"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    embedding, logits = session.run(["embedding", "logits"], {"ids": ids.numpy()})
    with torch.no_grad():
        expected = wrapper.module(ids)
    np.testing.assert_allclose(embedding, expected["embedding"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, expected["logits"].numpy(), rtol=1e-5, atol=1e-6)
