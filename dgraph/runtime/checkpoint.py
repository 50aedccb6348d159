"""Checkpoints written atomically and read back safely.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values, so it
loads with ``weights_only=True``. It is written to a temporary file, flushed, fsynced and
renamed into place: a run killed at any moment leaves either the old or the new checkpoint,
and a full disk raises a CheckpointError naming the file. Final weights are written as
safetensors, with the same care.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgraph.errors import CheckpointError
from dgraph.runtime.rundir import atomic_write, os_reason

__all__ = [
    "SHARDS_SUFFIX",
    "atomic_write_bytes",
    "capture_rng",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "restore_rng",
    "save_checkpoint",
    "save_weights",
]

_NAME = re.compile(r"^step_(\d{8})\.pt$")
# A sharded checkpoint's tensors: a folder beside its step_XXXXXXXX.pt, written by every rank.
SHARDS_SUFFIX = ".shards"
_SHARDS = re.compile(r"^step_(\d{8})\.shards$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    version, keys, gauss = random.getstate()
    state["python"] = {"version": version, "keys": list(keys), "gauss": gauss}
    np_state: Any = np.random.get_state()
    state["numpy"] = {
        "keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "pos": int(np_state[2]),
        "has_gauss": int(np_state[3]),
        "cached": float(np_state[4]),
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["keys"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``step_XXXXXXXX.pt`` atomically and prune all but the newest ``keep``.

    A write that fails (a full disk, a read-only folder) raises a CheckpointError naming the
    file; the previous checkpoints are left as they were and no temporary file remains.
    """
    path = directory / f"step_{step:08d}.pt"
    try:
        atomic_write(path, lambda handle: torch.save(state, handle))
    except OSError as exc:
        previous = latest_checkpoint(directory)
        kept = (f"the previous checkpoint {previous} is intact" if previous is not None
                else "no earlier checkpoint exists")
        raise CheckpointError(
            f"cannot write checkpoint {path} ({os_reason(exc)}); {kept}. Free space (or fix "
            "the folder's permissions), then continue with --resume"
        ) from None
    existing = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    for old in existing[:-keep]:
        old.unlink(missing_ok=True)
    remaining = {p.stem for p in existing[-keep:]}
    for folder in directory.iterdir():  # shards of pruned checkpoints, or of a killed save
        if _SHARDS.match(folder.name) and folder.is_dir() and \
                folder.name[:-len(SHARDS_SUFFIX)] not in remaining:
            shutil.rmtree(folder, ignore_errors=True)
    return path


def latest_checkpoint(directory: Path) -> Path | None:
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}). It may be "
            "truncated or corrupted: delete it to resume from the previous checkpoint, or "
            "start again without --resume."
        ) from None
    if not isinstance(state, dict) or "step" not in state or "modules" not in state:
        raise CheckpointError(
            f"checkpoint {path} is not a dgraph checkpoint (no step or module weights in it)"
        )
    return state


def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = save(contiguous, metadata=metadata)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write weights file {path} ({os_reason(exc)}); no part of it was written. "
            "Free space (or fix the folder's permissions), then run again (with --resume to "
            "finish a run)"
        ) from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors (preferred) or a .pt/.bin file read with weights_only."""
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"weights file {path} cannot be read ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"weights file {path} does not hold a state dict")
    return state
