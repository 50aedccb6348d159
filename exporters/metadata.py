"""What an exported file says about itself: ONNX ``metadata_props`` written by dgraph.

Keys (all values are strings; JSON where structured):

* ``dgraph.version``, ``dgraph.spec.name``, ``dgraph.spec.sha256`` (of ``spec.resolved.yaml``)
* ``dgraph.node``, ``dgraph.node.type``, ``dgraph.node.kind``, ``dgraph.node.params``
* ``dgraph.inputs`` / ``dgraph.outputs``: port -> ``{type, shape, dims, dtype, doc}``, where
  ``shape`` is the declared symbolic shape and ``dims`` the exported one (symbols are dynamic)
* ``dgraph.dynamic_axes``: input -> {axis: symbol}
* ``dgraph.exporter``, ``dgraph.opset``, ``dgraph.precision``, ``dgraph.torch_version``
* ``dgraph.weights_sha256``: the hash of the weights stored in the file (below)
* ``dgraph.run_dir``: the absolute path of the run directory exported (optional; what
  ``dgraph export --check`` compares against when it still exists)
* ``dgraph.label_names`` (classifiers whose data source names its classes)

``dgraph.weights_sha256`` is recomputed from the ONNX file alone: SHA-256 over the tensors the
file stores (every initializer of the main graph and the ``value`` of every ``Constant`` node
of the main graph), sorted by key, ``initializer:<name>`` or ``constant:<output name>``. Each
tensor adds four fields, each preceded by its length in bytes as an 8-byte little-endian
integer: the key (UTF-8), the ONNX data type (decimal, ASCII), the dims (comma-separated
decimals, ASCII) and the values as ``onnx.numpy_helper.to_array`` gives them, C-order,
little-endian (strings: each UTF-8 value preceded by its length). External data is read from
the file's folder. Metadata is not part of the hash, so writing it does not change the hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgraph.errors import ExportError

__all__ = ["REQUIRED_KEYS", "RUN_DIR_KEY", "WEIGHTS_KEY", "WeightsDigest", "build_metadata",
           "check_external_data", "parse_metadata", "read_metadata", "weights_digest",
           "write_metadata"]

WEIGHTS_KEY = "dgraph.weights_sha256"
RUN_DIR_KEY = "dgraph.run_dir"
_JSON_OBJECTS = ("dgraph.node.params", "dgraph.inputs", "dgraph.outputs",
                 "dgraph.dynamic_axes")
REQUIRED_KEYS = ("dgraph.version", "dgraph.spec.name", "dgraph.spec.sha256", "dgraph.node",
                 "dgraph.node.type", "dgraph.node.kind", *_JSON_OBJECTS, "dgraph.exporter",
                 "dgraph.opset", "dgraph.precision", "dgraph.torch_version", WEIGHTS_KEY)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def build_metadata(subject, inputs, outputs, *, exporter: str, opset: int, precision: str,
                   weights_sha256: str) -> dict[str, str]:
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
        WEIGHTS_KEY: weights_sha256,
        RUN_DIR_KEY: str(Path(subject.run_dir).resolve()),
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


@dataclass
class WeightsDigest:
    """The weights hash of a file, how many tensors it covers, and the first non-finite one."""

    sha256: str
    tensors: int
    nonfinite: tuple[str, int, int] | None = None  # (key, non-finite values, all values)


def _stored_tensors(model) -> list[tuple[str, Any]]:
    import onnx

    items = [(f"initializer:{t.name}", t) for t in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    items.append((f"constant:{node.output[0]}", attr.t))
    return sorted(items, key=lambda item: item[0])


def _field(digest, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _payload(array) -> bytes:
    import numpy as np

    if array.dtype.kind in "OSU":
        out = bytearray()
        for value in array.reshape(-1).tolist():
            data = value if isinstance(value, bytes) else str(value).encode()
            out += len(data).to_bytes(8, "little") + data
        return bytes(out)
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.byteswap().view(array.dtype.newbyteorder("<"))
    return array.tobytes()


def _nonfinite(array) -> int:
    import numpy as np

    if array.dtype.kind in "biuOSU" or array.size == 0:
        return 0
    try:
        return int(array.size - np.count_nonzero(np.isfinite(array)))
    except TypeError:  # a dtype numpy cannot test
        return 0


def weights_digest(model, base_dir: Path) -> WeightsDigest:
    """``dgraph.weights_sha256`` of a loaded model (external data read from ``base_dir``)."""
    from onnx import numpy_helper

    digest = hashlib.sha256()
    items = _stored_tensors(model)
    first = None
    for key, tensor in items:
        try:
            array = numpy_helper.to_array(tensor, str(base_dir))
        except Exception as exc:
            raise ExportError(f"cannot read the weights of tensor '{key.split(':', 1)[1]}' in "
                              f"{base_dir}: {type(exc).__name__}: {exc}") from None
        _field(digest, key.encode())
        _field(digest, str(int(tensor.data_type)).encode())
        _field(digest, ",".join(str(int(d)) for d in tensor.dims).encode())
        _field(digest, _payload(array))
        if first is None:
            bad = _nonfinite(array)
            if bad:
                first = (key.split(":", 1)[1], bad, int(array.size))
    return WeightsDigest(digest.hexdigest(), len(items), first)


def check_external_data(model, path: Path) -> None:
    """Refuse external-data locations outside the file's folder (``../``, absolute paths)."""
    import onnx

    folder = path.parent.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ExportError(
                f"{path}: tensor '{tensor.name}' keeps its data in '{location}', outside the "
                f"file's folder {folder}; dgraph reads external data only next to the file"
            )


def _bad(path: Path, key: str, found: str, expected: str) -> ExportError:
    return ExportError(
        f"{path}: metadata '{key}' is {found}; expected {expected}. hint: the file was not "
        "written by this version of `dgraph export`, or its metadata was edited; export it "
        "again from its run directory"
    )


def parse_metadata(props: dict[str, str], path: Path) -> dict[str, Any]:
    """The dgraph keys of ``props``, parsed; :class:`ExportError` naming the first bad one."""
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise ExportError(
            f"{path}: the ONNX metadata lacks {', '.join(repr(k) for k in missing)}. hint: "
            "files exported before dgraph stored a weights hash, or not by `dgraph export`, "
            "cannot be re-verified; export it again from its run directory"
        )
    parsed: dict[str, Any] = dict(props)
    for key in _JSON_OBJECTS:
        try:
            value = json.loads(props[key])
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise _bad(path, key, repr(props[key][:80]), "a JSON object")
        parsed[key] = value
    if "dgraph.label_names" in props:
        try:
            labels = json.loads(props["dgraph.label_names"])
        except ValueError:
            labels = None
        if not isinstance(labels, list):
            raise _bad(path, "dgraph.label_names", repr(props["dgraph.label_names"][:80]),
                       "a JSON list")
        parsed["dgraph.label_names"] = labels
    opset = props["dgraph.opset"]
    if not opset.isdigit():
        raise _bad(path, "dgraph.opset", repr(opset), "an integer")
    parsed["dgraph.opset"] = int(opset)
    if props["dgraph.precision"] not in ("fp32", "fp16"):
        raise _bad(path, "dgraph.precision", repr(props["dgraph.precision"]), "fp32 or fp16")
    for key in ("dgraph.spec.sha256", WEIGHTS_KEY):
        if not _SHA256.fullmatch(props[key]):
            raise _bad(path, key, repr(props[key][:80]), "64 lowercase hex digits (SHA-256)")
    return parsed
