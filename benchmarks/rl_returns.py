"""Returns of the RL zoo on CartPole-v1 (CPU): the PPO teacher and its distilled students.

For each seed, `rl_teacher_cartpole` (PPO) is trained, then every student spec that distils it
(`rl_distill_cartpole`: DAgger + policy distillation into a smaller MLP; with
`--privileged`, also `rl_privileged_cartpole`: the student sees no velocities, stacked frames)
with the teacher run beside it. Each row: the final evaluation's mean and worst return over
the spec's 10 seeded evaluation episodes, the env steps and wall time at which the evaluation
mean first reached `--goal`, the total env steps and wall time, and the policy's size.

With `--rnd`, `rl_rnd` (PPO + RND on MountainCar-v0) and the same spec with
`intrinsic_coef=0` (PPO alone, the same budget) are compared instead: the fraction of
evaluation episodes that reach the flag, the training episodes that reached it and the env
steps of the first evaluation after the first one did, and RND's seen/unseen error ratio.

    python benchmarks/rl_returns.py                 # 3 seeds, the zoo's step counts
    python benchmarks/rl_returns.py --quick         # 1 seed, a few steps (smoke test)
    OMP_NUM_THREADS=1 python benchmarks/rl_returns.py --seeds 0,1,2 --privileged
    OMP_NUM_THREADS=1 python benchmarks/rl_returns.py --seeds 0,1,2 --rnd
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from dgraph.api import train

STUDENTS = ["rl_distill_cartpole"]


def _first_reaching(run: Path, goal: float) -> tuple[float | None, float | None]:
    """(env steps, seconds since the run started) at the first evaluation whose mean return
    reached ``goal``."""
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        mean = row.get("eval/episode_return/mean")
        if mean is not None and mean >= goal:
            return row.get("eval/episode_return/env_steps"), row.get("time")
    return None, None


def _params(run: Path, node: str) -> int:
    return sum(t.numel() for t in load_file(str(run / "final" / f"{node}.safetensors")).values())


def _run(name: str, out: Path, overrides: list[str], node: str, goal: float
         ) -> dict[str, object]:
    tick = time.perf_counter()
    summary = train(name, out=out, overrides=overrides, progress=False, log=lambda _m: None)
    wall = time.perf_counter() - tick
    reach_env, reach_time = _first_reaching(out, goal)
    return {"spec": name, "mean": summary["episode_return/mean"],
            "min": summary["episode_return/min"],
            "env_steps": summary.get("episode_return/env_steps"),
            "wall_s": wall, "reach_env_steps": reach_env,
            "reach_wall_s": reach_time,
            "params": _params(out, node)}


def _rnd(seeds: list[int], root: Path, few: list[str]) -> int:
    rows = []
    for seed in seeds:
        for label, extra in (("PPO + RND", []), ("PPO alone",
                                                 ["nodes.rollout.params.intrinsic_coef=0"])):
            out = root / f"seed{seed}" / ("rnd" if not extra else "ppo")
            tick = time.perf_counter()
            summary = train("rl_rnd", out=out, overrides=[f"train.seed={seed}", *few, *extra],
                            progress=False, log=lambda _m: None)
            first = None
            for line in (out / "metrics.jsonl").read_text().splitlines():
                row = json.loads(line)
                if row.get("eval/episode_return/env_terminations", 0) > 0:
                    first = row["eval/episode_return/env_steps"]
                    break
            rows.append({"seed": seed, "run": label,
                         "eval_goal_rate": summary["episode_return/terminated"],
                         "mean": summary["episode_return/mean"],
                         "train_goals": summary["episode_return/env_terminations"],
                         "first_goal_by_env_steps": first,
                         "env_steps": summary["episode_return/env_steps"],
                         "novelty_ratio": summary["novelty/ratio"],
                         "wall_s": time.perf_counter() - tick})
            print(json.dumps(rows[-1]), flush=True)
    print()
    print("| run | seed | eval episodes reaching the flag | return mean | training episodes "
          "reaching it | first reached by (env steps) | env steps | RND unseen/seen | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['run']} | {r['seed']} | {r['eval_goal_rate']:.0%} | {r['mean']:.1f} | "
              f"{r['train_goals']:.0f} | {r['first_goal_by_env_steps'] or 'never'} | "
              f"{r['env_steps']:.0f} | {r['novelty_ratio']:.1f} | {r['wall_s']:.0f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--goal", type=float, default=475.0,
                        help="the mean return counted as solved (CartPole-v1: 475)")
    parser.add_argument("--privileged", action="store_true",
                        help="also rl_privileged_cartpole")
    parser.add_argument("--rnd", action="store_true",
                        help="rl_rnd against PPO alone on MountainCar-v0 instead")
    parser.add_argument("--quick", action="store_true", help="1 seed, a few steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run (repeatable)")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    few = (["train.steps=40", "train.eval.every=20"] if args.quick else []) + args.set
    students = STUDENTS + (["rl_privileged_cartpole"] if args.privileged else [])
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        if args.rnd:
            return _rnd(seeds, root, few)
        for seed in seeds:
            folder = root / f"seed{seed}"
            overrides = [f"train.seed={seed}", *few]
            rows.append({"seed": seed, **_run("rl_teacher_cartpole",
                                              folder / "rl_teacher_cartpole", overrides,
                                              "teacher", args.goal)})
            for name in students:
                rows.append({"seed": seed, **_run(name, folder / name, overrides, "student",
                                                  args.goal)})
            for row in rows[-1 - len(students):]:
                print(json.dumps(row), flush=True)
    print()
    print(f"| spec | return mean | worst episode | env steps to mean >= {args.goal:g} | "
          f"wall s to it | env steps | wall s | parameters |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ["rl_teacher_cartpole", *students]:
        mine = [r for r in rows if r["spec"] == name]

        def col(key: str, fmt: str, mine=mine) -> str:
            values = [float(r[key]) for r in mine if r[key] is not None]  # type: ignore[arg-type]
            if not values:
                return "-"
            missing = len(mine) - len(values)
            text = (fmt.format(statistics.mean(values)) if len(values) == 1 else
                    f"{fmt.format(statistics.mean(values))} ± "
                    f"{fmt.format(statistics.stdev(values))}")
            return text + (f" ({missing} of {len(mine)} never)" if missing else "")

        worst = min(float(r["min"]) for r in mine)  # type: ignore[arg-type]
        print(f"| {name} | {col('mean', '{:.1f}')} | {worst:.0f} (over seeds) | "
              f"{col('reach_env_steps', '{:.0f}')} | {col('reach_wall_s', '{:.1f}')} | "
              f"{col('env_steps', '{:.0f}')} | {col('wall_s', '{:.1f}')} | "
              f"{mine[0]['params']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
