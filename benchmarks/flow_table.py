"""Flow matching on the 2-D ring of Gaussians: the teacher, a flow-map student and learned
few-step solvers (CPU).

For each seed: `flow_teacher_toy` (a velocity MLP, Euler sampling on sigma = 1, 1 - 1/K, ...,
0) is trained, then `flowmap_toy` (a two-time flow-map student distilled from the teacher's
16-step Euler solves, sampling with K jumps) and `sampler_distill_toy` (K-step solvers of the
frozen teacher with learned timesteps and coefficients) from it. Rows: the teacher at 1, 2,
4, 8 and 50 Euler steps; the flow-map student at 1, 2 and 4 jumps; the teacher with the
learned solvers at 1, 2, 4 and 8 steps. Columns (mean ± std over seeds, 2,048 samples against
the 2,048 held-out points): energy distance, mode coverage (modes receiving >= 10% of their
fair share of samples within 3 RMS radii), the fraction of samples in some mode, and the
sampling time per 1,000 samples (ms, median of 5, one thread unless --threads). Each run's
training time goes to stderr.

    python benchmarks/flow_table.py                 # seed 0, the zoo's step counts
    python benchmarks/flow_table.py --seeds 0,1,2
    python benchmarks/flow_table.py --quick         # 1 seed, a few steps (smoke test)
    python benchmarks/flow_table.py --seeds 0,1,2 --out DIR --reuse   # finish an interrupted run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dgraph.api import train

KEYS = ("energy_distance", "mode_coverage", "in_modes")
ROWS = {"teacher (Euler)": [1, 2, 4, 8, 50], "flow-map student (jumps)": [1, 2, 4],
        "teacher + learned solver": [1, 2, 4, 8]}


def _fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _median_ms(draw: Any) -> float:
    times = []
    with torch.no_grad():
        for _ in range(6):
            noise = torch.randn(1000, 2)
            start = time.perf_counter()
            draw(noise)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def sampling_ms(base: Path) -> dict[tuple[str, int], float]:
    """ms per 1,000 samples of each row's sampler at each of its step counts."""
    from dgraph.components.diffusion.denoisers import TimeMLP
    from dgraph.components.diffusion.flow import FlowMapJump, FlowMapMLP
    from dgraph.components.diffusion.learned_sampler import LearnedSampler
    from dgraph.components.diffusion.schedulers import NoiseScheduler, call_denoiser

    from dgraph.registry import BuildContext
    from dgraph.spec import load_spec

    def nodes(name: str) -> Any:
        return load_spec(base / name / "spec.resolved.yaml").nodes

    teacher_nodes = nodes("flow_teacher_toy")
    teacher = TimeMLP.create(**teacher_nodes["teacher"].params)
    teacher.load_state_dict(load_file(str(base / "flow_teacher_toy" / "final" /
                                          "teacher.safetensors")))
    teacher.eval()
    sched = NoiseScheduler.create(**teacher_nodes["sched"].params)
    student = FlowMapMLP.create(**nodes("flowmap_toy")["student"].params)
    student.load_state_dict(load_file(str(base / "flowmap_toy" / "final" /
                                          "student.safetensors")))
    student.eval()
    jump = FlowMapJump.create(BuildContext(node="jump", references={"scheduler": sched}),
                              scheduler="sched")
    solver_params = dict(nodes("sampler_distill_toy")["solver"].params)
    solver_params.update(denoiser="teacher", scheduler="sched")
    solver = LearnedSampler.create(BuildContext(node="solver", references={
        "denoiser": teacher, "scheduler": sched}), **solver_params)
    solver.load_state_dict(load_file(str(base / "sampler_distill_toy" / "final" /
                                         "solver.safetensors")))

    def predict(x: Any, t: Any) -> Any:
        return call_denoiser(teacher, x, t)

    out = {}
    for k in ROWS["teacher (Euler)"]:
        out[("teacher (Euler)", k)] = _median_ms(lambda n, k=k: sched.sample(predict, n, k))
    for k in ROWS["flow-map student (jumps)"]:
        out[("flow-map student (jumps)", k)] = _median_ms(
            lambda n, k=k: jump.sample(student, None, n, k))
    for k in ROWS["teacher + learned solver"]:
        out[("teacher + learned solver", k)] = _median_ms(
            lambda n, k=k: solver.solve(predict, n, k))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--quick", action="store_true", help="1 seed, 40 steps per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temp)")
    parser.add_argument("--reuse", action="store_true", help="read the finished runs found "
                        "in --out (seed<N>/<spec>) instead of training them again")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    root = Path(args.out or tempfile.mkdtemp(prefix="flow_table_"))
    quiet = {"progress": False, "log": lambda _m: None}
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}

    def add(row: str, values: dict[str, float], prefix: str = "samples") -> None:
        for k in ROWS[row]:
            cell = cells.setdefault((row, k), {key: [] for key in (*KEYS, "ms")})
            for key in KEYS:
                cell[key].append(values[f"{prefix}/{key}@{k}"])

    for seed in seeds:
        base = root / f"seed{seed}"
        runs = {"flow_teacher_toy": 6000, "flowmap_toy": 3000, "sampler_distill_toy": 500}
        summaries = {}
        for name, steps in runs.items():
            steps = 40 if args.quick else steps
            done = base / name / "summary.json"
            if args.reuse and (base / name / "final").is_dir() and done.is_file():
                summaries[name] = json.loads(done.read_text())
                continue
            started = time.perf_counter()
            summaries[name] = train(name, out=base / name, overwrite=True,
                                    overrides=[f"train.seed={seed}", f"train.steps={steps}",
                                               f"train.eval.every={steps}"], **quiet)
            print(f"seed {seed}: {name} trained in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
        add("teacher (Euler)", summaries["flow_teacher_toy"])
        add("flow-map student (jumps)", summaries["flowmap_toy"])
        add("teacher + learned solver", summaries["sampler_distill_toy"])
        for key, ms in sampling_ms(base).items():
            cells[key]["ms"].append(ms)

    print(f"flow matching on the ring of 8 Gaussians, seeds {seeds}, runs in {root}")
    print("| model (sampler) | steps | energy distance | mode coverage | in modes "
          "| ms / 1,000 samples |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (row, k), cell in cells.items():
        print(f"| {row} | {k} | {_fmt(cell['energy_distance'], 4)} | "
              f"{_fmt(cell['mode_coverage'], 2)} | {_fmt(cell['in_modes'], 2)} | "
              f"{_fmt(cell['ms'], 1)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
