"""Filtered vs unfiltered sequence-level KD on the arithmetic task, and self-imitation rounds.

1. trains the arithmetic teacher (zoo spec ``arithmetic_teacher``, a 2-layer GPT-2) once;
2. per seed, trains the 1-layer student with ``seqkd_filtered`` (the teacher samples 4 answers
   per problem, only verified ones are kept, the teacher's likeliest first, one per problem)
   and with the same spec unfiltered (every sample kept: plain seq-KD), same steps;
3. per seed, runs ``selfimitation_rounds`` (warm-up on 200 true answers, then 3 rounds of
   constrained generation, verification and fine-tuning) and reads the student's exact-match
   accuracy at the end of the warm-up and of each round;
4. prints a table: exact-match accuracy on the 200 held-out problems (mean ± std over the
   seeds), the kept-set sizes and the wall time of each run.

    python benchmarks/seqkd_filtered.py [--seeds 0,1,2] [--out DIR]

The claim (UniversalNER, I2D2, "Not All Correct Answers Are Equal"): training on verified
teacher outputs beats training on all of them, and self-imitation improves round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

UNFILTERED = ["nodes.traces.params.verifier=null", "nodes.traces.params.critic=null",
              "nodes.traces.params.prefer=none", "nodes.traces.params.keep_best=null",
              "nodes.traces.params.dedupe=false"]
QUIET = {"progress": False, "log": lambda _m: None}


def _stats(run: Path, stage: str) -> dict:
    return json.loads((run / "generated" / "traces" / f"{stage}.stats.json").read_text())


def _evals(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval/exact_match/accuracy" in record:
            out[int(record["step"])] = float(record["eval/exact_match/accuracy"])
    return out


def teacher(root: Path) -> float:
    """Train (once) the teacher beside the students' runs; its exact-match accuracy."""
    from dgraph.api import train

    run = root / "arithmetic_teacher"
    if not (run / "summary.json").exists():
        train("arithmetic_teacher", out=run, overwrite=True, **QUIET)
    return float(json.loads((run / "summary.json").read_text())["exact_match/accuracy"])


def seqkd(root: Path, seed: int, *, filtered: bool) -> dict[str, float]:
    from dgraph.api import train

    run = root / f"{'filtered' if filtered else 'unfiltered'}_s{seed}"
    start = time.perf_counter()
    summary = train("seqkd_filtered", out=run, overwrite=True,
                    overrides=[f"train.seed={seed}", *([] if filtered else UNFILTERED)],
                    **QUIET)
    stats = _stats(run, "distil")
    return {"accuracy": summary["exact_match/accuracy"], "kept": stats["kept"],
            "verified_rate": stats.get("verified_rate", float("nan")),
            "seconds": time.perf_counter() - start}


def selfimitation(root: Path, seed: int) -> dict[str, object]:
    from dgraph.api import train
    from dgraph.runtime.setup import plan_stages
    from dgraph.spec import load_spec

    run = root / f"selfimitation_s{seed}"
    start = time.perf_counter()
    train("selfimitation_rounds", out=run, overwrite=True, overrides=[f"train.seed={seed}"],
          **QUIET)
    evals = _evals(run)
    stages = plan_stages(load_spec("selfimitation_rounds"))
    return {"accuracy": {s.name: evals[s.end] for s in stages},
            "kept": {s.name: _stats(run, s.name)["kept"] for s in stages if s.generate},
            "seconds": time.perf_counter() - start}


def run_pair(seed: int, root: Path | None = None) -> tuple[float, float]:
    """Filtered and unfiltered exact-match accuracy at one seed (the slow test's check)."""
    root = root or Path("runs") / "bench_seqkd_filtered"
    teacher(root)
    return (seqkd(root, seed, filtered=True)["accuracy"],
            seqkd(root, seed, filtered=False)["accuracy"])


def _ms(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/bench_seqkd_filtered")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.out)
    start = time.perf_counter()
    teacher_accuracy = teacher(root)
    print(f"teacher (arithmetic_teacher) exact match: {teacher_accuracy:.3f} "
          f"({time.perf_counter() - start:.0f} s incl. training when missing)")
    rows = {"filtered": [seqkd(root, s, filtered=True) for s in seeds],
            "unfiltered": [seqkd(root, s, filtered=False) for s in seeds]}
    print(f"\nseq-KD on arithmetic, student exact match over seeds {seeds}:")
    print(f"{'variant':<12} {'exact match':>16} {'kept examples':>14} {'s / run':>8}")
    for name, results in rows.items():
        print(f"{name:<12} {_ms([r['accuracy'] for r in results]):>16} "
              f"{statistics.fmean(r['kept'] for r in results):>14.0f} "
              f"{statistics.fmean(r['seconds'] for r in results):>8.0f}")
    print("per seed:", {name: [round(r["accuracy"], 3) for r in results]
                        for name, results in rows.items()})
    imitation = [selfimitation(root, s) for s in seeds]
    print(f"\nselfimitation_rounds, student exact match at the end of each stage over seeds "
          f"{seeds}:")
    for stage in imitation[0]["accuracy"]:
        kept = [r["kept"].get(stage) for r in imitation]  # type: ignore[union-attr]
        kept_text = "" if kept[0] is None else \
            f"  (kept {statistics.fmean(float(k) for k in kept):.0f})"
        print(f"  {stage:<8} {_ms([r['accuracy'][stage] for r in imitation]):>16}"  # type: ignore[index]
              f"{kept_text}")
    print(f"  {statistics.fmean(float(r['seconds']) for r in imitation):.0f} s / run")
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
