"""Sequence-level KD from two teachers' verified answers vs from one teacher's.

1. trains the arithmetic teacher (zoo spec ``arithmetic_teacher``, a 2-layer GPT-2) once, in
   the same folder as benchmarks/seqkd_filtered.py (reused when it is there);
2. per seed, trains ``seqkd_multi_teacher`` three ways, same steps: the student learns the
   chosen verified answers of both teachers (the strong one and a 1-layer teacher trained in
   the run's first stage), of the strong teacher only, and of the weak teacher only;
3. prints exact-match accuracy on the 200 held-out problems (mean ± std over the seeds), the
   kept-set sizes, how many kept answers came from each teacher, and the wall time per run.

    python benchmarks/seqkd_multi_teacher.py [--seeds 0,1,2] [--out DIR]

The claim ("Not All Correct Answers Are Equal", 2025): which teacher's verified traces a
student learns matters; choosing among several teachers' verified traces (by length, then
perplexity) gives a student at least as good as the best single source.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))
from seqkd_filtered import QUIET, _ms, teacher  # noqa: E402 - the same teacher run and format

VARIANTS = {"both": "[teacher, teacher_weak]", "strong": "[teacher]", "weak": "[teacher_weak]"}


def multi(root: Path, seed: int, variant: str) -> dict[str, float]:
    from dgraph.api import train

    run = root / f"multi_{variant}_s{seed}"
    start = time.perf_counter()
    summary = train("seqkd_multi_teacher", out=run, overwrite=True,
                    overrides=[f"train.seed={seed}",
                               f"nodes.traces.params.models={VARIANTS[variant]}"], **QUIET)
    stats = json.loads((run / "generated" / "traces" / "distil.stats.json").read_text())
    lines = [json.loads(line) for line in
             (run / "generated" / "traces" / "distil.jsonl").read_text().splitlines()]
    return {"accuracy": summary["exact_match/accuracy"], "kept": stats["kept"],
            "from_strong": float(sum(e["source"] == "teacher" for e in lines)),
            "from_weak": float(sum(e["source"] == "teacher_weak" for e in lines)),
            "verified_strong": stats.get("teacher/verified_rate", float("nan")),
            "verified_weak": stats.get("teacher_weak/verified_rate", float("nan")),
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="both,strong,weak")
    parser.add_argument("--out", default="runs/bench_seqkd_filtered")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.out)
    start = time.perf_counter()
    print(f"strong teacher (arithmetic_teacher) exact match: {teacher(root):.3f}")
    rows: dict[str, list[dict[str, float]]] = {}
    for variant in args.variants.split(","):
        rows[variant] = []
        for seed in seeds:
            rows[variant].append(multi(root, seed, variant))
            print(f"  {variant} seed {seed}: {rows[variant][-1]}", flush=True)
    print(f"\nseqkd_multi_teacher on arithmetic, student exact match over seeds {seeds}:")
    print(f"{'traces of':<10} {'exact match':>16} {'kept':>6} {'strong':>7} {'weak':>6} "
          f"{'s / run':>8}   (kept: problems kept; strong/weak: whose answer was kept)")
    for name, results in rows.items():
        print(f"{name:<10} {_ms([r['accuracy'] for r in results]):>16} "
              f"{statistics.fmean(r['kept'] for r in results):>6.0f} "
              f"{statistics.fmean(r['from_strong'] for r in results):>7.0f} "
              f"{statistics.fmean(r['from_weak'] for r in results):>6.0f} "
              f"{statistics.fmean(r['seconds'] for r in results):>8.0f}")
    print("per seed:", {name: [round(r["accuracy"], 3) for r in results]
                        for name, results in rows.items()})
    both = rows.get("both", [])
    if both:
        print("verified share of each teacher's samples (temperature 1): strong "
              f"{_ms([r['verified_strong'] for r in both])}, weak "
              f"{_ms([r['verified_weak'] for r in both])}")
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
