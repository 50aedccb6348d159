"""Stopping a run on SIGINT or SIGTERM without losing the steps since the last checkpoint.

While the training loop runs, the first SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop) only
asks it to stop: the current step completes, a checkpoint is written, logs are flushed, the
run directory's lock is released, and :class:`TrainingInterrupted` carries the exit status
(130 or 143) and a message saying where the checkpoint is and how to resume. A second signal
acts at once, as it would without dgraph (the checkpoint writes are atomic either way).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from dgraph.errors import DgraphError

__all__ = ["StopSignals", "TrainingInterrupted"]

_CAUGHT = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(DgraphError):
    """A run stopped on SIGINT/SIGTERM after writing a checkpoint; ``exit_code`` is 128+signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """Between :meth:`install` and :meth:`restore` (or within ``with``): records the first
    SIGINT/SIGTERM in ``signum`` instead of acting on it.

    Only the main thread can install signal handlers; elsewhere this does nothing. The
    previous handlers come back on the first signal (so a second one acts at once) and on
    leaving the block.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        self.restore()

    def install(self) -> None:
        """Catch SIGINT and SIGTERM from now on (in the main thread; elsewhere a no-op)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for signum in _CAUGHT:
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back (safe to call more than once)."""
        for signum, handler in self._previous.items():
            # None: the handler was not installed from Python; the default is the best guess.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()
