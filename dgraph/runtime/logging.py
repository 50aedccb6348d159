"""Run logging: metrics.jsonl, TensorBoard events and a progress line, from rank 0 only."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLogger"]


class RunLogger:
    """Writes one JSON object per logged step and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, progress: bool,
                 start_step: int = 0) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.start_time = time.perf_counter()
        self.start_step = start_step
        self._metrics = None
        self._tb = None
        self._progress = None
        self._task = None
        self.show = False
        if not enabled:
            return
        self._metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(run_dir / "tb"))
        if progress and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps,
                                                 completed=start_step, losses="")
        self.show = progress

    def image(self, tag: str, array) -> None:
        """An ``H x W x 3`` uint8 image (the graph picture)."""
        if self._tb is not None:
            self._tb.add_image(tag, array, 0, dataformats="HWC")

    def text(self, tag: str, text: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, 0)

    def log(self, step: int, values: dict[str, float], *, stage: str | None = None) -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, "time": round(time.perf_counter() -
                                                             self.start_time, 4)}
        if stage is not None:
            record["stage"] = stage
        record.update(values)
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        for key, value in values.items():
            self._tb.add_scalar(key, value, step)
        losses = "  ".join(f"{k.removeprefix('loss/')}={v:.4g}" for k, v in values.items()
                           if k.startswith("loss/"))
        if self._progress is not None:
            self._progress.update(self._task, completed=step, losses=losses)

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def line(self, message: str) -> None:
        """A message for the user (printed above the bar, or plainly when not a terminal)."""
        if not self.enabled or not self.show:
            return
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._metrics is not None:
            self._metrics.close()
