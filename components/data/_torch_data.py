"""The loaders behind the data components (imported only when a graph is built).

They return :class:`~dgraph.runtime.data.DataSource` objects; on the meta device (dry run) the
tensors are meta tensors of the true shapes and dtypes, and no data is read.
"""

from __future__ import annotations

import functools
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dgraph.components._inputs import existing_path, input_error

from dgraph.errors import SpecError, did_you_mean
from dgraph.ports import parse_shape
from dgraph.registry import BuildContext
from dgraph.runtime.data import DataSource

from .digits import DIGITS_CLASSES, DigitsParams, split_sizes
from .tensor_file import TensorFileKey, TensorFileParams

__all__ = ["TensorFileError", "build_digits", "build_tensor_file", "read_tensor_file",
           "stratified_subset"]


# -- digits -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]  # [N, 1, 8, 8] in [0, 1]
    labels = bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def stratified_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A boolean mask selecting ``count`` examples, per class in proportion to its frequency.

    Quotas are the largest-remainder rounding of ``count * class_frequency``; within a class the
    examples are drawn by a permutation seeded with ``seed``.
    """
    if not 0 <= count <= len(labels):
        raise ValueError(f"cannot select {count} of {len(labels)} examples")
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    exact = count * sizes / sizes.sum()
    quota = np.floor(exact).astype(np.int64)
    remainder = count - int(quota.sum())
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:remainder]] += 1
    quota = np.minimum(quota, sizes)
    mask = np.zeros(len(labels), dtype=bool)
    for cls, wanted in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == cls)
        mask[rng.permutation(members)[:wanted]] = True
    return mask


def build_digits(p: DigitsParams, context: BuildContext) -> DataSource:
    n_train, n_eval = split_sizes(p.test_fraction)
    x_tail = (64,) if p.flatten else (1, 8, 8)
    n_labelled = n_train if p.labelled is None else p.labelled
    if context.meta:
        def split(n: int) -> dict[str, torch.Tensor]:
            return {
                "x": torch.empty((n, *x_tail), device="meta"),
                "y": torch.empty(n, dtype=torch.int64, device="meta"),
                "labelled": torch.empty(n, dtype=torch.bool, device="meta"),
            }

        train, evaluation = split(n_train), split(n_eval)
        if p.with_index:
            train["index"] = torch.empty(n_train, dtype=torch.int64, device="meta")
            evaluation["index"] = torch.empty(n_eval, dtype=torch.int64, device="meta")
    else:
        from sklearn.model_selection import train_test_split

        images, labels = _digits_arrays()
        train_idx, eval_idx = train_test_split(
            np.arange(len(labels)), test_size=p.test_fraction, random_state=p.split_seed,
            stratify=labels,
        )
        assert len(train_idx) == n_train and len(eval_idx) == n_eval
        y_train = labels[train_idx].copy()
        has_label = np.ones(n_train, dtype=bool)
        if p.labelled is not None:
            has_label = stratified_subset(y_train, p.labelled, p.split_seed)
            y_train[~has_label] = -1

        def x_of(index: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(images[index].reshape(len(index), *x_tail).copy())

        train = {
            "x": x_of(train_idx),
            "y": torch.from_numpy(y_train),
            "labelled": torch.from_numpy(has_label),
        }
        evaluation = {
            "x": x_of(eval_idx),
            "y": torch.from_numpy(labels[eval_idx].copy()),
            "labelled": torch.ones(n_eval, dtype=torch.bool),
        }
        if p.with_index:
            train["index"] = torch.arange(n_train, dtype=torch.int64)
            evaluation["index"] = torch.arange(n_eval, dtype=torch.int64)
    return DataSource(
        train=train,
        eval=evaluation,
        batch_size=p.batch_size,
        shuffle=p.shuffle,
        drop_last=p.drop_last,
        label_names=[str(i) for i in range(DIGITS_CLASSES)],
        info={"dataset": "sklearn digits", "train": n_train, "eval": n_eval,
              "labelled": n_labelled, "num_classes": DIGITS_CLASSES},
    )


# -- tensor files -------------------------------------------------------------------------------
# Only tensors are ever loaded: .safetensors and .npy/.npz without pickles, .pt/.pth through
# torch.load(weights_only=True), which refuses every pickled object that is not a tensor.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
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
_PICKLE_HINT = ("save plain tensors: safetensors.torch.save_file({name: tensor}, path), or "
                "torch.save of a dict of tensors; dgraph never unpickles other objects")


class TensorFileError(SpecError):
    """A tensor file's contents do not match the spec. ``key``/``port`` say which entry of
    ``keys`` it is about; :func:`build_tensor_file` locates it on the node's parameter."""

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


def _npy_header(fp) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, without reading (or unpickling) the data."""
    version = np.lib.format.read_magic(fp)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(fp)
    return shape, dtype


def _read_npy(path: Path, wanted: list[str], meta: bool) -> dict[str, torch.Tensor]:
    if missing := [k for k in wanted if k != "array"]:
        raise _missing_key(path, missing[0], ["array"])
    with path.open("rb") as fp:
        shape, dtype = _npy_header(fp)
    torch_dtype = _numpy_dtype(dtype, path, "array")
    if meta:
        return {"array": _meta(shape, torch_dtype)}
    return {"array": _from_numpy(np.load(path, allow_pickle=False), path, "array", False)}


def _read_torch(path: Path, wanted: list[str], meta: bool) -> dict[str, torch.Tensor]:
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
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        available = list(handle.keys())
        for key in wanted:
            if key not in available:
                raise _missing_key(path, key, available)
            piece = handle.get_slice(key)
            dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
            if dtype is None:
                raise TensorFileError(
                    f"{path}: tensor '{key}' has a dtype dgraph does not read", key=key,
                    expected="one of " + ", ".join(_SAFETENSORS_DTYPES),
                    found=f"dtype {piece.get_dtype()}", hint="convert the tensor")
            out[key] = _meta(piece.get_shape(), dtype) if meta else handle.get_tensor(key)
    return out


def _convert(tensor: torch.Tensor, port: str, spec: TensorFileKey, path: Path,
             cast_float: bool) -> torch.Tensor:
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


def _load_split(p: TensorFileParams, raw: str, param: str, context: BuildContext
                ) -> dict[str, torch.Tensor]:
    path = existing_path(context, param, raw, kind="file", what=_WHAT)
    try:
        found = read_tensor_file(path, [spec.key for spec in p.keys.values()],
                                 meta=context.meta)
        split = {
            port: _convert(found[spec.key], port, spec, path, p.cast_float)
            for port, spec in p.keys.items()
        }
        lengths = {port: int(t.shape[0]) for port, t in split.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{port} ('{p.keys[port].key}'): {n}"
                               for port, n in lengths.items())
            raise TensorFileError(
                f"{path}: the tensors have different lengths", param="keys",
                expected="the same first dimension (number of examples) in every tensor",
                found=listed, hint="every tensor's first dimension must index the same "
                "examples")
    except TensorFileError as exc:
        located = exc.param or param
        port = next((port for port, spec in p.keys.items() if spec.key == exc.key), None)
        if port is not None:
            located = f"keys.{port}.key"
        raise input_error(context, located, exc.message, code=exc.code,
                          expected=exc.expected or _WHAT, found=exc.found or "",
                          hint=exc.suggestion or "") from None
    return split


def build_tensor_file(p: TensorFileParams, context: BuildContext) -> DataSource:
    train = _load_split(p, p.path, "path", context)
    evaluation = None
    if p.eval_path is not None:
        evaluation = _load_split(p, p.eval_path, "eval_path", context)
    return DataSource(
        train=train,
        eval=evaluation,
        batch_size=p.batch_size,
        shuffle=p.shuffle,
        drop_last=p.drop_last,
        label_names=list(p.label_names) if p.label_names is not None else None,
        info={"path": str(context.resolve_path(p.path)),
              "eval_path": None if p.eval_path is None else str(context.resolve_path(p.eval_path))},
    )
