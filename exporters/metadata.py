"""What an exported file says about itself: ONNX ``metadata_props`` written by dgraph.

Keys (all values are strings; JSON where structured):

* ``dgraph.version``, ``dgraph.spec.name``, ``dgraph.spec.sha256`` (of ``spec.resolved.yaml``)
* ``dgraph.node``, ``dgraph.node.type``, ``dgraph.node.kind``, ``dgraph.node.params``
* ``dgraph.inputs`` / ``dgraph.outputs``: port -> ``{type, shape, dims, dtype, doc}``, where
  ``shape`` is the declared symbolic shape and ``dims`` the exported one (symbols are dynamic)
* ``dgraph.dynamic_axes``: input -> {axis: symbol}
* ``dgraph.exporter``, ``dgraph.opset``, ``dgraph.precision``, ``dgraph.torch_version``
* ``dgraph.label_names`` (classifiers whose data source names its classes)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["build_metadata", "read_metadata", "write_metadata"]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def build_metadata(subject, inputs, outputs, *, exporter: str, opset: int, precision: str
                   ) -> dict[str, str]:
    import torch

    from dgraph import __version__

    node = subject.node
    props = {
        "dgraph.version": __version__,
        "dgraph.spec.name": subject.spec.display_name,
        "dgraph.spec.sha256": subject.spec_hash,
        "dgraph.node": subject.name,
        "dgraph.node.type": node.spec.type,
        "dgraph.node.kind": node.kind,
        "dgraph.node.params": _json(node.spec.params),
        "dgraph.inputs": _json({i.name: i.to_json() for i in inputs}),
        "dgraph.outputs": _json({o.name: o.to_json() for o in outputs}),
        "dgraph.dynamic_axes": _json({i.name: {str(k): v for k, v in i.dynamic.items()}
                                      for i in inputs if i.dynamic}),
        "dgraph.exporter": exporter,
        "dgraph.opset": str(opset),
        "dgraph.precision": precision,
        "dgraph.torch_version": torch.__version__,
    }
    if subject.spec.description:
        props["dgraph.spec.description"] = subject.spec.description
    if subject.label_names:
        props["dgraph.label_names"] = _json(list(subject.label_names))
    return props


def write_metadata(path: Path, props: dict[str, str], docs: dict[str, str] | None = None,
                   doc_string: str | None = None) -> None:
    """Add ``props`` to the file's ``metadata_props`` (replacing keys of the same name) and
    the ports' documentation to the graph's inputs and outputs. Weights stay where they are."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    existing = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**existing, **props})
    for value in (*model.graph.input, *model.graph.output):
        if docs and value.name in docs:
            value.doc_string = docs[value.name]
    if doc_string:
        model.doc_string = doc_string
    onnx.save(model, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, as a dict (weights are not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
