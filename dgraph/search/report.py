"""What a sweep leaves: ``results.jsonl``, a rich table, ``results.png`` and ``best.yaml``.

The plot is drawn with Pillow (no plotting library): the objective of each trial as a dot
(failed trials as red crosses on the bottom axis) and the best so far as a line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dgraph.search.space import Param, SweepError, value_text

__all__ = ["append_result", "finish", "one_line", "plot", "read_results"]

RESULTS = "results.jsonl"
PLOT = "results.png"
BEST = "best.yaml"


def read_results(out: Path) -> dict[int, dict[str, Any]]:
    """The records of ``out/results.jsonl`` by trial (a later line for a trial wins)."""
    records: dict[int, dict[str, Any]] = {}
    path = out / RESULTS
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line a crash cut short
                continue
            if isinstance(record, dict) and isinstance(record.get("trial"), int):
                records[record["trial"]] = record
    return records


def append_result(out: Path, record: dict[str, Any]) -> None:
    with open(out / RESULTS, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={value_text(v)}" for k, v in params.items())


def one_line(record: dict[str, Any]) -> str:
    """``trial 3: key=value ...: 0.9123 (12.3 s)`` or ``...: failed: <error line>``."""
    head = f"trial {record['trial']}: {_params_text(record['params'])}: "
    if record["status"] == "ok":
        return head + f"{record['objective']:.6g} ({record['seconds']:.1f} s)"
    return head + f"failed: {record['error']}"


def _best(records: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return None
    sign = 1 if direction == "max" else -1
    # The first trial among equals wins: stable under resumes and reruns.
    return max(ok, key=lambda r: (sign * r["objective"], -r["trial"]))


def _clip(text: str | None, size: int) -> str:
    text = text or ""
    return text if len(text) <= size else text[:size - 3] + "..."


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value_text(value)


def table(records: list[dict[str, Any]], params: list[Param], title: str,
          best: dict[str, Any] | None) -> Any:
    from rich.table import Table

    failed = any(r["status"] != "ok" for r in records)
    result = Table(title=title, caption=f"full errors: {RESULTS} and logs/" if failed else None)
    result.add_column("trial", justify="right")
    for p in params:
        result.add_column(p.key, overflow="fold")
    result.add_column("objective", justify="right")
    result.add_column("status")
    result.add_column("time", justify="right")
    for r in records:
        status = r["status"] if r["status"] == "ok" else f"failed: {_clip(r['error'], 70)}"
        result.add_row(str(r["trial"]), *(_format(r["params"].get(p.key)) for p in params),
                       "-" if r["objective"] is None else f"{r['objective']:.6g}",
                       status, f"{r['seconds']:.1f} s",
                       style="bold green" if best is not None and r is best else None)
    return result


def plot(records: list[dict[str, Any]], direction: str, title: str, path: Path) -> None:
    """A PNG of each trial's objective (dots; failed: red crosses on the bottom axis) and the
    best so far (a line), over the trial numbers."""
    from PIL import Image, ImageDraw

    width, height = 640, 400
    left, right, top, bottom = 70, 20, 40, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), title, fill="black")
    values = [r["objective"] for r in records if r["status"] == "ok"]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5 * (abs(low) or 1.0), high + 0.5 * (abs(high) or 1.0)
    pad = 0.05 * (high - low)
    low, high = low - pad, high + pad
    n = max((r["trial"] for r in records), default=0) + 1
    x0, x1, y0, y1 = left, width - right, height - bottom, top

    def x_of(trial: int) -> float:
        return x0 + (x1 - x0) * ((trial + 0.5) / n)

    def y_of(value: float) -> float:
        return y0 + (y1 - y0) * ((value - low) / (high - low))

    draw.rectangle((x0, y1, x1, y0), outline="black")
    for i in range(5):  # value ticks
        value = low + (high - low) * i / 4
        y = y_of(value)
        draw.line((x0 - 4, y, x0, y), fill="black")
        draw.text((4, y - 6), f"{value:.4g}", fill="black")
    step = max(1, math.ceil(n / 10))
    for trial in range(0, n, step):  # trial ticks
        x = x_of(trial)
        draw.line((x, y0, x, y0 + 4), fill="black")
        draw.text((x - 4, y0 + 8), str(trial), fill="black")
    draw.text(((x0 + x1) // 2 - 16, height - 20), "trial", fill="black")
    best_line: list[tuple[float, float]] = []
    best: float | None = None
    for r in sorted(records, key=lambda r: r["trial"]):
        x = x_of(r["trial"])
        if r["status"] != "ok":
            draw.line((x - 4, y0 - 8, x + 4, y0), fill="red", width=2)
            draw.line((x - 4, y0, x + 4, y0 - 8), fill="red", width=2)
            continue
        value = r["objective"]
        if best is None or (value > best if direction == "max" else value < best):
            best = value
        if best_line:
            best_line.append((x, best_line[-1][1]))
        best_line.append((x, y_of(best)))
        y = y_of(value)
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(40, 90, 200))
    if len(best_line) > 1:
        draw.line(best_line, fill=(230, 120, 0), width=2)
    draw.text((x1 - 220, y1 + 4), "dots: objective  line: best so far", fill=(90, 90, 90))
    from dgraph.runtime.rundir import atomic_write

    atomic_write(path, lambda f: image.save(f, format="PNG"))


def best_spec_text(spec: str, overrides: list[str], params: list[Param],
                   best: dict[str, Any], objective: str) -> str:
    """The spec with the sweep's overrides and the best trial's values applied, resolved
    (no ``extends``), as YAML with a header saying where it came from."""
    from dgraph.spec import load_spec
    from dgraph.spec.source import read_spec_text

    applied = [*overrides, *(p.override(best["params"][p.key]) for p in params)]
    loaded = load_spec(spec, applied)
    header = [f"# The best trial ({best['trial']}, {objective} = {best['objective']:.6g}) of "
              f"`dgraph sweep {spec}`: spec {spec} with",
              *(f"#   --set {item}" for item in applied)]
    return "\n".join(header) + "\n" + read_spec_text(loaded.raw)


def finish(out: Path, config: Any, params: list[Param], by_trial: dict[int, dict[str, Any]],
           *, raw_spec_name: str, say: Any, show: bool = True) -> dict[str, Any]:
    """Rewrite results.jsonl in trial order, show the table, draw the plot and write
    best.yaml (validated); the report as a dict."""
    from rich.console import Console

    from dgraph.runtime.rundir import atomic_write_text

    records = [by_trial[k] for k in sorted(by_trial)]
    atomic_write_text(out / RESULTS, "".join(json.dumps(r, sort_keys=True) + "\n"
                                             for r in records), what="the sweep's results")
    best = _best(records, config.direction)
    title = (f"dgraph sweep {config.spec}: {config.objective} ({config.direction}), "
             f"{len(records)} trials")
    if show:
        console = Console()
        if not console.is_terminal:  # a log or a pipe: wide enough that rows stay one line
            console = Console(width=160)
        console.print(table(records, params, title, best))
    plot(records, config.direction, title, out / PLOT)
    report: dict[str, Any] = {"out": str(out), "trials": records, "best": best,
                              "results": str(out / RESULTS), "plot": str(out / PLOT)}
    if best is None:
        first = next((r["error"] for r in records if r.get("error")), "no trial ran")
        raise SweepError(f"all {len(records)} trials of the sweep failed; the first: {first}",
                         code="all-trials-failed", suggestion=f"see {out / 'logs'}")
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    text = best_spec_text(config.spec, config.overrides, params, best, config.objective)
    atomic_write_text(out / BEST, text, what="the best spec")
    validate(load_spec(out / BEST))  # it must load and validate as it is
    report["best_spec"] = str(out / BEST)
    say(f"best: trial {best['trial']} ({config.objective} = {best['objective']:.6g}); "
        f"wrote {out / BEST}, {out / PLOT}, {out / RESULTS}")
    return report
