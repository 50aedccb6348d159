"""Test accuracy of the KD method zoo on digits (CPU): teacher, scratch student, each method.

For each seed, the teachers (`teacher_digits`, an MLP, and `teacher_digits_cnn`) are trained
once on all labels; then every method's student is trained in two settings:

* ``all``: every training label;
* ``low``: 50 labelled training images (``--set nodes.data.params.labelled=50``); the rest of
  the training split is an unlabelled transfer set seen through the teacher.

Rows: the teachers, the MLP student from scratch (`student_digits`), the CNN student from
scratch (`at` with its attention terms weighted 0: the baseline of `at`), and each method's
student. Cells are test accuracy (`student/accuracy`, held-out split), mean ± std over seeds.

    python benchmarks/kd_zoo.py                      # 3 seeds, the zoo's step counts
    python benchmarks/kd_zoo.py --quick              # 1 seed, 30 steps (smoke test)
    python benchmarks/kd_zoo.py --methods kd,dkd --seeds 0,1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dgraph.api import train

METHODS = ["kd", "fitnet", "at", "rkd", "dkd", "crd", "born_again", "multi_teacher"]
CNN_SCRATCH = ["updates.main.objective.at1=0", "updates.main.objective.at2=0",
               "updates.main.objective.at3=0"]
LOW = ["nodes.data.params.labelled=50"]


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--settings", default="all,low", help="all (every label), low (50)")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="keep the runs here (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 30 steps")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m for m in args.methods.split(",") if m.strip()]
    settings = [s for s in args.settings.split(",") if s in ("all", "low")]
    steps = args.steps
    if args.quick:
        seeds, steps = seeds[:1], steps or 30
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")

    tmp = None if args.out else tempfile.TemporaryDirectory()
    root = Path(args.out or tmp.name)
    rows: dict[str, dict[str, list[float]]] = {}

    def run(label: str, spec: str, folder: Path, setting: str, overrides: list[str],
            key: str) -> None:
        common = [f"train.seed={seed}", f"train.device={args.device}"]
        if steps is not None:
            common.append(f"train.steps={steps}")
        start = time.perf_counter()
        summary = train(spec, out=folder, overrides=common + overrides, overwrite=True,
                        progress=False, log=lambda _m: None)
        accuracy = summary[key]
        rows.setdefault(label, {}).setdefault(setting, []).append(accuracy)
        print(f"  seed {seed} {setting:>3} {label:<22} {accuracy:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    for seed in seeds:
        base = root / f"seed{seed}"
        # The teachers always see every label; runs beside the students' are found by `init`.
        for spec in ("teacher_digits", "teacher_digits_cnn"):
            run(f"teacher ({spec})", spec, base / spec, "all", [], "teacher/accuracy")
        for setting in settings:
            extra = [] if setting == "all" else LOW
            run("scratch MLP student", "student_digits", base / f"{setting}_scratch", setting,
                extra, "student/accuracy")
            if "at" in methods:
                run("scratch CNN student", "at", base / f"{setting}_scratch_cnn", setting,
                    extra + CNN_SCRATCH, "student/accuracy")
            for method in methods:
                run(method, method, base / f"{setting}_{method}", setting, extra,
                    "student/accuracy")

    print()
    print(f"digits, test accuracy, mean ± std over seeds {seeds}"
          + (f", train.steps={steps}" if steps else ", the zoo specs' step counts"))
    print()
    print("(the teachers always learn from every label: one value per seed, in both columns)")
    print()
    print("| model | all labels | 50 labels + unlabelled transfer set |")
    print("| --- | --- | --- |")
    for label, cells in rows.items():
        low = cells.get("all", []) if label.startswith("teacher") else cells.get("low", [])
        print(f"| {label} | {_fmt(cells.get('all', []))} | {_fmt(low)} |")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
