"""Returns of the RL zoo on CartPole-v1 (CPU): the PPO teacher and its distilled students.

For each seed, `rl_teacher_cartpole` (PPO) is trained, then every student spec that distils it
(`rl_distill_cartpole`: DAgger + policy distillation into a smaller MLP; with
`--privileged`, also `rl_privileged_cartpole`: the student sees no velocities, stacked frames)
with the teacher run beside it, and `rl_qdagger_cartpole` (QDagger: a DQN student on a replay
buffer with a decaying distillation term); with `--dqn`, also that spec without its teacher
(distillation weight 0, beta 0: DQN alone on the same budget). Each row: the final
evaluation's mean and worst return over the spec's 10 seeded evaluation episodes, the env
steps and wall time at which the evaluation mean first reached `--goal`, the total env steps
and wall time, and the policy's size.

With `--rnd`, `rl_rnd` (PPO + RND on MountainCar-v0) and the same spec with
`intrinsic_coef=0` (PPO alone, the same budget) are compared instead: the fraction of
evaluation episodes that reach the flag, the training episodes that reached it and the env
steps of the first evaluation after the first one did, and RND's seen/unseen error ratio;
"PPO + RND, two heads" adds an intrinsic critic (`mlp_value`, separate non-episodic intrinsic
GAE, advantages combined with the coefficients; a spec extending rl_rnd, written beside the
runs).

    python benchmarks/rl_returns.py                 # 3 seeds, the zoo's step counts
    python benchmarks/rl_returns.py --quick         # 1 seed, a few steps (smoke test)
    OMP_NUM_THREADS=1 python benchmarks/rl_returns.py --seeds 0,1,2 --privileged
    OMP_NUM_THREADS=1 python benchmarks/rl_returns.py --seeds 0,1,2 --rnd
    OMP_NUM_THREADS=1 python benchmarks/rl_returns.py --seeds 0 --dqn
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

STUDENTS = ["rl_distill_cartpole", "rl_qdagger_cartpole"]
# QDagger's spec without its teacher: DQN alone, the same budget and warm-up size.
DQN_ALONE = ["updates.main.objective.distill=0", "nodes.replay.params.beta=0",
             "nodes.replay.params.random_warmup=true"]
DQN_LABEL = "DQN alone (rl_qdagger_cartpole, no teacher)"
# rl_rnd with RND's intrinsic value head (Burda et al. 2018's two critics).
TWO_HEADS = """dgraph: 1
name: rl_rnd_two_heads
extends: rl_rnd
nodes:
  rollout: {params: {intrinsic_critic: int_critic}}
  int_critic:
    kind: model
    type: mlp_value
    params: {obs_dim: 2, hidden: [64, 64]}
    inputs: {obs: rollout.obs}
  int_value:
    kind: loss
    type: value_loss
    inputs: {value: int_critic.value, returns: rollout.int_returns}
updates:
  critic:   # its own optimizer: the policy's update clips its gradient norm alone
    optimizer: {type: adam, lr: 0.0003, eps: 1.0e-5}
    params: [int_critic]
    objective: {int_value: 0.5}
    clip_grad_norm: 0.5
"""


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
    two_heads = root / "rl_rnd_two_heads.yaml"
    root.mkdir(parents=True, exist_ok=True)
    two_heads.write_text(TWO_HEADS)
    variants = (("PPO + RND", "rl_rnd", "rnd", []),
                ("PPO + RND, two heads", str(two_heads), "rnd2", []),
                ("PPO alone", "rl_rnd", "ppo", ["nodes.rollout.params.intrinsic_coef=0"]))
    for seed in seeds:
        for label, spec, folder, extra in variants:
            out = root / f"seed{seed}" / folder
            tick = time.perf_counter()
            summary = train(spec, out=out, overrides=[f"train.seed={seed}", *few, *extra],
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
    parser.add_argument("--dqn", action="store_true",
                        help="also rl_qdagger_cartpole without its teacher (DQN alone)")
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
            if args.dqn:
                row = _run("rl_qdagger_cartpole", folder / "dqn_alone",
                           [*overrides, *DQN_ALONE], "student", args.goal)
                rows.append({"seed": seed, **row, "spec": DQN_LABEL})
            for row in rows[-1 - len(students) - args.dqn:]:
                print(json.dumps(row), flush=True)
    print()
    print(f"| spec | return mean | worst episode | env steps to mean >= {args.goal:g} | "
          f"wall s to it | env steps | wall s | parameters |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ["rl_teacher_cartpole", *students, *([DQN_LABEL] if args.dqn else [])]:
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
