"""Tensors read from a file: ``.pt`` (a dict of tensors), ``.npy``, ``.npz`` or ``.safetensors``.

Which keys become which output ports, with which semantic types, is given in the parameters,
so the ports are resolved per node. Their shapes are unknown statically unless declared.
Only tensors are ever loaded: .safetensors and .npy/.npz without pickles, .pt/.pth through
``torch.load(weights_only=True)``, which refuses every pickled object that is not a tensor.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from dgraph.components._inputs import existing_path, input_error
from pydantic import AfterValidator, Field, field_validator

from dgraph.declare import Outputs, data, param
from dgraph.errors import SpecError, did_you_mean
from dgraph.ports import SEMANTIC_TYPES, Port, parse_shape
from dgraph.registry import BuildContext, Params

if TYPE_CHECKING:
    import numpy as np
    import torch


__all__ = ["SUFFIXES", "TensorFileError", "TensorFileKey", "read_tensor_file", "tensor_file"]

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


def _known_suffix(value: str) -> str:
    if not value.lower().endswith(SUFFIXES):
        raise ValueError(f"'{value}' is not one of the supported files ({', '.join(SUFFIXES)})")
    return value


def _port_names(value: dict[str, TensorFileKey]) -> dict[str, TensorFileKey]:
    bad = [name for name in value if not _PORT_NAME.match(name)]
    if bad:
        raise ValueError(f"output port names must be identifiers, found {bad}")
    return value


_TensorPath = Annotated[str, AfterValidator(_known_suffix)]
_Keys = Annotated[dict[str, TensorFileKey], AfterValidator(_port_names)]


def _ports(p) -> dict[str, Port]:  # noqa: ANN001 - the generated parameter model
    return {port: Port(spec.type, spec.shape, f"'{spec.key}' from {p.path}")
            for port, spec in p.keys.items()}


@data("tensor_file", output_ports=_ports)
def tensor_file(
    *,
    path: _TensorPath = param(min_length=1, doc="training file, relative to the spec's folder"),
    eval_path: _TensorPath | None = param(None, doc="held-out file with the same keys "
                                          "(optional)"),
    keys: _Keys = param(min_length=1, doc="output port -> {key, type, shape?}, e.g. "
                        "{x: {key: images, type: Images}, y: {key: labels, type: Labels}}"),
    batch_size: int = param(64, gt=0, doc="examples per batch"),
    shuffle: bool = param(True, doc="reshuffle the training set every epoch"),
    drop_last: bool = param(True, doc="skip the last incomplete training batch"),
    cast_float: bool = param(True, doc="convert floating tensors (float64, float16, ...) to "
                             "float32"),
    label_names: list[str] | None = param(None, doc="class names, for metrics/export"),
    context: BuildContext,
) -> Outputs():  # one output port per entry of the 'keys' parameter
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
    from dgraph.data import DataSource

    train = _load_split(keys, cast_float, path, "path", context)
    evaluation = None
    if eval_path is not None:
        evaluation = _load_split(keys, cast_float, eval_path, "eval_path", context)
    return DataSource(
        train=train, eval=evaluation, batch_size=batch_size, shuffle=shuffle,
        drop_last=drop_last, label_names=None if label_names is None else list(label_names),
        info={"path": str(context.resolve_path(path)),
              "eval_path": None if eval_path is None else str(context.resolve_path(eval_path))},
    )


_INTEGER_TYPES = ("Labels", "Tokens")
_WHAT = "a tensor file (.pt, .pth, .npy, .npz or .safetensors)"
# suffix -> (format name, how such a file is written, the leading bytes it may start with)
_FORMATS: dict[str, tuple[str, str, tuple[bytes, ...]]] = {
    ".pt": ("torch.save", "torch.save({name: tensor, ...}, path)", (b"PK\x03\x04", b"\x80")),
    ".pth": ("torch.save", "torch.save({name: tensor, ...}, path)", (b"PK\x03\x04", b"\x80")),
    ".npy": (".npy", "numpy.save(path, array)", (b"\x93NUMPY",)),
    ".npz": (".npz", "numpy.savez(path, name=array, ...)", (b"PK\x03\x04", b"PK\x05\x06")),
    ".safetensors": ("safetensors", "safetensors.torch.save_file({name: tensor}, path)", ()),
}
_SAFETENSORS_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")
_PICKLE_HINT = ("save plain tensors: safetensors.torch.save_file({name: tensor}, path), or "
                "torch.save of a dict of tensors; dgraph never unpickles other objects")


class TensorFileError(SpecError):
    """A tensor file's contents do not match the spec. ``key``/``port`` say which entry of
    ``keys`` it is about; the ``tensor_file`` builder locates it on the node's parameter."""

    def __init__(self, message: str, *, expected: str, found: str, hint: str,
                 code: str = "bad-tensor-file", key: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message, code=code, expected=expected, found=found, suggestion=hint)
        self.key = key
        self.param = param


def _looks_like(head: bytes) -> str:
    """What the first bytes of a file suggest it is, for 'found:' lines."""
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        return "a zip archive"
    if head.startswith(b"\x93NUMPY"):
        return "a .npy array"
    if head.startswith(b"\x80"):
        return "a Python pickle"
    if len(head) > 8 and head[8:9] == b"{":
        return "a safetensors file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data starting with {head[:8]!r}"
    return f"text starting with {text[:24]!r}"


def _check_format(path: Path, suffix: str) -> None:
    name, writer, magics = _FORMATS[suffix]
    with path.open("rb") as fp:
        head = fp.read(16)
    if suffix == ".safetensors":
        ok = len(head) > 8 and head[8:9] == b"{"
    else:
        ok = any(head.startswith(m) for m in magics)
    if not ok:
        raise TensorFileError(
            f"{path} is not a {name} file", expected=f"a {name} file, as written by {writer}",
            found=_looks_like(head),
            hint=f"write it with {writer}, or give the file the suffix of its format")


def _numpy_dtype(dtype: np.dtype, path: Path, key: str) -> torch.dtype:
    import numpy as np
    import torch

    if np.dtype(dtype).hasobject:
        raise TensorFileError(
            f"{path}: array '{key}' holds pickled Python objects, which dgraph never loads",
            code="pickle-refused", key=key,
            expected="an array of numbers or booleans",
            found=f"an array of dtype {dtype} (Python objects, stored as a pickle)",
            hint=_PICKLE_HINT)
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype).newbyteorder("="))).dtype
    except TypeError:
        raise TensorFileError(
            f"{path}: array '{key}' has a dtype torch cannot hold", key=key,
            expected="a numeric or boolean dtype (float16/32/64, int8..64, uint8, bool)",
            found=f"dtype {dtype}", hint="convert the array (e.g. array.astype('float32'))"
        ) from None


def _meta(shape: Iterable[int], dtype: torch.dtype) -> torch.Tensor:
    import torch

    return torch.empty(tuple(int(s) for s in shape), dtype=dtype, device="meta")


def _missing_key(path: Path, key: str, available: Iterable[str]) -> TensorFileError:
    names = sorted(available)
    close = did_you_mean(key, names)
    return TensorFileError(
        f"{path} holds no tensor named '{key}'", key=key,
        expected=f"a tensor named '{key}'",
        found="the file holds " + (", ".join(f"'{n}'" for n in names) or "no tensors"),
        hint=(close + " " if close else "") + "set the key to a tensor name of the file")


def read_tensor_file(path: Path, keys: Iterable[str], *, meta: bool = False
                     ) -> dict[str, torch.Tensor]:
    """The tensors named ``keys`` in ``path`` (meta tensors of their shapes when ``meta``).

    Raises :class:`TensorFileError` (a :class:`SpecError`) for a file that is missing, not
    of its suffix's format, corrupt, pickled, or without one of the keys.
    """
    wanted = list(dict.fromkeys(keys))
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise TensorFileError(f"{path}: unsupported file type '{suffix}'", expected=_WHAT,
                              found=f"a '{suffix}' file", hint="convert it to .safetensors")
    if not path.is_file():
        raise TensorFileError(f"tensor file not found: {path}", code="missing-file",
                              expected=_WHAT, found=f"{path}: no such file",
                              hint="check the path")
    _check_format(path, suffix)
    try:
        if suffix in (".pt", ".pth"):
            return _read_torch(path, wanted, meta)
        if suffix == ".npy":
            return _read_npy(path, wanted, meta)
        if suffix == ".npz":
            return _read_npz(path, wanted, meta)
        return _read_safetensors(path, wanted, meta)
    except TensorFileError:
        raise
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise TensorFileError(
            f"{path} holds pickled Python objects, which dgraph never loads",
            code="pickle-refused",
            expected="tensors only: a dict of tensors (read with "
            "torch.load(weights_only=True)), or a .safetensors file",
            found=f"a pickle that calls {refused.group(1)}" if refused else
            "a pickle with objects other than tensors", hint=_PICKLE_HINT) from None
    except Exception as exc:  # a corrupt file: truncated archives, bad headers
        name, writer, _ = _FORMATS[suffix]
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TensorFileError(
            f"{path} cannot be read as a {name} file", expected=f"a {name} file, as written "
            f"by {writer}", found=f"{type(exc).__name__}: {first}",
            hint="the file may be truncated or corrupt: write it again") from exc


def _from_numpy(array: np.ndarray, path: Path, key: str, meta: bool) -> torch.Tensor:
    import numpy as np
    import torch

    dtype = _numpy_dtype(array.dtype, path, key)
    if meta:
        return _meta(array.shape, dtype)
    native = array.dtype.newbyteorder("=")
    if array.dtype != native:
        array = array.astype(native)
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def _npy_header(fp: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, without reading (or unpickling) the data."""
    import numpy as np

    version = np.lib.format.read_magic(fp)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(fp)
    return shape, dtype


def _read_npy(path: Path, wanted: list[str], meta: bool) -> dict[str, torch.Tensor]:
    import numpy as np

    if missing := [k for k in wanted if k != "array"]:
        raise _missing_key(path, missing[0], ["array"])
    with path.open("rb") as fp:
        shape, dtype = _npy_header(fp)
    torch_dtype = _numpy_dtype(dtype, path, "array")
    if meta:
        return {"array": _meta(shape, torch_dtype)}
    return {"array": _from_numpy(np.load(path, allow_pickle=False), path, "array", False)}


def _read_torch(path: Path, wanted: list[str], meta: bool) -> dict[str, torch.Tensor]:
    import torch

    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=meta)
    except RuntimeError:
        if not meta:
            raise
        obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    if isinstance(obj, torch.Tensor):
        obj = {"array": obj}
    if not isinstance(obj, dict):
        raise TensorFileError(f"{path} holds a {type(obj).__name__}, not tensors",
                              expected="a dict of tensors (or one tensor, key 'array')",
                              found=f"a {type(obj).__name__}",
                              hint="save it with torch.save({name: tensor, ...}, path)")
    out: dict[str, torch.Tensor] = {}
    for key in wanted:
        if key not in obj:
            raise _missing_key(path, key, map(str, obj))
        value = obj[key]
        if not isinstance(value, torch.Tensor):
            raise TensorFileError(f"{path}: '{key}' is not a tensor", key=key,
                                  expected=f"a tensor under '{key}'",
                                  found=f"a {type(value).__name__}",
                                  hint="store tensors only")
        out[key] = _meta(value.shape, value.dtype) if meta else value
    return out


def _read_npz(path: Path, wanted: list[str], meta: bool) -> dict[str, torch.Tensor]:
    import numpy as np

    out: dict[str, torch.Tensor] = {}
    with zipfile.ZipFile(path) as zf:
        available = [name.removesuffix(".npy") for name in zf.namelist()]
        for key in wanted:
            if key not in available:
                raise _missing_key(path, key, available)
            with zf.open(f"{key}.npy") as fp:
                shape, dtype = _npy_header(fp)
            torch_dtype = _numpy_dtype(dtype, path, key)
            if meta:
                out[key] = _meta(shape, torch_dtype)
    if not meta:
        with np.load(path, allow_pickle=False) as archive:
            for key in wanted:
                out[key] = _from_numpy(archive[key], path, key, meta=False)
    return out


def _read_safetensors(path: Path, wanted: list[str], meta: bool) -> dict[str, torch.Tensor]:
    import torch
    from safetensors import safe_open

    dtypes = dict(zip(_SAFETENSORS_DTYPES, (
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.bool), strict=True))
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        available = list(handle.keys())
        for key in wanted:
            if key not in available:
                raise _missing_key(path, key, available)
            piece = handle.get_slice(key)
            dtype = dtypes.get(piece.get_dtype())
            if dtype is None:
                raise TensorFileError(
                    f"{path}: tensor '{key}' has a dtype dgraph does not read", key=key,
                    expected="one of " + ", ".join(_SAFETENSORS_DTYPES),
                    found=f"dtype {piece.get_dtype()}", hint="convert the tensor")
            out[key] = _meta(piece.get_shape(), dtype) if meta else handle.get_tensor(key)
    return out


def _convert(tensor: torch.Tensor, port: str, spec: TensorFileKey, path: Path,
             cast_float: bool) -> torch.Tensor:
    import torch

    where = f"{path}: tensor '{spec.key}' (port '{port}', {spec.type})"
    if tensor.dim() == 0:
        raise TensorFileError(f"{where} is a scalar", param=f"keys.{port}.key",
                              expected="a tensor whose first dimension indexes examples",
                              found="a 0-dimensional tensor",
                              hint="store one value per example")
    if spec.type in _INTEGER_TYPES:
        if tensor.is_floating_point() or tensor.is_complex():
            raise TensorFileError(f"{where} does not hold integers", param=f"keys.{port}.type",
                                  expected=f"integer values ({spec.type} are indices)",
                                  found=f"dtype {tensor.dtype}".replace("torch.", ""),
                                  hint="store the tensor as int64, or give the port another "
                                  "type")
        tensor = tensor.to(torch.int64)
    elif spec.type == "Mask":
        if tensor.is_floating_point() or tensor.is_complex():
            raise TensorFileError(f"{where} does not hold a mask", param=f"keys.{port}.type",
                                  expected="bool or 0/1 integer values",
                                  found=f"dtype {tensor.dtype}".replace("torch.", ""),
                                  hint="store the mask as bool")
        tensor = tensor.to(torch.bool)
    elif cast_float and tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    declared = parse_shape(spec.shape)
    if declared is not None and not _shape_matches(declared, tuple(tensor.shape)):
        raise TensorFileError(f"{where} does not have the declared shape",
                              param=f"keys.{port}.shape", expected=f"shape [{spec.shape}]",
                              found=f"shape {list(tensor.shape)}",
                              hint="fix the declared shape, or the file")
    return tensor


def _shape_matches(declared: list, actual: tuple[int, ...]) -> bool:
    ellipsis = any(d.ellipsis for d in declared)
    fixed = [d for d in declared if not d.ellipsis]
    if not (len(actual) >= len(fixed) if ellipsis else len(actual) == len(fixed)):
        return False
    head = 0
    for dim in declared:
        if dim.ellipsis:
            break
        head += 1
    pairs = list(zip(declared[:head], actual[:head], strict=True))
    if ellipsis:
        tail = declared[head + 1:]
        pairs += list(zip(tail, actual[len(actual) - len(tail):], strict=True))
    return all(dim.size is None or dim.size == size for dim, size in pairs)


def _load_split(keys: dict[str, TensorFileKey], cast_float: bool, raw: str, param: str,
                context: BuildContext) -> dict[str, torch.Tensor]:
    path = existing_path(context, param, raw, kind="file", what=_WHAT)
    try:
        found = read_tensor_file(path, [spec.key for spec in keys.values()], meta=context.meta)
        split = {port: _convert(found[spec.key], port, spec, path, cast_float)
                 for port, spec in keys.items()}
        lengths = {port: int(t.shape[0]) for port, t in split.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{port} ('{keys[port].key}'): {n}" for port, n in lengths.items())
            raise TensorFileError(
                f"{path}: the tensors have different lengths", param="keys",
                expected="the same first dimension (number of examples) in every tensor",
                found=listed, hint="every tensor's first dimension must index the same "
                "examples")
    except TensorFileError as exc:
        located = exc.param or param
        port = next((port for port, spec in keys.items() if spec.key == exc.key), None)
        if port is not None:
            located = f"keys.{port}.key"
        raise input_error(context, located, exc.message, code=exc.code,
                          expected=exc.expected or _WHAT, found=exc.found or "",
                          hint=exc.suggestion or "") from None
    return split
