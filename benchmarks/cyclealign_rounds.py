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
import sys
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
    from blackbox_kd import compare

    from dgraph.registry import load_plugins

    load_plugins()
    compare(ARMS, seeds=args.seeds, steps=args.steps, out=args.out, overwrite=True)

if __name__ == "__main__":
    main()
