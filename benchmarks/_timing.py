"""Helpers shared by the timing benchmarks: device choice, dgraph trainers, interleaved timing.

Imported by the scripts beside it (run as ``python benchmarks/<name>.py``, so this folder is
on ``sys.path``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["build_trainer", "ints", "interleave", "resolve_device", "timed_block", "yaml_list"]


def ints(text: str) -> list[int]:
    """``"256,256"`` -> ``[256, 256]`` (an argparse type)."""
    return [int(v) for v in text.split(",") if v.strip()]


def yaml_list(values: list[int]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def resolve_device(choice: str) -> torch.device:
    """dgraph's own device rule, with a command-line exit instead of an exception."""
    from dgraph.errors import DgraphError
    from dgraph.runtime.setup import resolve_device as dgraph_device

    try:
        return dgraph_device(choice)
    except DgraphError:
        raise SystemExit(f"--device {choice}: no CUDA device is available") from None


def build_trainer(spec_path: Path, run_dir: Path):
    """A dgraph Trainer for a spec file, silent."""
    from dgraph.graph import validate
    from dgraph.runtime.train import Trainer
    from dgraph.spec import load_spec

    graph, _warnings = validate(load_spec(spec_path))
    return Trainer(graph, run_dir, progress=False, log=lambda _m: None)


def timed_block(fn: Callable[[], object], steps: int, sync: Callable[[], object]) -> float:
    """Seconds per step of ``steps`` calls of ``fn`` (device work included)."""
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def interleave(fns: dict[str, Callable[[], object]], *, rounds: int, block: int,
               sync: Callable[[], object]) -> dict[str, list[float]]:
    """Seconds per step of each function, one block per function per round, order rotated.

    The garbage collector is off while timing so that a collection does not land in one arm.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(timed_block(fns[name], block, sync))
    finally:
        if enabled:
            gc.enable()
    return times
