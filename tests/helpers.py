"""What many test files need: quiet trainers, spec files, and `dgraph train` in a subprocess.

Imported as ``helpers`` (pytest puts this folder, the one of the root conftest.py, on the
import path).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from dgraph.graph import validate
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec

__all__ = ["ENV", "QUIET", "assert_finite", "cli_train", "finish", "make_trainer",
           "train_arithmetic_teacher", "write_spec"]

# Trainer keywords: no progress bar, no log lines.
QUIET = {"progress": False, "log": lambda _m: None}

# The environment of `dgraph train` subprocesses: offline, unbuffered, one thread per rank.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def assert_finite(summary: dict[str, float], keys: list[str]) -> None:
    """Every one of ``keys`` is in ``summary`` (a run's summary.json) with a finite value."""
    for key in keys:
        assert key in summary and math.isfinite(summary[key]), key


def train_arithmetic_teacher(folder: Path, steps: int) -> None:
    """A small run of the zoo's ``arithmetic_teacher`` in ``folder/arithmetic_teacher`` (the
    teacher the sequence-KD specs read): ``steps`` steps on 96 training problems."""
    from dgraph.api import train

    train("arithmetic_teacher", out=folder / "arithmetic_teacher",
          overrides=[f"train.steps={steps}", "nodes.data.params.n_train=96",
                     "nodes.data.params.n_eval=16", "nodes.exact_match.params.max_examples=8"],
          **QUIET)


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    """``text`` (dedented) written to ``folder/name``."""
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def make_trainer(spec: str | Path, run: Path, *overrides: str) -> Trainer:
    """A quiet Trainer of ``spec`` (a zoo name or a file) with ``--set`` overrides, writing
    into ``run`` (made if missing)."""
    graph, _ = validate(load_spec(spec, list(overrides)))
    run.mkdir(parents=True, exist_ok=True)
    return Trainer(graph, run, **QUIET)


def cli_train(spec: str | Path, out: Path, *extra: str, nproc: int = 2) -> subprocess.Popen:
    """``dgraph train SPEC --out OUT --quiet --nproc N ...`` started in its own process group
    (the launcher and every rank), its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "dgraph.cli", "train", str(spec), "--out", str(out), "--quiet",
         "--nproc", str(nproc), *extra],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a :func:`cli_train` process; its standard output (it must have succeeded)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out
