"""Dataset distillation by distribution matching (`dd_dm`) against random real images.

For each seed, `dd_dm` learns 10 synthetic images per class (``train.seed`` = seed); then a
fresh network is trained only on them and tested on the real test split, and the same is done
with 10 random real training images per class (evaluation network and real subset seeded by
the same seed). Prints the accuracies and their means over seeds.

    python benchmarks/dd_eval.py                    # 3 seeds, the spec's 500 steps
    python benchmarks/dd_eval.py --quick            # 1 seed, 20 steps (smoke test)
    python benchmarks/dd_eval.py --model cnn --images-per-class 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dgraph.components.data._dd_eval import compare_with_random_real

from dgraph.api import train
from dgraph.runtime.checkpoint import load_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--images-per-class", type=int, default=10)
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"],
                        help="the network trained on the set for evaluation")
    parser.add_argument("--eval-steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    steps = args.steps
    if args.quick:
        seeds, steps = seeds[:1], steps or 20
    synthetic, real = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            overrides = [f"train.seed={seed}", f"train.device={args.device}",
                         f"nodes.syn.params.images_per_class={args.images_per_class}"]
            if steps is not None:
                overrides.append(f"train.steps={steps}")
            start = time.perf_counter()
            out = Path(tmp) / f"seed{seed}"
            train("dd_dm", out=out, overrides=overrides, progress=False, log=lambda _m: None)
            weights = load_weights(out / "final" / "syn.safetensors")
            result = compare_with_random_real(weights["images"], weights["labels"], [seed],
                                              model=args.model, steps=args.eval_steps)
            synthetic += result["synthetic"]
            real += result["random_real"]
            print(f"seed {seed}: dd_dm {result['synthetic'][0]:.4f}, random real "
                  f"{result['random_real'][0]:.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)

    def fmt(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    print(f"{args.images_per_class} images per class, evaluation {args.model} "
          f"({args.eval_steps} Adam steps), seeds {seeds}:")
    print(f"dd_dm synthetic set: {fmt(synthetic)}")
    print(f"random real images:  {fmt(real)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
