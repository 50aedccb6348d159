"""Few-step diffusion students against their teacher on the 2-D ring of Gaussians (CPU).

For each seed: `diffusion_teacher_toy` (a v-prediction MLP, DDIM sampling) is trained, then
`progressive_toy` (16 -> 8 -> 4 -> 2 -> 1 DDIM steps, one stage each) and `consistency_toy`
(LCM-style consistency distillation, LCM sampling) from it. Rows: the teacher at 1, 2, 4, 8
and 50 DDIM steps; the progressive student of each stage at its own step count (the stage
ends at 4, 2 and 1 steps: read from the evaluations at the stage ends); the consistency
student at 1, 2 and 4 steps; DMD2's one-step generator (`dmd2_toy`) at 1 step. Columns
(mean ± std over seeds, 2,048 samples against the 2,048 held-out points): energy distance,
mode coverage (modes receiving >= 10% of their fair share of samples within 3 RMS radii),
the fraction of samples in some mode, and the sampling time
per 1,000 samples (ms, median of 5, one thread unless --threads).

    python benchmarks/diffusion_table.py                 # seed 0, the zoo's step counts
    python benchmarks/diffusion_table.py --seeds 0,1,2
    python benchmarks/diffusion_table.py --quick         # 1 seed, a few steps (smoke test)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dgraph.api import train

sys.path.insert(0, str(Path(__file__).parent))
from score_distillation import generator_ms  # noqa: E402

TEACHER_STEPS = [1, 2, 4, 8, 50]
STUDENT_STEPS = [1, 2, 4]
STAGES = [8, 4, 2, 1]  # progressive_toy's student step counts, one stage each
KEYS = ("energy_distance", "mode_coverage", "in_modes")


def _fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _stage_ends(run: Path, every: int) -> dict[int, dict[str, float]]:
    """Evaluations at the end of each progressive stage, by the stage's student steps."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {row["step"]: row for row in rows if any(k.startswith("eval/") for k in row)}
    return {n: {k[len("eval/samples/"):]: v for k, v in evals[every * (i + 1)].items()
                if k.startswith("eval/samples/")} for i, n in enumerate(STAGES)}


def _sampling_ms(run: Path, scheduler_type: str, steps: int, device: str) -> float:
    """ms per 1,000 samples of the run's denoiser with the spec's sampler (median of 5)."""
    from dgraph.components.diffusion.denoisers import TimeMLP
    from dgraph.components.diffusion.schedulers import NoiseScheduler, call_denoiser

    from dgraph.spec import load_spec

    nodes = load_spec(run / "spec.resolved.yaml").nodes
    name = "teacher" if nodes["teacher"].kind == "student" else "student"
    net = TimeMLP.create(**nodes[name].params)
    net.load_state_dict(load_file(str(run / "final" / f"{name}.safetensors")))
    net.to(device).eval()
    source = "lcm" if scheduler_type == "lcm" else "sched"
    sched = NoiseScheduler.create(**nodes[source].params)
    times = []
    with torch.no_grad():
        for _ in range(6):
            noise = torch.randn(1000, 2, device=device)
            start = time.perf_counter()
            sched.sample(lambda x, t: call_denoiser(net, x, t), noise, steps)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--quick", action="store_true", help="1 seed, 40 steps per run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temp)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    root = Path(args.out or tempfile.mkdtemp(prefix="diffusion_table_"))
    quiet = {"progress": False, "log": lambda _m: None}
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}

    def add(row: str, steps: int, values: dict[str, float]) -> None:
        cell = cells.setdefault((row, steps), {k: [] for k in (*KEYS, "ms")})
        for key in KEYS:
            cell[key].append(values.get(f"{key}@{steps}", values.get(f"samples/{key}@{steps}")))

    device = [f"train.device={args.device}"]
    for seed in seeds:
        base = root / f"seed{seed}"
        common = [f"train.seed={seed}", *device]
        teacher_steps = 40 if args.quick else 6000
        student_steps = 40 if args.quick else 3000
        started = time.perf_counter()
        teacher = train("diffusion_teacher_toy", out=base / "diffusion_teacher_toy",
                        overrides=[*common, f"train.steps={teacher_steps}",
                                   f"train.eval.every={teacher_steps}"], overwrite=True,
                        **quiet)
        print(f"seed {seed}: teacher trained in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        for k in TEACHER_STEPS:
            add("teacher (DDIM)", k, teacher)
        every = student_steps // len(STAGES)
        started = time.perf_counter()
        train("progressive_toy", out=base / "progressive_toy", overwrite=True,
              overrides=[*common, f"train.steps={student_steps}", f"train.eval.every={every}"],
              **quiet)
        for n, values in _stage_ends(base / "progressive_toy", every).items():
            if n in STUDENT_STEPS:
                add("progressive (DDIM)", n, values)
        print(f"seed {seed}: progressive trained in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        started = time.perf_counter()
        consistency = train("consistency_toy", out=base / "consistency_toy", overwrite=True,
                            overrides=[*common, f"train.steps={student_steps}",
                                       f"train.eval.every={student_steps}"], **quiet)
        for k in STUDENT_STEPS:
            add("consistency (LCM)", k, consistency)
        print(f"seed {seed}: consistency trained in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        started = time.perf_counter()  # DMD2's one-step generator (score_distillation.py)
        dmd2 = train("dmd2_toy", out=base / "dmd2_toy", overwrite=True,
                     overrides=[*common, f"train.steps={student_steps}",
                                f"train.eval.every={student_steps}"], **quiet)
        add("DMD2 (one-step generator)", 1, dmd2)
        cells[("DMD2 (one-step generator)", 1)]["ms"].append(
            generator_ms(base / "dmd2_toy", "generator"))
        print(f"seed {seed}: dmd2 trained in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        for (row, k), cell in cells.items():
            if len(cell["ms"]) < len(cell[KEYS[0]]):
                run = base / ("consistency_toy" if row.startswith("consistency")
                              else "diffusion_teacher_toy")
                kind = "lcm" if row.startswith("consistency") else "ddim"
                # progressive students have the teacher's architecture and sampler
                cell["ms"].append(_sampling_ms(run, kind, k, args.device))

    print(f"diffusion on the ring of 8 Gaussians, seeds {seeds}, runs in {root}")
    print("| model (sampler) | steps | energy distance | mode coverage | in modes "
          "| ms / 1,000 samples |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = list(dict.fromkeys(row for row, _ in cells))
    for (row, k), cell in sorted(cells.items(), key=lambda i: (rows.index(i[0][0]), i[0][1])):
        print(f"| {row} | {k} | {_fmt(cell['energy_distance'], 4)} | "
              f"{_fmt(cell['mode_coverage'], 2)} | {_fmt(cell['in_modes'], 2)} | "
              f"{_fmt(cell['ms'], 1)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
