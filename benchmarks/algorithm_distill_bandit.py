"""Algorithm distillation into a small LM (EVOLvE): the student's bandit regret against UCB1's,
Thompson sampling's and a uniformly random policy's.

Each seed trains `algorithm_distill_bandit` (a 2-layer GPT-2 on 2000 UCB1 traces, 4 arms,
horizon 20; `train.seed` and the data's instance seed both set to the seed) and reads the
`regret` metric at the end: the student plays 200 fresh held-out instances (the same
instances for every seed: `eval_seed` is fixed) greedily from its own history, and UCB1,
Thompson sampling and the random policy (its exact expected regret) play the same instances.
`--algorithms ucb,thompson` also distils Thompson sampling's traces.

The paper's claim (qualitative): a small model fine-tuned on an exploration algorithm's traces
explores well — far below a random policy's regret, close to the algorithm it learnt.

    python benchmarks/algorithm_distill_bandit.py            # 3 seeds, UCB1 traces
    python benchmarks/algorithm_distill_bandit.py --quick    # 1 seed, 20 steps (smoke test)
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
KEYS = [("student (greedy LM)", "regret/regret"), ("UCB1", "regret/ucb_regret"),
        ("Thompson sampling", "regret/thompson_regret"), ("uniform random", "regret/random_regret")]


def run(run_dir: Path, overrides: list[str]) -> dict[str, float]:
    graph, _ = validate(load_spec("algorithm_distill_bandit", overrides))
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(graph, run_dir, **QUIET).run()


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--algorithms", default="ucb", help="ucb and/or thompson")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps")
    parser.add_argument("--out", default=None, help="folder of the runs (default: a temp one)")
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bandit_"))
    quick = ["train.steps=20", "train.eval.every=20", "train.checkpoint_every=20",
             "nodes.data.params.instances=64", "nodes.regret.params.episodes=20"] \
        if args.quick else []
    start = time.perf_counter()
    table: dict[tuple[str, str], list[float]] = {}
    extra: dict[str, list[float]] = {}
    for algorithm in args.algorithms.split(","):
        for seed in range(seeds):
            overrides = [*quick, f"train.seed={seed}", f"nodes.data.params.seed={seed}",
                         f"nodes.data.params.algorithm={algorithm}"]
            summary = run(root / f"{algorithm}_{seed}", overrides)
            for label, key in KEYS:
                table.setdefault((algorithm, label), []).append(summary[key])
            for key in ("regret/best_arm", "regret/valid", "ppl/perplexity"):
                extra.setdefault(f"{algorithm} {key}", []).append(summary[key])
            print(f"  {algorithm} seed {seed}: " + ", ".join(
                f"{label} {summary[key]:.3f}" for label, key in KEYS), flush=True)
    print(f"\n{seeds} seed(s), {time.perf_counter() - start:.0f} s; runs in {root}\n")
    print("| traces of | " + " | ".join(label for label, _ in KEYS) + " |")
    print("| --- |" + " --- |" * len(KEYS))
    for algorithm in args.algorithms.split(","):
        print(f"| {algorithm} | " + " | ".join(_fmt(table[(algorithm, label)])
                                               for label, _ in KEYS) + " |")
    for key, values in extra.items():
        print(f"{key}: {_fmt(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
