"""LCM-LoRA and DMD2 on 8x8 digits from the digits diffusion teacher (CPU).

For each seed: the judge CNN (`teacher_digits_cnn`) and `diffusion_teacher_digits` are trained
(or reused from --teacher-root, a folder holding both runs), then `lcm_lora_digits` (LoRA
adapters, consistency distillation; LCM sampling at 1, 2, 4 steps) and `dmd2_digits` (one-step
generator, two time scales, GAN head) with its ablations: without the GAN terms (`nogan`) and
with equal rates (`equal`: the generator every step). Printed per run (markdown): the Frechet
distance in the judge's features and the class coverage / class accuracy at each step count
(500 samples), the training wall time, and the trainable parameters against the full UNet's.

    python benchmarks/digits_few_step.py --teacher-root /path/with/both/runs
    python benchmarks/digits_few_step.py --variants lcm_lora,dmd2 --seeds 0,1,2
    python benchmarks/digits_few_step.py --quick      # a few steps of each (smoke run)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dgraph.api import train

QUIET = {"progress": False, "log": lambda _m: None}
VARIANTS = {
    "lcm_lora": ("lcm_lora_digits", []),
    "dmd2": ("dmd2_digits", []),
    "dmd2_nogan": ("dmd2_digits", ["updates.generator.objective.gan_g=0",
                                   "updates.fake_score.objective.gan_d=0"]),
    "dmd2_equal": ("dmd2_digits", ["updates.generator.every=1"]),
    "consistency": ("consistency_digits", []),
}
TEACHERS = ("teacher_digits_cnn", "diffusion_teacher_digits")


def _trainable(run: Path, node: str) -> tuple[int, int]:
    """(trained values, all values) of the run's ``node`` weights (LoRA: adapters only)."""
    weights = load_file(str(run / "final" / f"{node}.safetensors"))
    total = sum(v.numel() for v in weights.values())
    adapters = sum(v.numel() for k, v in weights.items() if "lora_" in k)
    trained = adapters or total
    return trained, total - trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default="lcm_lora,dmd2,dmd2_nogan,dmd2_equal")
    parser.add_argument("--teacher-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.out or Path(tempfile.mkdtemp(prefix="digits_few_step_"))
    quick = ["train.steps=4", "train.eval.every=4", "nodes.samples.params.num_samples=40"] \
        if args.quick else []
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        folder = root / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in TEACHERS:
            if (folder / name / "final").exists():
                continue
            if args.teacher_root is not None and (args.teacher_root / name / "final").exists():
                shutil.copytree(args.teacher_root / name, folder / name,
                                ignore=shutil.ignore_patterns(".dgraph-lock"))
                continue
            train(name, out=folder / name, overrides=[f"train.seed={seed}", *quick], **QUIET)
        for variant in args.variants.split(","):
            spec, extra = VARIANTS[variant]
            run = folder / variant
            start = time.perf_counter()
            summary = train(spec, out=run, overwrite=True,
                            overrides=[f"train.seed={seed}", *extra, *quick], **QUIET)
            wall = time.perf_counter() - start
            node = "generator" if spec == "dmd2_digits" else "student"
            trained, frozen = _trainable(run, node)
            rows.append((variant, seed, summary, wall, trained, frozen))
    print(f"runs in {root}\n")
    print("| run | seed | K | frechet@K | class_coverage@K | class_accuracy@K | wall (s) | "
          "trained params | frozen params |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant, seed, summary, wall, trained, frozen in rows:
        for k in (1, 2, 4):
            if f"samples/frechet@{k}" not in summary:
                continue
            print(f"| {variant} | {seed} | {k} | {summary[f'samples/frechet@{k}']:.2f} | "
                  f"{summary[f'samples/class_coverage@{k}']:.2f} | "
                  f"{summary[f'samples/class_accuracy@{k}']:.3f} | {wall:.0f} | "
                  f"{trained:,} | {frozen:,} |")


if __name__ == "__main__":
    main()
