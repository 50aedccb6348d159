"""The diffusion family in one table per dataset: teachers plain and with learned solvers,
every few-step student, each metric, and the sampling time (CPU).

Ring of 8 Gaussians (``--ring-seeds``, default 0,1,2): `diffusion_teacher_toy` (DDIM) at 1, 2,
4, 8, 50 steps and with its learned DDIM solvers (`sampler_distill_ddim_toy`) at 1, 2, 4, 8;
`progressive_toy` (the student at the end of its 4-, 2- and 1-step stages, read as
benchmarks/diffusion_table.py does), `consistency_toy` (LCM) and `dmd2_toy` (a one-step
generator: 1 step only); then the flow block: `flow_teacher_toy` (Euler) at 1-50 steps, with
its learned solvers (`sampler_distill_toy`) and the flow-map student (`flowmap_toy`). SDS and
VSD optimise particles, not samplers: see benchmarks/score_distillation.py.

Digits (``--digits-seeds``, default 0): `diffusion_teacher_digits` (DDIM, guidance 2) at 1-50
steps and with its learned DDIM solvers (`sampler_distill_digits`) at 1, 2, 4, 8, and the
students `consistency_digits`, `lcm_lora_digits` (LCM) and `dmd2_digits` (one step), with the
run names and overrides of benchmarks/digits_few_step.py.

Runs are trained with the zoo's settings (the overrides of the per-family scripts) under
``--out``/<dataset>/seed<N>/<run>, or read from there with ``--reuse`` (a finished run: a
``final/`` folder and ``summary.json``; a symlink to a run made elsewhere works). Each cell
is the mean ± std over seeds of the runs' own ``summary.json`` metrics (the `n` column: how
many seeds). Timing: ms per 1,000 samples with one torch thread, the minimum of ``--reps``
(>= 5) timed repetitions after one warm-up, for the row's sampler at its step count (guided
rows run the network on both halves of classifier-free guidance); the load average at timing
is printed with the table.

    python benchmarks/diffusion_all.py --out /tmp/diff5 --reuse
    python benchmarks/diffusion_all.py --quick     # 1 seed each, a few steps (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dgraph.api import train

sys.path.insert(0, str(Path(__file__).parent))
from diffusion_table import STAGES, _stage_ends  # noqa: E402
from digits_few_step import TEACHERS, VARIANTS  # noqa: E402

QUIET = {"progress": False, "log": lambda _m: None}
# (run folder, spec, training steps, evaluation every) as the per-family scripts train them
RING_RUNS = [
    ("diffusion_teacher_toy", "diffusion_teacher_toy", 6000, 6000),
    ("progressive_toy", "progressive_toy", 3000, 3000 // len(STAGES)),
    ("consistency_toy", "consistency_toy", 3000, 3000),
    ("dmd2_toy", "dmd2_toy", 3000, 3000),
    ("sampler_distill_ddim_toy", "sampler_distill_ddim_toy", 500, 250),
    ("flow_teacher_toy", "flow_teacher_toy", 6000, 6000),
    ("flowmap_toy", "flowmap_toy", 3000, 3000),
    ("sampler_distill_toy", "sampler_distill_toy", 500, 500),
]
DIGITS_RUNS = [*((name, name, None, None) for name in TEACHERS),
               *((v, VARIANTS[v][0], None, None) for v in ("consistency", "lcm_lora", "dmd2")),
               ("sampler_distill_digits", "sampler_distill_digits", None, None)]
# (row label, run folder, metric node, step counts)
RING_ROWS = [
    ("DDIM teacher (DDIM)", "diffusion_teacher_toy", "samples", [1, 2, 4, 8, 50]),
    ("DDIM teacher + learned DDIM solver", "sampler_distill_ddim_toy", "samples", [1, 2, 4, 8]),
    ("progressive student (DDIM)", "progressive_toy", "samples", [1, 2, 4]),
    ("consistency student (LCM)", "consistency_toy", "samples", [1, 2, 4]),
    ("DMD2 one-step generator", "dmd2_toy", "samples", [1]),
    ("flow teacher (Euler)", "flow_teacher_toy", "samples", [1, 2, 4, 8, 50]),
    ("flow teacher + learned solver", "sampler_distill_toy", "samples", [1, 2, 4, 8]),
    ("flow-map student (jumps)", "flowmap_toy", "samples", [1, 2, 4]),
]
DIGITS_ROWS = [
    ("teacher (DDIM, guidance 2)", "diffusion_teacher_digits", "samples", [1, 2, 4, 8, 50]),
    ("teacher + learned DDIM solver (guidance 2)", "sampler_distill_digits", "samples",
     [1, 2, 4, 8]),
    ("consistency_digits (LCM)", "consistency", "samples", [1, 2, 4]),
    ("lcm_lora_digits (LCM, rank 8)", "lcm_lora", "samples", [1, 2, 4]),
    ("dmd2_digits one-step generator", "dmd2", "samples", [1]),
]
RING_KEYS = ("energy_distance", "mode_coverage", "in_modes")
DIGITS_KEYS = ("frechet", "class_coverage", "class_accuracy", "energy_distance")


def fmt(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def ensure(folder: Path, runs: list[tuple[str, str, int | None, int | None]], seed: int,
           reuse: bool, quick: bool) -> dict[str, dict[str, float]]:
    """Each run's summary: read (``reuse`` and finished) or trained, in order."""
    out = {}
    for name, spec, steps, every in runs:
        run = folder / name
        if reuse and (run / "final").is_dir() and (run / "summary.json").is_file():
            out[name] = json.loads((run / "summary.json").read_text())
            continue
        overrides = [f"train.seed={seed}"]
        if quick:
            overrides += ["train.steps=8", "train.eval.every=2" if name == "progressive_toy"
                          else "train.eval.every=8"]  # progressive: one evaluation a stage
        elif steps is not None:
            overrides += [f"train.steps={steps}", f"train.eval.every={every}"]
        overrides += VARIANTS[name][1] if name in VARIANTS else []
        started = time.perf_counter()
        out[name] = train(spec, out=run, overwrite=True, overrides=overrides, **QUIET)
        print(f"{folder.name}: {name} trained in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
    return out


def metrics(run: Path, summary: dict[str, float], metric: str, steps: list[int],
            keys: tuple[str, ...]) -> dict[int, dict[str, float]]:
    """``{K: {key: value}}`` of a run's metric node; a progressive run's stage ends."""
    if run.name == "progressive_toy":  # one evaluation at each stage's end
        try:
            ends = _stage_ends(run, _eval_every(run))
        except KeyError:  # --quick: fewer steps than the stages; the final evaluation
            ends = {}
        if ends:
            return {k: {key: ends[k][f"{key}@{k}"] for key in keys} for k in steps if k in ends}
    return {k: {key: summary[f"{metric}/{key}@{k}"] for key in keys
                if f"{metric}/{key}@{k}" in summary} for k in steps}


def _eval_every(run: Path) -> int:
    from dgraph.spec import load_spec

    return int(load_spec(run / "spec.resolved.yaml").train.eval.every)


# -- timing ---------------------------------------------------------------------------------
def _module(run: Path, name: str, references: dict[str, Any]) -> Any:
    """The run's node ``name`` built from its resolved spec, with its trained weights
    (final/<name>.safetensors, else its ``init`` run's); a ``lora`` node is timed as its base
    UNet (the adapters merged: the same network)."""
    from dgraph.components.diffusion.ddim_solver import LearnedDDIMSampler
    from dgraph.components.diffusion.denoisers import TimeMLP
    from dgraph.components.diffusion.flow import FlowMapJump, FlowMapMLP
    from dgraph.components.diffusion.learned_sampler import LearnedSampler
    from dgraph.components.diffusion.schedulers import NoiseScheduler
    from dgraph.components.diffusion.unet import UNetDenoiser

    from dgraph.registry import BuildContext
    from dgraph.spec import load_spec

    nodes = load_spec(run / "spec.resolved.yaml").nodes
    node = nodes[name]
    params = dict(node.params)
    context = BuildContext(node=name, references=references)
    kind = node.type
    if kind == "lora":
        base = next(n for n in nodes if nodes[n].type == "unet_denoiser")
        return _module(run, base, references)
    builders: dict[str, Callable[[], Any]] = {
        "time_mlp": lambda: TimeMLP.create(**params),
        "flow_map_mlp": lambda: FlowMapMLP.create(**params),
        "unet_denoiser": lambda: UNetDenoiser.create(context, **params),
        "noise_scheduler": lambda: NoiseScheduler.create(**params),
        "flow_map_jump": lambda: FlowMapJump.create(context, **params),
        "learned_sampler": lambda: LearnedSampler.create(context, **params),
        "learned_ddim_sampler": lambda: LearnedDDIMSampler.create(context, **params),
    }
    module = builders[kind]()
    weights = run / "final" / f"{name}.safetensors"
    if not weights.is_file() and node.init is not None and node.init.run is not None:
        weights = run.parent / node.init.run / "final" / f"{node.init.node or name}.safetensors"
    if weights.is_file():
        module.load_state_dict(load_file(str(weights)))
    return module.eval()


def sampler_for(run: Path, metric: str = "samples") -> Callable[[int, int], Any]:
    """``draw(n, K)``: n samples of the run's ``metric`` sampler at K steps (as
    diffusion_samples draws them: guidance, class labels cycling, its sampler node)."""
    from dgraph.components.diffusion.solver import guided

    from dgraph.spec import load_spec

    params = dict(load_spec(run / "spec.resolved.yaml").nodes[metric].params)
    denoiser = _module(run, params["denoiser"], {})
    scheduler = _module(run, params["scheduler"], {})
    refs = {"denoiser": denoiser, "scheduler": scheduler}
    sampler = _module(run, params["sampler"], refs) if params.get("sampler") else None
    guidance = float(params.get("guidance", 1.0))
    classes = params.get("num_classes")
    null = getattr(denoiser, "num_classes", None)
    data = load_spec(run / "spec.resolved.yaml").nodes["data"]
    shape = (2,) if data.type == "toy2d" else (1, 8, 8)

    def draw(n: int, steps: int) -> Any:
        noise = torch.randn((n, *shape))
        labels = torch.arange(n) % classes if classes else None

        def predict(x: Any, t: Any) -> Any:
            return guided(denoiser, x, t, labels, guidance, null)

        if sampler is not None:
            return sampler.sample(denoiser, predict, noise, steps)
        return scheduler.sample(predict, noise, steps)

    return draw


def min_ms(draw: Callable[[int, int], Any], steps: int, reps: int) -> float:
    """ms per 1,000 samples: the minimum of ``reps`` timed draws after one warm-up."""
    times = []
    with torch.no_grad():
        draw(1000, steps)
        for _ in range(reps):
            start = time.perf_counter()
            draw(1000, steps)
            times.append((time.perf_counter() - start) * 1000)
    return min(times)


# -- tables ---------------------------------------------------------------------------------
def table(root: Path, seeds: list[int], runs: list, rows: list, keys: tuple[str, ...],
          reuse: bool, quick: bool, reps: int) -> str:
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    for seed in seeds:
        folder = root / f"seed{seed}"
        summaries = ensure(folder, runs, seed, reuse, quick)
        for label, name, metric, steps in rows:
            for k, values in metrics(folder / name, summaries[name], metric, steps,
                                     keys).items():
                cell = cells.setdefault((label, k), {key: [] for key in keys})
                for key, value in values.items():
                    cell[key].append(value)
    timing_seed = root / f"seed{seeds[0]}"
    torch.set_num_threads(1)
    load = os.getloadavg()
    ms: dict[tuple[str, int], float] = {}
    for label, name, metric, steps in rows:
        draw = sampler_for(timing_seed / name, metric)
        for k in steps:
            ms[(label, k)] = min_ms(draw, k, reps)
    digits = {"energy_distance": 4, "frechet": 2, "class_accuracy": 3}
    head = " | ".join(k.replace("_", " ") for k in keys)
    lines = [f"| model (sampler) | steps | n | {head} | ms / 1,000 samples |",
             "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " | --- |"]
    for label, _name, _metric, steps in rows:
        for k in steps:
            cell = cells.get((label, k), {})
            n = max((len(v) for v in cell.values()), default=0)
            values = " | ".join(fmt(cell.get(key, []), digits.get(key, 2)) for key in keys)
            lines.append(f"| {label} | {k} | {n} | {values} | {ms[(label, k)]:.1f} |")
    lines.append(f"\nload average (1, 5, 15 min) at timing: {load[0]:.1f}, {load[1]:.1f}, "
                 f"{load[2]:.1f}; timing: seed {seeds[0]}'s runs, min of {reps} after a "
                 "warm-up, 1 thread")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ring-seeds", default="0,1,2")
    parser.add_argument("--digits-seeds", default="0")
    parser.add_argument("--only", choices=("ring", "digits"), default=None)
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temp)")
    parser.add_argument("--reuse", action="store_true", help="read finished runs in --out")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 seed each, 8 steps per run")
    args = parser.parse_args(argv)
    if args.reps < 5:
        parser.error("--reps: at least 5 timed repetitions")
    import tempfile

    torch.set_num_threads(1)
    root = Path(args.out or tempfile.mkdtemp(prefix="diffusion_all_"))
    ring_seeds = [0] if args.quick else [int(s) for s in args.ring_seeds.split(",")]
    digits_seeds = [0] if args.quick else [int(s) for s in args.digits_seeds.split(",")]
    if args.only in (None, "ring"):
        print(f"## ring of 8 Gaussians (seeds {ring_seeds}; 2,048 samples against 2,048 "
              f"held-out points; runs in {root / 'ring'})\n")
        print(table(root / "ring", ring_seeds, RING_RUNS, RING_ROWS, RING_KEYS, args.reuse,
                    args.quick, args.reps), flush=True)
    if args.only in (None, "digits"):
        print(f"\n## 8x8 digits (seeds {digits_seeds}; 500 samples, the frozen digits CNN's "
              f"features; runs in {root / 'digits'})\n")
        print(table(root / "digits", digits_seeds, DIGITS_RUNS, DIGITS_ROWS, DIGITS_KEYS,
                    args.reuse, args.quick, args.reps), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
