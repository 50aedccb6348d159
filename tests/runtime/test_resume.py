"""A run killed with SIGKILL at a random moment and resumed ends with bit-identical weights."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ENV
from safetensors.torch import load_file

from dgraph.cli import main

# One thread: `import dgraph` pins MKL's code path (MKL_CBWR), but two-thread runs of
# adversarial_toy still differ now and then, fresh ones too (1 in 6 measured, 2 resumes in 8):
# the promise (README) is one thread's.


def _train(spec: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dgraph.cli", "train", spec, "--out", str(out), "--quiet",
         *extra],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoints(run: Path) -> list[Path]:
    folder = run / "checkpoints"
    return sorted(folder.glob("step_*.pt")) if folder.exists() else []


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.stem: load_file(str(p)) for p in sorted((run / "final").glob("*.safetensors"))}


# The fast tier resumes adversarial_toy (several updates); teacher_digits resumes under two
# processes in tests/runtime/test_distributed.py as well.
@pytest.mark.parametrize("spec,steps", [pytest.param("teacher_digits", 240, marks=pytest.mark.slow),
                                        ("adversarial_toy", 240)])
def test_sigkill_then_resume_is_bit_identical(tmp_path, spec, steps):
    overrides = ["--set", f"train.steps={steps}", "--set", "train.checkpoint_every=10",
                 "--set", "train.eval.every=60", "--set", "train.log_every=5"]
    reference = tmp_path / "reference"
    done = _train(spec, reference, *overrides)
    assert done.wait(timeout=240) == 0, done.stderr.read()

    interrupted = tmp_path / "interrupted"
    rng = random.Random(os.getpid())
    kill_after = rng.randint(1, 15)  # checkpoints written before the kill
    proc = _train(spec, interrupted, *overrides)
    deadline = time.monotonic() + 240
    while len(_checkpoints(interrupted)) < 2 or \
            int(_checkpoints(interrupted)[-1].stem.split("_")[1]) < kill_after * 10:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(rng.random() * 0.2)  # kill at a random point between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (interrupted / "final").exists()

    resumed = _train(spec, interrupted, *overrides, "--resume")
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read()
    assert "resuming from" in resumed.stderr.read()

    expected, found = _weights(reference), _weights(interrupted)
    assert expected.keys() == found.keys() and expected
    for node, tensors in expected.items():
        for key, value in tensors.items():
            assert torch.equal(found[node][key], value), f"{node}.{key} differs after resume"


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "teacher_digits", "--out", str(run), "--quiet",
                 "--set", "train.steps=20", "--set", "train.checkpoint_every=10"]) == 0
    latest = _checkpoints(run)[-1]
    latest.write_bytes(latest.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", "teacher_digits", "--out", str(run), "--quiet", "--resume",
                 "--set", "train.steps=20", "--set", "train.checkpoint_every=10"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {latest} cannot be read (")
    assert err.rstrip().endswith(
        "It may be truncated or corrupted: delete it to resume from the previous checkpoint, "
        "or start again without --resume.")


def test_existing_run_is_never_overwritten_silently(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "teacher_digits", "--out", str(run), "--quiet", "--set", "train.steps=5"]
    assert main(args) == 0
    before = (run / "final" / "teacher.safetensors").read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    assert capsys.readouterr().err == (
        f"error: run directory {run} already holds a run; pass --resume to continue it, "
        "--out DIR for a new run, or --overwrite to replace it\n")
    assert (run / "final" / "teacher.safetensors").read_bytes() == before
