"""OFA-KD across architectures and self-distillation with ground-truth weighting, on digits.

Rows (test accuracy of the student, `student/accuracy` on the held-out split, mean ± std over
seeds; the teachers `teacher_digits` (MLP) and `teacher_digits_cnn` are trained once, seed 0):

* CNN teacher -> 3-layer MLP student: `ofa_kd` against plain KD (`_ofa_digits` + 0.9 Hinton KD
  at T=4 + 0.1 CE) and the same MLP from labels alone;
* MLP teacher -> small CNN student (the reverse; the `ofa_kd_reverse` spec written below):
  OFA with branches on the CNN's layer1/layer2 against plain KD and the CNN alone;
* each OFA direction without its branches (their terms weighted 0: the loss alone);
* `self_distill_guided` (rounds with the closed-form ground-truth weight; the weight of each
  round is printed) against `born_again` (its fixed weights 0.5, 0.3 at T=4), the guided
  spec with a fixed weight `alpha=0.5`, with the label-noise closed form, and with the kernel
  closed form scored on the test split (an upper reference: tuned on the reported split).

Settings: ``all`` (every training label) and ``low`` (50 labels, the rest unlabelled).

    python benchmarks/ofa_guided.py                     # 3 seeds, both settings
    python benchmarks/ofa_guided.py --quick             # 1 seed, 30 steps (smoke test)
    python benchmarks/ofa_guided.py --write-specs DIR   # write the variant specs and stop
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

LOW = ["nodes.data.params.labelled=50"]

# Plain KD between the heterogeneous pair of ofa_kd (CNN teacher, 3-layer MLP student).
KD_HETERO = """\
dgraph: 1
name: kd_hetero
description: Plain Hinton KD from the CNN teacher into the 3-layer MLP student (ofa_kd's baseline).
extends: _ofa_digits
nodes:
  kd:
    kind: loss
    type: hinton_kd
    params: {temperature: 4.0}
    inputs: {student: student.logits, teacher: teacher.logits}
updates:
  main:
    objective: {kd: 0.9, ce: 0.1}
export: {node: student}
"""

# The same student from labels alone (the teacher stays loaded but unused).
SCRATCH_HETERO = KD_HETERO.replace("name: kd_hetero", "name: scratch_hetero").replace(
    "objective: {kd: 0.9, ce: 0.1}", "objective: {ce: 1.0}")

# The reverse pair: the MLP teacher of teacher_digits into a small CNN student.
_REVERSE_BASE = """\
dgraph: 1
name: {name}
description: {description}
extends: _digits
nodes:
  data:
    params: {{flatten: false}}
  pixels: {{kind: op, type: flatten, inputs: {{x: data.x}}}}
  teacher:
    kind: teacher
    type: mlp
    params: {{in_features: 64, hidden: [256, 256], num_classes: 10}}
    init: {{run: teacher_digits, node: teacher}}
    inputs: {{x: pixels.y}}
  student:
    kind: student
    type: cnn
    params: {{in_channels: 1, channels: [8, 16, 32], num_classes: 10, image_size: 8}}
    inputs: {{x: data.x}}
{nodes}
updates:
  main:
    optimizer: {{type: adam, lr: 0.003}}
    scheduler: {{type: cosine}}
    params: {params}
    objective: {objective}
export: {{node: student}}
"""

OFA_REVERSE = _REVERSE_BASE.format(
    name="ofa_kd_reverse",
    description="OFA-KD from the MLP teacher into a small CNN student, branches on layer1/layer2.",
    nodes="""\
  branch1:
    kind: projector
    type: logit_branch
    params: {in_features: 8, num_classes: 10}
    inputs: {x: student.layer1}
  branch2:
    kind: projector
    type: logit_branch
    params: {in_features: 16, num_classes: 10}
    inputs: {x: student.layer2}
  ofa:
    kind: loss
    type: ofa_loss
    params: {gamma: 1.5}
    inputs: {student: student.logits, teacher: teacher.logits, target: data.y, mask: data.labelled}
  ofa1:
    kind: loss
    type: ofa_loss
    params: {gamma: 1.5}
    inputs: {student: branch1.y, teacher: teacher.logits, target: data.y, mask: data.labelled}
  ofa2:
    kind: loss
    type: ofa_loss
    params: {gamma: 1.5}
    inputs: {student: branch2.y, teacher: teacher.logits, target: data.y, mask: data.labelled}
""",
    params="[student, branch1, branch2]", objective="{ofa: 1.0, ofa1: 1.0, ofa2: 1.0}")

_REVERSE_KD_NODES = """\
  kd:
    kind: loss
    type: hinton_kd
    params: {temperature: 4.0}
    inputs: {student: student.logits, teacher: teacher.logits}
  ce:
    kind: loss
    type: cross_entropy
    inputs: {logits: student.logits, target: data.y, mask: data.labelled}
"""
KD_REVERSE = _REVERSE_BASE.format(
    name="kd_reverse", description="Plain Hinton KD from the MLP teacher into the small CNN.",
    nodes=_REVERSE_KD_NODES, params="[student]", objective="{kd: 0.9, ce: 0.1}")
SCRATCH_REVERSE = _REVERSE_BASE.format(
    name="scratch_reverse", description="The small CNN student from labels alone.",
    nodes=_REVERSE_KD_NODES, params="[student]", objective="{ce: 1.0}")

SPECS = {"kd_hetero": KD_HETERO, "scratch_hetero": SCRATCH_HETERO,
         "ofa_kd_reverse": OFA_REVERSE, "kd_reverse": KD_REVERSE,
         "scratch_reverse": SCRATCH_REVERSE}

# The ablation: the branches' OFA terms weighted 0 (only the student's own head learns).
NO_BRANCHES = ["updates.main.objective.ofa1=0", "updates.main.objective.ofa2=0"]
# (row label, spec name or variant, extra overrides)
ROWS = [
    ("CNN→MLP: MLP from labels", "scratch_hetero", []),
    ("CNN→MLP: plain KD", "kd_hetero", []),
    ("CNN→MLP: ofa_kd", "ofa_kd", []),
    ("CNN→MLP: ofa_kd, no branches", "ofa_kd", NO_BRANCHES),
    ("MLP→CNN: CNN from labels", "scratch_reverse", []),
    ("MLP→CNN: plain KD", "kd_reverse", []),
    ("MLP→CNN: OFA (reverse)", "ofa_kd_reverse", []),
    ("MLP→CNN: OFA, no branches", "ofa_kd_reverse", NO_BRANCHES),
    ("self-distill: born_again", "born_again", []),
    ("self-distill: guided, alpha=0.5", "self_distill_guided", ["nodes.guided.params.alpha=0.5"]),
    ("self-distill: self_distill_guided (kernel-ridge closed form)", "self_distill_guided", []),
    ("self-distill: guided, label-noise closed form", "self_distill_guided",
     ["nodes.guided.params.estimate=label_noise"]),
    ("self-distill: guided, kernel-ridge scored on the test split (tuned on test)",
     "self_distill_guided", ["nodes.guided.params.split=eval"]),
]
QUIET = {"progress": False, "log": lambda _m: None}


def write_specs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in SPECS.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(text)
    return paths


def run(spec: str, run_dir: Path, overrides: list[str], device: str
        ) -> tuple[dict[str, float], list[float]]:
    """Train one spec; returns the summary and, for a guided spec, the weight of each round."""
    graph, _ = validate(load_spec(spec, [*overrides, f"train.device={device}"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(graph, run_dir, **QUIET)
    alphas: list[float] = []
    guided = trainer.instances.modules.get("guided")
    if guided is not None:
        begin = trainer.begin_stage

        def record(stage):  # noqa: ANN001, ANN202
            if stage.start > 0 and stage.name != "gen1":
                alphas.append(float(guided.alpha))
            begin(stage)

        trainer.begin_stage = record
    summary = trainer.run()
    if guided is not None:
        alphas.append(float(guided.alpha))
    return summary, alphas


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default="all,low")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", default=None,
                        help="only the rows whose label contains this text (e.g. self-distill)")
    parser.add_argument("--out", default=None, help="keep the runs here (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 30 steps, all labels")
    parser.add_argument("--write-specs", default=None, metavar="DIR",
                        help="write the variant specs (baselines, the reverse OFA) and stop")
    args = parser.parse_args(argv)
    if args.write_specs:
        for name, path in write_specs(Path(args.write_specs)).items():
            print(f"{name}: {path}")
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    settings = [s for s in args.settings.split(",") if s in ("all", "low")]
    steps = args.steps
    if args.quick:
        seeds, steps, settings = seeds[:1], steps or 30, ["all"]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ofa_guided_"))
    specs = write_specs(root / "specs")
    step_set = [f"train.steps={steps}", f"train.eval.every={steps}"] if steps else []
    start = time.perf_counter()
    teachers = {}
    for name in ("teacher_digits", "teacher_digits_cnn"):
        summary, _ = run(name, root / name, step_set, args.device)
        teachers[name] = summary.get("teacher/accuracy", float("nan"))
    results: dict[tuple[str, str], list[float]] = {}
    alphas: dict[tuple[str, str], list[list[float]]] = {}
    for setting in settings:
        for seed in seeds:
            for index, (label, spec, extra) in enumerate(ROWS):
                if args.rows and args.rows not in label:
                    continue
                over = [*step_set, f"train.seed={seed}", *extra,
                        *(LOW if setting == "low" else [])]
                tag = f"{spec}_row{index}_{setting}_s{seed}"
                summary, round_alphas = run(str(specs.get(spec, spec)), root / tag, over,
                                            args.device)
                results.setdefault((label, setting), []).append(summary["student/accuracy"])
                if round_alphas and not any("alpha=" in item for item in extra):
                    alphas.setdefault((label, setting), []).append(round_alphas)
                print(f"  {tag}: {summary['student/accuracy']:.3f}"
                      + (f"  alphas {[round(a, 3) for a in round_alphas]}"
                         if round_alphas else ""), file=sys.stderr)
    print(f"teachers (seed 0): MLP {teachers['teacher_digits']:.3f}, "
          f"CNN {teachers['teacher_digits_cnn']:.3f}")
    print("| student | " + " | ".join(settings) + " |")
    print("| --- |" + " --- |" * len(settings))
    for label, _spec, _extra in ROWS:
        if args.rows and args.rows not in label:
            continue
        print(f"| {label} | " + " | ".join(_fmt(results.get((label, s), []))
                                           for s in settings) + " |")
    for (label, setting), rounds in alphas.items():
        print(f"closed-form weights, {label} ({setting}), rounds gen1, gen2 per seed: "
              + "; ".join(", ".join(f"{a:.3f}" for a in r) for r in rounds))
    print(f"({len(seeds)} seeds, {time.perf_counter() - start:.0f} s, runs in {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
