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


def build_trainer(spec_path: Path, run_dir: Path, overrides: tuple[str, ...] = ()):
    """A dgraph Trainer for a spec file (with ``--set`` style ``overrides``), silent."""
    from dgraph.graph import validate
    from dgraph.runtime.train import Trainer
    from dgraph.spec import load_spec

    graph, _warnings = validate(load_spec(spec_path, overrides))
    return Trainer(graph, run_dir, progress=False, log=lambda _m: None)


def timed_block(fn: Callable[[], object], steps: int, sync: Callable[[], object],
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per step of ``steps`` calls of ``fn`` (device work included)."""
    sync()
    start = clock()
    for _ in range(steps):
        fn()
    sync()
    return (clock() - start) / steps


def interleave(fns: dict[str, Callable[[], object]], *, rounds: int, block: int,
               sync: Callable[[], object],
               clock: Callable[[], float] = time.perf_counter,
               switch: Callable[[str], object] | None = None) -> dict[str, list[float]]:
    """Seconds per step of each function, one block per function per round, order rotated.

    The garbage collector is off while timing so that a collection does not land in one arm.
    ``clock``: wall time by default; ``time.thread_time`` counts only this thread's CPU time
    (with one torch thread on CPU, all of a step's work), so time other processes take the
    core from it is not counted. ``switch(name)``, when given, is called before each block,
    outside the timing (e.g. to give each function its own random-number state).
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
                if switch is not None:
                    switch(name)
                times[name].append(timed_block(fns[name], block, sync, clock))
    finally:
        if enabled:
            gc.enable()
    return times
