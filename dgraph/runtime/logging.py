"""Run logging: metrics.jsonl, TensorBoard events and a progress line, from rank 0 only.

Every file is strict JSON: a non-finite value (NaN, inf) is written as ``null`` (see
:func:`finite_json`). A run that starts at step N (a resume) first drops what a killed run
logged after its checkpoint: metrics.jsonl keeps the rows with ``step <= N`` (rewritten
atomically) and TensorBoard purges events from step N+1 on, so no step is logged twice.

The pictures of the graph (graph.svg, graph.mmd, TensorBoard's image) are drawn by a layer
above the runtime (``dgraph.viz``, which the runtime does not import) and handed over as
:class:`GraphPictures`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgraph.runtime.rundir import RunDirError, atomic_write_text, os_reason

__all__ = ["GraphPictures", "RunLogger", "finite_json", "truncate_metrics"]


@dataclass(frozen=True)
class GraphPictures:
    """The graph, drawn for a run's directory and TensorBoard.

    Attributes:
        svg: written as ``graph.svg``.
        mermaid: Mermaid source, written as ``graph.mmd`` and shown in TensorBoard's text tab.
        image: an ``H x W x 3`` uint8 array of the same drawing, TensorBoard's image.
    """

    svg: str
    mermaid: str
    image: Any


def finite_json(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``values`` with non-finite floats replaced by None, and the keys that were replaced."""
    clean: dict[str, Any] = {}
    bad: list[str] = []
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            clean[key] = None
            bad.append(key)
        else:
            clean[key] = value
    return clean, bad


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of ``path`` logged at ``step`` or before (and drop a torn last line)."""
    if not path.exists():
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except OSError as exc:
        raise RunDirError(f"cannot read {path} ({os_reason(exc)})") from None
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a row a killed process was writing
        if isinstance(record, dict) and isinstance(record.get("step"), int) and \
                record["step"] <= step and line.endswith("\n"):
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept), what="metrics file")


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
        self._bar_due = 0.0  # time.monotonic() from which advance() moves the bar again
        self.show = False
        if not enabled:
            return
        self._path = run_dir / "metrics.jsonl"
        truncate_metrics(self._path, start_step)
        tb = run_dir / "tb"
        # Events a killed run wrote after its checkpoint are hidden from TensorBoard.
        purge = start_step + 1 if tb.is_dir() and any(tb.iterdir()) else None
        try:
            self._metrics = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
            from dgraph.runtime.events import EventWriter

            self._tb = EventWriter(tb, purge_step=purge)
        except OSError as exc:
            self.close()
            raise RunDirError(f"cannot write {exc.filename or self._path} ({os_reason(exc)}); "
                              "choose a writable --out") from None
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

    def image(self, tag: str, array, step: int = 0) -> None:
        """An ``H x W x 3`` uint8 image (the graph picture, samples at an evaluation)."""
        if self._tb is not None:
            self._tb.add_image(tag, array, step)

    def text(self, tag: str, text: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, 0)

    def pictures(self, run_dir: Path, pictures: GraphPictures) -> None:
        """Write ``graph.svg`` and ``graph.mmd`` into the run directory and show the graph
        in TensorBoard (rank 0 only, like everything the logger writes)."""
        if not self.enabled:
            return
        atomic_write_text(run_dir / "graph.svg", pictures.svg, what="graph drawing")
        atomic_write_text(run_dir / "graph.mmd", pictures.mermaid, what="graph drawing")
        self.image("graph", pictures.image)
        self.text("graph", "```mermaid\n" + pictures.mermaid + "\n```\n\nSee graph.svg in "
                  "the run directory for the drawing.")

    def log(self, step: int, values: dict[str, float], *, stage: str | None = None) -> None:
        metrics, tb = self._metrics, self._tb
        if not self.enabled or metrics is None or tb is None:
            return
        record: dict[str, Any] = {"step": step, "time": round(time.perf_counter() -
                                                             self.start_time, 4)}
        if stage is not None:
            record["stage"] = stage
        record.update(finite_json(values)[0])
        try:
            metrics.write(json.dumps(record, allow_nan=False) + "\n")
            metrics.flush()
        except OSError as exc:
            raise RunDirError(f"cannot write {self._path} ({os_reason(exc)}); free space (or "
                              "fix the folder's permissions), then continue with --resume") \
                from None
        for key, value in values.items():
            tb.add_scalar(key, value, step)
        losses = "  ".join(f"{k.removeprefix('loss/')}={v:.4g}" for k, v in values.items()
                           if k.startswith("loss/"))
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step, losses=losses)

    def advance(self, step: int) -> None:
        """Move the bar to ``step``: at most every 0.1 s (the bar redraws ten times a second;
        an update costs more than a small model's step gains from a finer count)."""
        if self._progress is not None and self._task is not None:
            now = time.monotonic()
            if now >= self._bar_due:
                self._bar_due = now + 0.1
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
            self._progress = None
        if self._tb is not None:
            tb, self._tb = self._tb, None
            tb.flush()
            tb.close()
        if self._metrics is not None:
            metrics, self._metrics = self._metrics, None
            try:
                metrics.close()
            except OSError:
                pass  # a failed flush was reported by the write that failed
