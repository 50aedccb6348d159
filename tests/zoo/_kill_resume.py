"""Kill a zoo run with SIGKILL in a subprocess after a checkpoint, resume it in this process,
and compare its final weights with an uninterrupted run's (both here, one thread)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers import ENV
from safetensors.torch import load_file

from dgraph.api import train


def kill_and_resume(spec: str, reference: Path, killed: Path, overrides: list[str], *,
                    kill_after: int = 4) -> list[str]:
    """Train ``spec`` to the end into ``reference``; start it into ``killed`` in a subprocess,
    SIGKILL it once a checkpoint of step ``kill_after`` or later exists, resume it here.
    Returns the lines the resumed run said."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgraph.cli", "train", spec, "--out", str(killed), "--quiet",
         *[a for value in overrides for a in ("--set", value)]],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(spec, out=reference, overrides=overrides, progress=False, log=lambda _m: None)
        deadline = time.monotonic() + 180
        folder = killed / "checkpoints"
        while not (folder.exists() and any(int(p.stem.split("_")[1]) >= kill_after
                                           for p in folder.glob("step_*.pt"))):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (killed / "final").exists()
        said: list[str] = []
        train(spec, out=killed, overrides=overrides, resume=True, progress=False,
              log=said.append)
    finally:
        torch.set_num_threads(threads)
    assert any("resuming from" in line for line in said), said
    return said


def assert_same_final(reference: Path, killed: Path, names: tuple[str, ...]
                      ) -> dict[str, dict[str, torch.Tensor]]:
    """The final weights of ``names`` are equal bit for bit; returns the reference's."""
    out = {}
    for name in names:
        expected = load_file(str(reference / "final" / f"{name}.safetensors"))
        found = load_file(str(killed / "final" / f"{name}.safetensors"))
        assert expected.keys() == found.keys() and expected
        for key, value in expected.items():
            assert torch.equal(found[key], value), f"{name}.{key} differs after resume"
        out[name] = expected
    return out
