"""Tensors read from a file: ``.pt`` (a dict of tensors), ``.npy``, ``.npz`` or ``.safetensors``.

Which keys become which output ports, with which semantic types, is given in the parameters,
so the ports are resolved per node. Their shapes are unknown statically unless declared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import Field, field_validator

from dgraph.ports import SEMANTIC_TYPES, Port, parse_shape
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["SUFFIXES", "TensorFile", "TensorFileKey", "TensorFileParams"]

SUFFIXES = (".pt", ".pth", ".npy", ".npz", ".safetensors")
_PORT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TensorFileKey(Params):
    """Where one output port's tensor is stored in the file, and what it means."""

    key: str = Field(min_length=1, description="the tensor's name in the file ('array' for "
                     "a .npy file, which holds one array)")
    type: str = Field("Tensor", description="semantic type of the port, e.g. Images or Labels")
    shape: str | None = Field(
        None, description="optional symbolic shape, e.g. 'B, 3, 32, 32'; checked on load"
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in SEMANTIC_TYPES:
            raise ValueError(f"unknown semantic type '{value}'; known: {', '.join(SEMANTIC_TYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _parsable_shape(cls, value: str | None) -> str | None:
        parse_shape(value)  # raises ValueError with the offending dimension
        return value


class TensorFileParams(Params):
    """Parameters of :class:`TensorFile`."""

    path: str = Field(min_length=1, description="training file, relative to the spec's folder")
    eval_path: str | None = Field(
        None, description="held-out file with the same keys (optional)"
    )
    keys: dict[str, TensorFileKey] = Field(
        min_length=1,
        description="output port -> {key, type, shape?}, e.g. "
        "{x: {key: images, type: Images}, y: {key: labels, type: Labels}}",
    )
    batch_size: int = Field(64, gt=0, description="examples per batch")
    shuffle: bool = Field(True, description="reshuffle the training set every epoch")
    drop_last: bool = Field(True, description="skip the last incomplete training batch")
    cast_float: bool = Field(
        True, description="convert floating tensors (float64, float16, ...) to float32"
    )
    label_names: list[str] | None = Field(None, description="class names, for metrics/export")

    @field_validator("path", "eval_path")
    @classmethod
    def _known_suffix(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().endswith(SUFFIXES):
            raise ValueError(f"'{value}' is not one of the supported files ({', '.join(SUFFIXES)})")
        return value

    @field_validator("keys")
    @classmethod
    def _port_names(cls, value: dict[str, TensorFileKey]) -> dict[str, TensorFileKey]:
        bad = [name for name in value if not _PORT_NAME.match(name)]
        if bad:
            raise ValueError(f"output port names must be identifiers, found {bad}")
        return value


@component("tensor_file", roles=("data",))
class TensorFile(Component):
    """A data source read from tensor files: one output port per entry of ``keys``.

    Formats: ``.pt``/``.pth`` (a dict of tensors, read with ``torch.load(weights_only=True)``),
    ``.npz`` (named arrays) and ``.safetensors`` (named tensors), all read with pickling
    disabled, and ``.npy`` (one array, under the key ``array``). Every tensor's first dimension
    indexes examples and must have the same length. ``Labels``/``Tokens`` ports are converted to
    int64, ``Mask`` ports to bool, and floating tensors to float32 unless ``cast_float: false``.
    Port shapes are unknown statically (``None``) unless a ``shape`` is given for the key; a
    given shape's rank and fixed sizes are checked when the file is read. In a dry run (meta
    device) only the files' headers are read.
    """

    Params = TensorFileParams
    inputs: dict[str, Port] = {}
    outputs: dict[str, Port] = {}  # one per entry of the 'keys' parameter

    def resolved_outputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        return {
            port: Port(spec.type, spec.shape, f"'{spec.key}' from {self.params.path}")
            for port, spec in self.params.keys.items()
        }

    def build(self, context: BuildContext):
        from dgraph.components.data._torch_data import build_tensor_file

        return build_tensor_file(self.params, context)
