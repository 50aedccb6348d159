"""CycleAlign-style rounds (the judge of the ranking-agreement filter is the student frozen at
the start of each round) vs blackbox_kd's live-student filter vs no filter.

Per seed, the same 1-layer GPT-2 student, the same steps, on the shipped black-box teacher
file; every final student is measured on the held-out dialogue responses and corpus windows
(benchmarks/blackbox_kd.py's sets). Prints a markdown table (mean ± std over the seeds).

    python benchmarks/cyclealign_rounds.py [--seeds 0 1 2] [--steps 400] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ARMS = {"cyclealign_rounds (judge frozen per 100-step round)": ("cyclealign_rounds", []),
        "blackbox_kd (live student judge)": ("blackbox_kd", []),
        "blackbox_kd, no filter": ("blackbox_kd", ["nodes.agree.params.threshold=-1.0"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cyclealign"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from blackbox_kd import held_out_sets, perplexity

    from dgraph.api import train
    from dgraph.registry import load_plugins

    load_plugins()
    sets = held_out_sets()
    quiet = {"progress": False, "log": lambda *_: None}
    table: dict[str, dict[str, list[float]]] = {arm: {} for arm in ARMS}
    started = time.perf_counter()
    for seed in args.seeds:
        for index, (arm, (spec, extra)) in enumerate(ARMS.items()):
            run = args.out / f"arm{index}_seed{seed}"
            train(spec, out=run, overwrite=True, overrides=[
                f"train.seed={seed}", f"train.steps={args.steps}",
                f"train.eval.every={args.steps}", *extra], **quiet)
            for name, split in sets.items():
                table[arm].setdefault(name, []).append(
                    perplexity(run / "final" / "student.safetensors", split))
            print(f"seed {seed} {arm}: " + ", ".join(
                f"{n} {v[-1]:.2f}" for n, v in table[arm].items()), flush=True)
    print(f"\n{len(args.seeds)} seed(s), {args.steps} steps, "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| student | held-out PPL, dialogue responses | held-out PPL, corpus windows |")
    print("| --- | --- | --- |")
    for arm, values in table.items():
        cells = []
        for name in sets:
            v = values[name]
            cells.append(f"{v[0]:.2f}" if len(v) == 1
                         else f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}")
        print(f"| {arm} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
