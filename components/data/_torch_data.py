"""The loaders behind the data components (imported only when a graph is built).

They return :class:`~dgraph.runtime.data.DataSource` objects; on the meta device (dry run) the
tensors are meta tensors of the true shapes and dtypes, and no data is read.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgraph.errors import SpecError
from dgraph.ports import parse_shape
from dgraph.registry import BuildContext
from dgraph.runtime.data import DataSource

from .digits import DIGITS_CLASSES, DigitsParams, split_sizes
from .tensor_file import TensorFileKey, TensorFileParams

__all__ = ["build_digits", "build_tensor_file", "read_tensor_file", "stratified_subset"]


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
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_INTEGER_TYPES = ("Labels", "Tokens")


def _numpy_dtype(dtype: np.dtype, path: Path, key: str) -> torch.dtype:
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype).newbyteorder("="))).dtype
    except TypeError:
        raise SpecError(
            f"{path}: array '{key}' has dtype {dtype}, which torch cannot hold"
        ) from None


def _meta(shape: Iterable[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(int(s) for s in shape), dtype=dtype, device="meta")


def _missing_key(path: Path, key: str, available: Iterable[str]) -> SpecError:
    names = sorted(available)
    return SpecError(
        f"{path}: no tensor named '{key}' in the file; it holds: "
        + (", ".join(f"'{n}'" for n in names) or "nothing")
    )


def read_tensor_file(path: Path, keys: Iterable[str], *, meta: bool = False
                     ) -> dict[str, torch.Tensor]:
    """The tensors named ``keys`` in ``path`` (meta tensors of their shapes when ``meta``)."""
    wanted = list(dict.fromkeys(keys))
    if not path.is_file():
        raise SpecError(f"tensor file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".pt", ".pth"):
            return _read_torch(path, wanted, meta)
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False, mmap_mode="r" if meta else None)
            found = {"array": array}
            if missing := [k for k in wanted if k not in found]:
                raise _missing_key(path, missing[0], found)
            return {k: _from_numpy(found[k], path, k, meta) for k in wanted}
        if suffix == ".npz":
            return _read_npz(path, wanted, meta)
        if suffix == ".safetensors":
            return _read_safetensors(path, wanted, meta)
    except SpecError:
        raise
    except Exception as exc:  # corrupt files, pickles refused by weights_only, bad headers
        raise SpecError(f"{path}: cannot read the file: {type(exc).__name__}: {exc}") from exc
    raise SpecError(f"{path}: unsupported file type '{suffix}' "
                    "(use .pt, .pth, .npy, .npz or .safetensors)")


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
        raise SpecError(f"{path}: expected a dict of tensors (or one tensor), found "
                        f"{type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key in wanted:
        if key not in obj:
            raise _missing_key(path, key, map(str, obj))
        value = obj[key]
        if not isinstance(value, torch.Tensor):
            raise SpecError(f"{path}: '{key}' is a {type(value).__name__}, not a tensor")
        out[key] = _meta(value.shape, value.dtype) if meta else value
    return out


def _read_npz(path: Path, wanted: list[str], meta: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with np.load(path, allow_pickle=False) as archive:
        available = list(archive.files)
        for key in wanted:
            if key not in available:
                raise _missing_key(path, key, available)
            if not meta:
                out[key] = _from_numpy(archive[key], path, key, meta=False)
    if meta:
        with zipfile.ZipFile(path) as zf:
            for key in wanted:
                with zf.open(f"{key}.npy") as fp:
                    version = np.lib.format.read_magic(fp)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(fp)
                out[key] = _meta(shape, _numpy_dtype(dtype, path, key))
    return out


def _read_safetensors(path: Path, wanted: list[str], meta: bool) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        available = list(handle.keys())
        for key in wanted:
            if key not in available:
                raise _missing_key(path, key, available)
            if meta:
                piece = handle.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
                if dtype is None:
                    raise SpecError(f"{path}: tensor '{key}' has unsupported dtype "
                                    f"{piece.get_dtype()}")
                out[key] = _meta(piece.get_shape(), dtype)
            else:
                out[key] = handle.get_tensor(key)
    return out


def _convert(tensor: torch.Tensor, port: str, spec: TensorFileKey, path: Path,
             cast_float: bool) -> torch.Tensor:
    where = f"{path}: port '{port}' (key '{spec.key}', {spec.type})"
    if tensor.dim() == 0:
        raise SpecError(f"{where} is a scalar; its first dimension must index examples")
    if spec.type in _INTEGER_TYPES:
        if tensor.is_floating_point() or tensor.is_complex():
            raise SpecError(f"{where} needs integer values, found {tensor.dtype}")
        tensor = tensor.to(torch.int64)
    elif spec.type == "Mask":
        if tensor.is_floating_point() or tensor.is_complex():
            raise SpecError(f"{where} needs bool or 0/1 integer values, found {tensor.dtype}")
        tensor = tensor.to(torch.bool)
    elif cast_float and tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    declared = parse_shape(spec.shape)
    if declared is not None:
        actual = tuple(tensor.shape)
        ellipsis = any(d.ellipsis for d in declared)
        fixed = [d for d in declared if not d.ellipsis]
        rank_ok = len(actual) >= len(fixed) if ellipsis else len(actual) == len(fixed)
        if not rank_ok:
            raise SpecError(f"{where} has shape {list(actual)}, which does not match the "
                            f"declared shape '{spec.shape}'")
        head = 0
        for dim in declared:
            if dim.ellipsis:
                break
            head += 1
        pairs = list(zip(declared[:head], actual[:head], strict=True))
        if ellipsis:
            tail = declared[head + 1:]
            pairs += list(zip(tail, actual[len(actual) - len(tail):], strict=True))
        for dim, size in pairs:
            if dim.size is not None and dim.size != size:
                raise SpecError(f"{where} has shape {list(actual)}, which does not match the "
                                f"declared shape '{spec.shape}'")
    return tensor


def _load_split(p: TensorFileParams, raw: str, param: str, context: BuildContext
                ) -> dict[str, torch.Tensor]:
    path = context.resolve_path(raw)
    if not path.is_file():
        raise SpecError(
            f"node '{context.node}': tensor file not found: {path} (params.{param} = '{raw}')"
        )
    found = read_tensor_file(path, [spec.key for spec in p.keys.values()], meta=context.meta)
    split = {
        port: _convert(found[spec.key], port, spec, path, p.cast_float)
        for port, spec in p.keys.items()
    }
    lengths = {port: int(t.shape[0]) for port, t in split.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{port} ('{p.keys[port].key}'): {n}" for port, n in lengths.items())
        raise SpecError(
            f"{path}: the tensors have different lengths ({listed}); every tensor's first "
            "dimension must index the same examples"
        )
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
