"""LELP against Hinton KD on a few-class task: digits reduced to odd/even.

Rows (held-out parity accuracy of the student, `student/accuracy`, mean ± std over seeds; in
every row of one seed the parity teacher is the same — trained in the first stage of
`_digits_parity` with that seed — and its accuracy is printed):

* `lelp` (S = 4 pseudo-subclasses per class, soft assignment, T = 4; 0.9 LELP + 0.1 CE);
* `lelp` with S = 2 and with the hard assignment (ablations);
* `kd_parity`: Hinton KD (0.9 KD at T = 4 + 0.1 CE), the same MLP body (64 -> 24) with 2 outputs:
  the closest baseline, as kd.yaml on the ten-class task;
* `scratch_parity`: the same student from the labels alone.

Settings: ``all`` (every training label) and ``low`` (100 labelled training examples; the
teacher learns from those too, the distillation terms see every image).

The paper's claim: on binary and few-class problems, LELP beats KD (where KD's soft targets
carry little information).

    python benchmarks/lelp.py                 # 3 seeds, both settings
    python benchmarks/lelp.py --quick         # 1 seed, 20 steps (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dgraph.graph import validate
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec

QUIET = {"progress": False, "log": lambda _m: None}

KD_PARITY = """\
dgraph: 1
name: kd_parity
description: Hinton KD of the parity teacher into the 64 -> 24 -> 2 MLP (lelp's baseline).
extends: _digits_parity
nodes:
  student:
    type: mlp
    params: {in_features: 64, hidden: [24], num_classes: 2}
  kd:
    kind: loss
    type: hinton_kd
    params: {temperature: 4.0}
    inputs: {student: student.logits, teacher: parity_teacher.logits}
updates:
  main:
    objective: {kd: 0.9, ce: 0.1}
"""

SCRATCH_PARITY = KD_PARITY.replace("name: kd_parity", "name: scratch_parity").replace(
    "objective: {kd: 0.9, ce: 0.1}", "objective: {ce: 1.0, kd: 0.0}")

LOW = ["nodes.data.params.labelled=100"]

ROWS = [  # label, spec, overrides
    ("lelp (S=4, soft)", "lelp", []),
    ("lelp (S=2, soft)", "lelp", ["nodes.student.params.subclasses=2",
                                  "nodes.lelp.params.subclasses=2"]),
    ("lelp (S=4, hard)", "lelp", ["nodes.lelp.params.assignment=hard"]),
    ("kd_parity (Hinton KD)", "kd_parity", []),
    ("scratch_parity (labels only)", "scratch_parity", []),
]


def run(spec: str, run_dir: Path, overrides: list[str]) -> dict[str, float]:
    graph, _ = validate(load_spec(spec, overrides))
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(graph, run_dir, **QUIET).run()


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", default="all,low")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps")
    parser.add_argument("--out", default=None, help="folder of the runs (default: a temp one)")
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lelp_"))
    specs = {"kd_parity": root / "kd_parity.yaml", "scratch_parity": root / "scratch_parity.yaml"}
    root.mkdir(parents=True, exist_ok=True)
    specs["kd_parity"].write_text(KD_PARITY)
    specs["scratch_parity"].write_text(SCRATCH_PARITY)
    quick = ["train.steps=20", "train.eval.every=20", "train.checkpoint_every=20"] \
        if args.quick else []
    results: dict[tuple[str, str], list[float]] = {}
    teachers: dict[tuple[str, int], set[float]] = {}
    start = time.perf_counter()
    for setting in args.settings.split(","):
        for seed in range(seeds):
            for label, spec, over in ROWS:
                overrides = [*over, *(LOW if setting == "low" else []), *quick,
                             f"train.seed={seed}"]
                tag = f"{spec}_{setting}_{seed}_{len(results)}"
                summary = run(str(specs.get(spec, spec)), root / tag, overrides)
                results.setdefault((label, setting), []).append(summary["student/accuracy"])
                teacher = summary["parity_teacher/accuracy"]
                teachers.setdefault((setting, seed), set()).add(teacher)
                print(f"  {setting} seed {seed} {label}: {summary['student/accuracy']:.4f} "
                      f"(teacher {teacher:.4f})", flush=True)
    print(f"\n{seeds} seed(s), {time.perf_counter() - start:.0f} s; runs in {root}\n")
    print("| student (64 -> 24 MLP body) | " + " | ".join(args.settings.split(",")) + " |")
    print("| --- |" + " --- |" * len(args.settings.split(",")))
    for label, _, _ in ROWS:
        cells = [_fmt(results[(label, s)]) for s in args.settings.split(",")]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for (setting, seed), accs in sorted(teachers.items()):
        same = "the same in every row" if len(accs) == 1 else f"DIFFERS across rows: {accs}"
        print(f"teacher accuracy, {setting}, seed {seed}: "
              f"{', '.join(f'{a:.4f}' for a in sorted(accs))} ({same})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
