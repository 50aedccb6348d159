"""The progress bar of a run in a terminal: moved at most every 0.1 s between logged steps."""

from __future__ import annotations

import io
import sys
import time
import types

from dgraph.runtime import logging as run_logging
from dgraph.runtime.logging import RunLogger


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_moves_at_most_ten_times_a_second_and_at_every_logged_step(tmp_path,
                                                                           monkeypatch):
    now = [1000.0]
    clock = types.SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter)
    monkeypatch.setattr(run_logging, "time", clock)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    logger = RunLogger(tmp_path, enabled=True, total_steps=10_000, progress=True)
    try:
        assert logger._progress is not None
        task = logger._progress.tasks[0]
        logger.advance(1)
        assert task.completed == 1
        now[0] += 0.099
        for step in range(2, 1000):
            logger.advance(step)
        assert task.completed == 1
        now[0] += 0.002  # 0.101 s after the first move
        logger.advance(1000)
        assert task.completed == 1000
        logger.advance(1001)
        assert task.completed == 1000
        logger.log(1002, {"loss/total/main": 0.5})  # a logged step always shows
        assert task.completed == 1002
        assert task.fields["losses"] == "total/main=0.5"
    finally:
        logger.close()
