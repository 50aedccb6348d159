"""The collector is paused by the command line during a training run's start-up and resumed,
with everything made so far frozen, when the loop starts (dgraph.runtime.collector)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dgraph.runtime import collector


@pytest.fixture
def gc_state() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    collector._paused = False
    if enabled:
        gc.enable()


def test_resume_without_a_pause_changes_nothing(gc_state: None) -> None:
    frozen = gc.get_freeze_count()
    collector.resume()
    assert gc.isenabled() and not collector.paused()
    assert gc.get_freeze_count() == frozen


def test_pause_then_resume_freezes_what_exists_and_collects_again(gc_state: None) -> None:
    collector.pause()
    assert not gc.isenabled() and collector.paused()
    kept = [[] for _ in range(1000)]  # made while paused: frozen by resume
    collector.resume()
    assert gc.isenabled() and not collector.paused()
    assert gc.get_freeze_count() >= len(kept)
    collector.resume()  # a second resume does nothing more
    assert gc.isenabled()


def test_a_paused_collector_stays_off_if_it_was_off(gc_state: None) -> None:
    gc.disable()
    collector.pause()  # nothing to pause: resume must not switch it on
    assert not collector.paused()
    collector.resume()
    assert not gc.isenabled()


# Counts the collections of each generation made after torch was imported and before the
# training loop resumed the collector (earlier ones, while dgraph itself is imported and its
# sources compiled, are not the start-up's), and reports, at exit, the collector's state.
_WATCH = """
import atexit, gc, json, sys
from dgraph.runtime import collector
counts, resumed = [0, 0, 0], []
def seen(phase, info):
    if phase == "start" and "torch" in sys.modules and not resumed:
        counts[info["generation"]] += 1
gc.callbacks.append(seen)
original = collector.resume
def resume():
    resumed.append(True)
    original()
collector.resume = resume
atexit.register(lambda: print(json.dumps({"counts": counts, "enabled": gc.isenabled(),
                                          "frozen": gc.get_freeze_count(),
                                          "resumed": bool(resumed)})))
from dgraph.cli import main
"""


def test_a_command_line_run_starts_up_without_collections(tmp_path: Path) -> None:
    code = _WATCH + ("sys.argv = ['dgraph', 'train', 'teacher_digits', '--set', "
                     "'train.steps=1', '--quiet']\nsys.exit(main(as_program=True))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert (tmp_path / "runs" / "teacher_digits" / "summary.json").is_file()
    # From torch's import to the loop not one collection (5 full ones otherwise); the loop
    # collects again, with the start-up's objects frozen.
    assert state["counts"] == [0, 0, 0] and state["resumed"] is True
    assert state["enabled"] is True and state["frozen"] > 100_000
