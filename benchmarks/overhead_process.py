"""Per-step cost of `dgraph train kd` as a whole process, against a hand-written script.

overhead.py times the step inside one process; this times what a user runs: the command
line's training loop (``Trainer.run``: the step, the progress counter, the checks for
logging, evaluation, checkpoints and signals) against a plain PyTorch script doing the same
training (digits, the teacher run's weights, a student of the same shape, Adam with a cosine
schedule, 0.9 Hinton KD at T = 4 + 0.1 masked cross-entropy, batch 64, reshuffled every
epoch). Logging, evaluation and checkpoints are pushed past the end with ``--set`` (a run
still evaluates and saves once when it ends). Each side runs as a fresh process for
``--short`` and for ``--long`` steps; the per-step cost is the difference of their CPU
times (user + system of the child, one torch thread) over the difference of steps, so
start-up and the final save cancel. Pairs alternate which side goes first; the table gives
the median over ``--pairs`` pairs with min and max.

    python benchmarks/overhead_process.py                  # 5 pairs, 200 and 5,200 steps
    python benchmarks/overhead_process.py --pairs 3 --long 2200
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEVER = 100_000_000

# The same training written by hand (run as `python -c HAND STEPS`, in the folder that holds
# the teacher run). Data: dgraph's digits source, so both sides see the same split.
HAND = """
import sys
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from dgraph.components.data.digits import digits_split
from dgraph.components.models.mlp import MLP

steps = int(sys.argv[1])
torch.manual_seed(0)
x, y, _, _ = digits_split()
x, labelled = x.reshape(len(x), 64), torch.ones(len(y), dtype=torch.bool)
teacher = MLP.create(in_features=64, hidden=[256, 256], num_classes=10)
teacher.load_state_dict(load_file("runs/teacher_digits/final/teacher.safetensors"))
teacher.eval().requires_grad_(False)
student = MLP.create(in_features=64, hidden=[24], num_classes=10)
optimizer = torch.optim.Adam(student.parameters(), lr=0.003, fused=True)
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
order, position, per_epoch = None, 0, len(x) // 64  # drop_last, as the digits source
for step in range(steps):
    if order is None or position == per_epoch:
        order, position = torch.randperm(len(x)).split(64), 0
    index = order[position]
    position += 1
    xb, yb, mb = x.index_select(0, index), y.index_select(0, index), labelled.index_select(0, index)
    with torch.no_grad():
        t = teacher(x=xb)["logits"]
    s = student(x=xb)["logits"]
    kd = F.kl_div(F.log_softmax(s / 4, -1), F.log_softmax(t / 4, -1), reduction="batchmean",
                  log_target=True) * 16
    target = yb.masked_fill(~mb, -1)
    ce = F.cross_entropy(s, target, ignore_index=-1, reduction="sum") / (
        target >= 0).sum().clamp_min(1)
    (0.9 * kd + 0.1 * ce).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()
print(kd.item(), ce.item())
"""


def _dgraph(steps: int) -> list[str]:
    sets = [f"train.steps={steps}", f"train.log_every={NEVER}", f"train.eval.every={NEVER}",
            f"train.checkpoint_every={NEVER}"]
    return [sys.executable, "-m", "dgraph", "train", "kd", "--quiet", "--overwrite",
            "--out", "runs/kd_timed", *(a for s in sets for a in ("--set", s))]


def _hand(steps: int) -> list[str]:
    return [sys.executable, "-c", HAND, str(steps)]


def _cpu_seconds(command: list[str], folder: Path, env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--short", type=int, default=200)
    parser.add_argument("--long", type=int, default=5200)
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    sides = {"dgraph": _dgraph, "hand": _hand}
    with tempfile.TemporaryDirectory(prefix="dgraph_process_") as tmp:
        folder = Path(tmp)
        # The teacher run both sides read (trained once, outside the timing).
        _cpu_seconds([sys.executable, "-m", "dgraph", "train", "teacher_digits", "--quiet"],
                     folder, env)
        per_step: dict[str, list[float]] = {name: [] for name in sides}
        for pair in range(args.pairs):
            order = list(sides) if pair % 2 == 0 else list(sides)[::-1]
            for name in order:
                make = sides[name]
                short = _cpu_seconds(make(args.short), folder, env)
                long = _cpu_seconds(make(args.long), folder, env)
                per_step[name].append((long - short) / (args.long - args.short))
            print(f"pair {pair + 1}: dgraph {per_step['dgraph'][-1] * 1e3:.3f} ms/step, hand "
                  f"{per_step['hand'][-1] * 1e3:.3f} ms/step", flush=True)
    ratios = [d / h for d, h in zip(per_step["dgraph"], per_step["hand"], strict=True)]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{os.getloadavg()[0]:.2f}; steps {args.short} and {args.long}, {args.pairs} pairs")
    print("| side | ms/step median (min-max) |\n|---|---|")
    for name, values in per_step.items():
        print(f"| {name} | {statistics.median(values) * 1e3:.3f} "
              f"({min(values) * 1e3:.3f}-{max(values) * 1e3:.3f}) |")
    print(f"| dgraph / hand | {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
