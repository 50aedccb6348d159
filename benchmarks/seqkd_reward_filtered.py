"""Seq-KD on arithmetic filtered by a reward model that dgraph trains, vs the exact-answer
verifier (seqkd_filtered) and no filter (plain seq-KD).

1. trains the arithmetic teacher once (shared with benchmarks/seqkd_filtered.py);
2. per seed, trains ``seqkd_reward_filtered``: its first stage fine-tunes a sequence
   classifier from the teacher's transformer on true vs corrupted answers, its second keeps
   the teacher's sampled answers the classifier judges right (P >= 0.5), the likeliest one per
   problem, and trains the student on them;
3. reads (or trains) ``seqkd_filtered`` filtered and unfiltered at the same seeds;
4. prints the student's exact match (mean ± std), the judge's held-out accuracy, the share
   of kept answers that are right (the exact-answer audit) and the kept-set sizes.

    python benchmarks/seqkd_reward_filtered.py [--seeds 0,1,2] [--out DIR]
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

QUIET = {"progress": False, "log": lambda _m: None}


def reward_filtered(root: Path, seed: int) -> dict[str, float]:
    from dgraph.api import train

    run = root / f"reward_filtered_s{seed}"
    start = time.perf_counter()
    summary = train("seqkd_reward_filtered", out=run, overwrite=True,
                    overrides=[f"train.seed={seed}"], **QUIET)
    stats = json.loads((run / "generated" / "traces" / "distil.stats.json").read_text())
    return {"accuracy": summary["exact_match/accuracy"],
            "judge_accuracy": summary["reward_net/accuracy"], "kept": stats["kept"],
            "kept_right": stats["kept_audit_rate"], "sampled_right": stats["audit_rate"],
            "seconds": time.perf_counter() - start}


def exact_filtered(root: Path, seed: int, *, filtered: bool) -> dict[str, float]:
    """seqkd_filtered's run at ``seed`` (trained by benchmarks/seqkd_filtered.py when there)."""
    run = root / f"{'filtered' if filtered else 'unfiltered'}_s{seed}"
    if not (run / "summary.json").exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from seqkd_filtered import seqkd

        seqkd(root, seed, filtered=filtered)
    summary = json.loads((run / "summary.json").read_text())
    stats = json.loads((run / "generated" / "traces" / "distil.stats.json").read_text())
    lines = [json.loads(line) for line in
             (run / "generated" / "traces" / "distil.jsonl").read_text().splitlines()]
    right = sum(e["response"].strip() == e["answer"] for e in lines) / max(1, len(lines))
    return {"accuracy": summary["exact_match/accuracy"], "kept": stats["kept"],
            "kept_right": right}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/bench_seqkd_filtered")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from seqkd_filtered import _ms, teacher

    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.out)
    start = time.perf_counter()
    print(f"teacher (arithmetic_teacher) exact match: {teacher(root):.3f}")
    rows = {"reward model": [], "exact answer": [], "none": []}
    for seed in seeds:
        rows["reward model"].append(reward_filtered(root, seed))
        print(f"  reward model seed {seed}: {rows['reward model'][-1]}", flush=True)
        rows["exact answer"].append(exact_filtered(root, seed, filtered=True))
        rows["none"].append(exact_filtered(root, seed, filtered=False))
    print(f"\nseq-KD on arithmetic by filter, student exact match over seeds {seeds}:")
    print(f"{'filter':<13} {'exact match':>16} {'kept':>6} {'kept right':>11}")
    for name, results in rows.items():
        print(f"{name:<13} {_ms([r['accuracy'] for r in results]):>16} "
              f"{statistics.fmean(r['kept'] for r in results):>6.0f} "
              f"{statistics.fmean(r['kept_right'] for r in results):>11.3f}")
    judged = rows["reward model"]
    print(f"judge held-out accuracy (true vs corrupted answers): "
          f"{_ms([r['judge_accuracy'] for r in judged])}; right among the teacher's samples: "
          f"{statistics.fmean(r['sampled_right'] for r in judged):.3f}; "
          f"{statistics.fmean(r['seconds'] for r in judged):.0f} s / reward-model run")
    print("per seed:", {name: [round(r["accuracy"], 3) for r in results]
                        for name, results in rows.items()})
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
