"""`dgraph sweep` on the kd spec (digits, CPU): the sweep's best against the default kd spec,
and how well the training-free (DisWOT-style) score ranks student widths.

1. The teacher (`teacher_digits`) is trained once; every run below starts from it
   (``--set nodes.teacher.init.run=<its folder>``).
2. A grid sweep of kd: temperature x the KD weight of the objective, selected on seed 0's
   held-out accuracy (``student/accuracy``), ``--jobs 2``.
3. The best spec (``best.yaml``) and the default kd spec, each trained on seeds 1..3 (seeds
   the sweep did not select on): mean ± std of held-out accuracy.
4. Student widths (``nodes.student.params.hidden``): one sweep with ``--objective
   training_free`` (no training), one trained (``student/accuracy``); Spearman's rank
   correlation of the two over the widths.

Both settings use ``--setting low`` by default: 50 labelled training images, the rest seen
through the teacher (as in ``dgraph demo``), where distillation matters most; ``--setting all``
uses every label.

    python benchmarks/sweep_kd.py             # the numbers in BENCHMARKS.md (~10 min, 2 cores)
    python benchmarks/sweep_kd.py --quick     # 20 steps everywhere (smoke run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from dgraph.api import train
from dgraph.search import sweep

WIDTHS = [[4], [8], [16], [24], [48], [96]]


def _quiet(_: str) -> None:
    pass


def _ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va and vb else float("nan")


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_sweep_kd")
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 seed (smoke run)")
    parser.add_argument("--setting", choices=["low", "all"], default="low")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    started = time.monotonic()
    steps = ["train.steps=20", "train.eval.every=20"] if args.quick else []
    seeds = [1] if args.quick else [1, 2, 3]
    teacher = out / "teacher_digits"
    if not (teacher / "final").is_dir():
        train("teacher_digits", out=teacher, overrides=steps, progress=False, log=_quiet,
              overwrite=teacher.exists())
    base = [f"nodes.teacher.init.run={teacher}", *steps]
    if args.setting == "low":
        base.append("nodes.data.params.labelled=50")

    grid = ["nodes.kd.params.temperature=1,2,4,8", "updates.main.objective.kd=0.5,0.9"]
    report = sweep("kd", objective="student/accuracy", grid=grid, jobs=args.jobs,
                   out=out / "grid", overrides=base, log=_quiet, show=False,
                   resume=(out / "grid" / "sweep.json").exists())
    best = report["best"]
    accuracy: dict[str, list[float]] = {"default kd": [], "sweep best": []}
    for seed in seeds:
        for label, spec, extra in (("default kd", "kd", base),
                                   ("sweep best", str(out / "grid" / "best.yaml"), [])):
            run = out / f"{label.replace(' ', '_')}_seed{seed}"
            summary = train(spec, out=run, overrides=[*extra, f"train.seed={seed}"],
                            progress=False, log=_quiet, overwrite=run.exists())
            accuracy[label].append(summary["student/accuracy"])

    width_grid = ["nodes.student.params.hidden=" + ",".join(json.dumps(w) for w in WIDTHS)]
    scored = sweep("kd", objective="training_free", grid=width_grid, jobs=args.jobs,
                   out=out / "widths_training_free", overrides=base, log=_quiet, show=False,
                   resume=(out / "widths_training_free" / "sweep.json").exists())
    trained = sweep("kd", objective="student/accuracy", grid=width_grid, jobs=args.jobs,
                    out=out / "widths_trained", overrides=base, log=_quiet, show=False,
                    resume=(out / "widths_trained" / "sweep.json").exists())
    key = "nodes.student.params.hidden"
    score = {json.dumps(r["params"][key]): r["objective"] for r in scored["trials"]}
    acc = {json.dumps(r["params"][key]): r["objective"] for r in trained["trials"]}
    widths = [json.dumps(w) for w in WIDTHS]
    rho = spearman([score[w] for w in widths], [acc[w] for w in widths])

    print(f"## kd sweep on digits ({args.setting} labels"
          f"{', quick' if args.quick else ''})\n")
    print(f"grid: {' x '.join(grid)}; best trial {best['trial']}: "
          + ", ".join(f"{k}={v}" for k, v in best["params"].items())
          + f" (seed-0 accuracy {best['objective']:.3f})\n")
    print("| spec | held-out accuracy, seeds " + ",".join(map(str, seeds)) + " |")
    print("| --- | --- |")
    for label, values in accuracy.items():
        print(f"| {label} | {_fmt(values)} |")
    print("\n| student hidden | training-free score | trained accuracy (seed 0) |")
    print("| --- | --- | --- |")
    for w in widths:
        print(f"| {w} | {score[w]:.4f} | {acc[w]:.3f} |")
    print(f"\nSpearman rank correlation (training-free score vs trained accuracy, "
          f"{len(widths)} widths): {rho:.2f}")
    print(f"\nwall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
