"""Dataset distillation by distribution matching (`dd_dm`) against random real images.

A thin wrapper over the spec's own evaluation: for each seed, `dd_dm` learns the synthetic set
(``train.seed`` = seed) and its ``dd_evaluator`` metric nodes (``synthetic`` and
``random_real``, evaluation seed = seed) report the test accuracy of fresh networks trained
only on the set and on as many random real training images per class. Prints them and their
means over seeds; the same values are in each run's ``summary.json``.

    python benchmarks/dd_eval.py                    # 3 seeds, the spec's 500 steps
    python benchmarks/dd_eval.py --quick            # 1 seed, 20 steps (smoke test)
    python benchmarks/dd_eval.py --model cnn --images-per-class 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dgraph.api import train

_NODES = ("synthetic", "random_real")  # the dd_evaluator nodes of specs/dd_dm.yaml
_MODELS = {"mlp": {"hidden": [128]}, "cnn": {"channels": [32, 64]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--images-per-class", type=int, default=10)
    parser.add_argument("--model", default="all", choices=["all", *_MODELS],
                        help="the networks trained on the set for evaluation")
    parser.add_argument("--eval-steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    steps = args.steps
    if args.quick:
        seeds, steps = seeds[:1], steps or 20
    models = _MODELS if args.model == "all" else {args.model: _MODELS[args.model]}
    summaries: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            overrides = [f"train.seed={seed}", f"train.device={args.device}",
                         f"nodes.syn.params.images_per_class={args.images_per_class}"]
            for node in _NODES:
                overrides += [f"nodes.{node}.params.seeds=[{seed}]",
                              f"nodes.{node}.params.steps={args.eval_steps}",
                              f"nodes.{node}.params.models={json.dumps(models)}"]
            if steps is not None:
                overrides.append(f"train.steps={steps}")
            start = time.perf_counter()
            summary = train("dd_dm", out=Path(tmp) / f"seed{seed}", overrides=overrides,
                            progress=False, log=lambda _m: None)
            summaries.append(summary)
            shown = ", ".join(f"{node} {model} {summary[f'{node}/accuracy@{model}']:.4f}"
                              for node in _NODES for model in models)
            print(f"seed {seed}: {shown} ({time.perf_counter() - start:.0f} s)", flush=True)

    def fmt(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    print(f"{args.images_per_class} images per class, evaluation {', '.join(models)} "
          f"({args.eval_steps} Adam steps), seeds {seeds}:")
    for node, label in zip(_NODES, ("dd_dm synthetic set", "random real images"), strict=True):
        for model in models:
            values = [s[f"{node}/accuracy@{model}"] for s in summaries]
            print(f"{label + ' (' + model + '):':<30} {fmt(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
