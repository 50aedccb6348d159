"""Data-parallel scaling on CPU with gloo: one process against two, same global batch.

Trains a spec (default `teacher_digits`) with `dgraph train --nproc 1`, `--nproc 2` (DDP: the
gradients averaged across ranks) and `--nproc 2` with `train.distributed.strategy=fsdp`, each
process with `--threads` intra-op threads, and reports for each: the wall time of the steps
(from the run's own `throughput/samples_per_s`, logged every `--log-every` steps, first
interval dropped as warm-up), samples per second, the ratio to one process, and the largest
difference of the logged training loss from the one-process run (the loss curves are the
same up to the order in which the global batch's gradients are summed). Runs are repeated
`--repeats` times, interleaved, and the median is reported.

    python benchmarks/ddp_scaling.py                       # teacher_digits, 3 repeats
    python benchmarks/ddp_scaling.py --spec llm_teacher --steps 60 --set
        nodes.teacher.params.config.resid_pdrop=0 ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _run(spec: str, out: Path, nproc: int, extra: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dgraph.cli", "train", spec, "--out", str(out), "--quiet",
         "--nproc", str(nproc), *extra], env=env, capture_output=True, text=True,
        timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{spec} --nproc {nproc} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "throughput/samples_per_s" in r]
    losses = {r["step"]: r[k] for r in logged for k in r if k.startswith("loss/") and
              k != "loss/total"}
    speeds = [r["throughput/samples_per_s"] for r in logged[1:]]  # the first warms up
    return {"samples_per_s": statistics.median(speeds), "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="teacher_digits")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = [f"train.steps={args.steps}", f"train.log_every={args.log_every}",
             f"train.eval.every={args.steps}", f"train.checkpoint_every={args.steps}",
             *args.set]
    flags = [flag for item in extra for flag in ("--set", item)]
    setups = {"1 process": (1, []),
              "2 processes, ddp": (2, []),
              "2 processes, fsdp": (2, ["--set", "train.distributed.strategy=fsdp"])}
    results: dict[str, list[dict]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for name, (nproc, more) in setups.items():
                out = Path(folder) / f"{name.replace(' ', '_').replace(',', '')}_{repeat}"
                results[name].append(_run(args.spec, out, nproc, [*flags, *more],
                                          args.threads))
    base = statistics.median(r["samples_per_s"] for r in results["1 process"])
    reference = results["1 process"][0]["losses"]
    print(f"{args.spec}: {args.steps} steps, {args.threads} thread(s) per process, median of "
          f"{args.repeats} interleaved runs")
    print("| setup | samples/s (min-max) | vs 1 process | max loss difference |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        speeds = [r["samples_per_s"] for r in runs]
        gap = max(abs(runs[0]["losses"][s] - v) for s, v in reference.items())
        print(f"| {name} | {statistics.median(speeds):,.0f} ({min(speeds):,.0f}-"
              f"{max(speeds):,.0f}) | {statistics.median(speeds) / base:.2f}x | {gap:.2e} |")


if __name__ == "__main__":
    main()
