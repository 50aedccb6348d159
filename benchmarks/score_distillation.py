"""DMD2 (one-step generator), SDS and VSD (particles) from the ring's diffusion teacher (CPU).

For each seed: `diffusion_teacher_toy` is trained (or reused from --teacher-root/seed<N>),
then `dmd2_toy` with its two time-scale update (the generator every 5th step) and the
equal-rate ablation (`updates.generator.every=1`), `sds_toy` and `vsd_toy`. Printed: the
teacher and the DMD2 generators at 1 step (energy distance, mode coverage, in modes, ms per
1,000 samples, as benchmarks/diffusion_table.py), and the particles of SDS and VSD (energy
distance, mode coverage, in modes, spread: mean distance to the nearest mode centre relative
to the data's; 1 is the data's spread).

    python benchmarks/score_distillation.py --seeds 0,1,2
    python benchmarks/score_distillation.py --quick      # 1 seed, a few steps (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dgraph.api import train

KEYS = ("energy_distance", "mode_coverage", "in_modes")
PARTICLE_KEYS = ("energy_distance", "mode_coverage", "in_modes", "spread")


def _fmt(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def generator_ms(run: Path, node: str) -> float:
    """ms per 1,000 one-step samples of the run's ``node`` (DDIM, 1 step; median of 5)."""
    from dgraph.components.diffusion.denoisers import TimeMLP
    from dgraph.components.diffusion.schedulers import NoiseScheduler, call_denoiser

    from dgraph.spec import load_spec

    nodes = load_spec(run / "spec.resolved.yaml").nodes
    net = TimeMLP.create(**nodes[node].params)
    net.load_state_dict(load_file(str(run / "final" / f"{node}.safetensors")))
    net.eval()
    sched = NoiseScheduler.create(**nodes["sched"].params)
    times = []
    with torch.no_grad():
        for _ in range(6):
            noise = torch.randn(1000, 2)
            start = time.perf_counter()
            sched.sample(lambda x, t: call_denoiser(net, x, t), noise, 1)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--quick", action="store_true", help="1 seed, 40 steps per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temp)")
    parser.add_argument("--teacher-root", default=None, help="reuse <root>/seed<N>/"
                        "diffusion_teacher_toy when it has a final/ folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    root = Path(args.out or tempfile.mkdtemp(prefix="score_distillation_"))
    quiet = {"progress": False, "log": lambda _m: None}
    rows: dict[str, dict[str, list[float]]] = {}
    particles: dict[str, dict[str, list[float]]] = {}
    steps = ["train.steps=40", "train.eval.every=40"] if args.quick else []

    def add(table: dict, row: str, values: dict[str, float], keys: tuple, suffix: str) -> None:
        cell = table.setdefault(row, {k: [] for k in (*keys, "ms")})
        for key in keys:
            cell[key].append(values[f"samples/{key}{suffix}"])

    for seed in seeds:
        base = root / f"seed{seed}"
        common = [f"train.seed={seed}"]
        teacher_run = base / "diffusion_teacher_toy"
        reuse = Path(args.teacher_root or "/nonexistent") / f"seed{seed}" / teacher_run.name
        if (reuse / "final").exists():
            teacher_run = reuse
            base.mkdir(parents=True, exist_ok=True)
            (base / "diffusion_teacher_toy").unlink(missing_ok=True)
            (base / "diffusion_teacher_toy").symlink_to(reuse.resolve())
        import json

        if (teacher_run / "summary.json").exists():
            teacher = json.loads((teacher_run / "summary.json").read_text())
        else:
            teacher = train("diffusion_teacher_toy", out=teacher_run, overwrite=True,
                            overrides=[*common, *steps], **quiet)
        add(rows, "teacher (DDIM)", teacher, KEYS, "@1")
        rows["teacher (DDIM)"]["ms"].append(generator_ms(teacher_run, "teacher"))
        for row, name, extra in (("DMD2, generator every 5th step", "dmd2_toy", []),
                                 ("DMD2, equal rates (every=1)", "dmd2_eq",
                                  ["updates.generator.every=1"])):
            started = time.perf_counter()
            summary = train("dmd2_toy", out=base / name, overwrite=True,
                            overrides=[*common, *steps, *extra], **quiet)
            add(rows, row, summary, KEYS, "@1")
            rows[row]["ms"].append(generator_ms(base / name, "generator"))
            print(f"seed {seed}: {name} in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
        for row, name in (("SDS", "sds_toy"), ("VSD", "vsd_toy")):
            started = time.perf_counter()
            summary = train(name, out=base / name, overwrite=True,
                            overrides=[*common, *steps], **quiet)
            add(particles, row, summary, PARTICLE_KEYS, "")
            print(f"seed {seed}: {name} in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)

    print(f"score distillation on the ring of 8 Gaussians, seeds {seeds}, runs in {root}")
    print("| model (sampler) | steps | energy distance | mode coverage | in modes "
          "| ms / 1,000 samples |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row, cell in rows.items():
        print(f"| {row} | 1 | {_fmt(cell['energy_distance'], 4)} | "
              f"{_fmt(cell['mode_coverage'], 2)} | {_fmt(cell['in_modes'], 2)} | "
              f"{_fmt(cell['ms'], 1)} |")
    print()
    print("| particles (512) | energy distance | mode coverage | in modes | spread |")
    print("| --- | --- | --- | --- | --- |")
    for row, cell in particles.items():
        print(f"| {row} | {_fmt(cell['energy_distance'], 4)} | "
              f"{_fmt(cell['mode_coverage'], 2)} | {_fmt(cell['in_modes'], 2)} | "
              f"{_fmt(cell['spread'], 2)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
