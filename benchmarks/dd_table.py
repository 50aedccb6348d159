"""The dataset-distillation table of issue 12: every method against random real images (CPU).

For each images-per-class setting (1 and 10) and each seed, every method's spec distils a set
(``train.seed`` = seed) and its own evaluation (the ``dd_evaluator`` nodes ``synthetic`` and
``random_real``, evaluation seed = seed, 300 Adam steps) reports the held-out accuracy of a
fresh MLP (64-128-10) and a fresh ConvNet (the papers': width 128, instance norm, 2 blocks)
trained only on the set, and on as many random real training images per class (the row
"random real": the same subset for every method of a seed). Printed as a markdown table:
mean ± std over seeds, with

* distillation wall time: the run's wall time (``dgraph.api.train``: validation, dry run,
  building, training, saving; imports and the digits loaded before) minus its evaluations
  (the runtime's ``evaluate`` calls, timed here), so the table compares the methods, not the
  evaluator;
* peak memory: the peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of
  the process that ran the distillation (each run is its own child process), read when the
  first evaluation starts, so the distillation steps before it and not the evaluator's
  networks; in brackets its growth over the resident size after the imports, before the run;
  then the peak of the whole run, evaluations included. Not tracemalloc: it sees only
  Python's allocations, not torch's tensors.

What the methods share is trained once, before them, with seed 0, and reported on its own
line: the expert trajectories of ``dd_mtt`` (``dd_mtt_experts``; ``dd_committee``'s
committee) and the CNN teacher of ``dd_sre2l`` and ``dd_quantization``
(``teacher_digits_cnn``). ``dd_quantization`` and ``dd_committee`` are included when their
spec files exist. The per-method settings for 1 and 10 images per class are in ``SETTINGS``;
``dd_sre2l+real`` is ``dd_sre2l`` recovering from real images instead of noise.

    python benchmarks/dd_table.py                      # 3 seeds, 1 and 10 images per class
    python benchmarks/dd_table.py --seeds 0 --ipc 1    # one seed, one setting
    python benchmarks/dd_table.py --quick              # smoke run: 1 seed, a few steps
    OMP_NUM_THREADS=1 python benchmarks/dd_table.py --methods dd_dm,dd_gm --out runs/dd_table

Not a test: a full run takes about an hour on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SPECS = Path(__file__).resolve().parent.parent / "specs"
METHODS = ["dd_dm", "dd_gm", "dd_mtt", "dd_sre2l", "dd_sre2l+real", "dd_quantization",
           "dd_committee"]
# A variant "spec+name" is the spec with its own settings (SETTINGS["spec+name"]).
# What the methods read from other runs: trained once (seed 0) beside the method runs.
PREREQUISITES = {"dd_mtt": ["dd_mtt_experts"], "dd_committee": ["dd_mtt_experts"],
                 "dd_sre2l": ["teacher_digits_cnn"], "dd_quantization": ["teacher_digits_cnn"],
                 "dd_sre2l+real": ["teacher_digits_cnn"]}
# --set overrides per method and images per class (on top of the spec's own values).
SETTINGS: dict[str, dict[int, list[str]]] = {
    "dd_dm": {1: [], 10: []},
    # Zhao et al. 2021: at 1 image per class the network is re-drawn every outer step.
    "dd_gm": {1: ["nodes.net.reinit_every=1"], 10: []},
    "dd_mtt": {1: [], 10: []},
    "dd_sre2l": {1: [], 10: []},
    # SRe2L's recover from random real images instead of noise (and a smaller step).
    "dd_sre2l+real": {k: ["nodes.syn.params.init=real", "updates.main.optimizer.lr=0.01"]
                      for k in (1, 10)},
    "dd_quantization": {1: [], 10: []},
    "dd_committee": {1: [], 10: []},
}
_EVAL_NODES = ("synthetic", "random_real")
_MODELS = ("mlp", "convnet")
# --quick: a smoke run of the whole pipeline, numbers meaningless.
_QUICK = ["train.steps=3", "train.eval.every=3", "train.checkpoint_every=3",
          "train.log_every=1"]
_QUICK_EVAL = {"mlp": {"hidden": [32]}, "convnet": {"width": 8, "depth": 2}}


def _spec(method: str) -> str:
    return method.split("+")[0]


def _rss_bytes() -> int:
    """The resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _child(job: dict) -> dict:
    """Run one spec in this (child) process; wall time, evaluation time and memory."""
    import torch._dynamo  # noqa: F401 - imported by the first optimizer: not the method's time
    from dgraph.components.data.digits import digits_split

    import dgraph.runtime.train as runtime_train
    from dgraph.api import train

    digits_split()  # the digits (and sklearn) loaded once before the clock starts

    spent = [0.0]
    first_eval_peak: list[int] = []
    original = runtime_train.evaluate

    def timed(*args, **kwargs):
        if not first_eval_peak:  # the peak of the distillation steps before any evaluation
            first_eval_peak.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    runtime_train.evaluate = timed
    before = _rss_bytes()
    start = time.perf_counter()
    summary = train(job["spec"], out=job["out"], overrides=job["overrides"], overwrite=True,
                    progress=False, log=lambda _m: None)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"summary": summary, "wall_s": wall, "eval_s": spent[0], "peak_rss": peak,
            "distill_peak_rss": (first_eval_peak or [peak])[0], "start_rss": before}


def _run(spec: str, out: Path, overrides: list[str]) -> dict:
    """``spec`` trained in a child process (so its peak memory is its own)."""
    job = json.dumps({"spec": spec, "out": str(out), "overrides": overrides})
    done = subprocess.run([sys.executable, __file__, "--child", job], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{spec} ({' '.join(overrides)}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _mib(values: list[float]) -> str:
    return f"{max(values) / 2**20:.0f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ipc", default="1,10", help="images per class settings")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="methods (missing spec files are skipped)")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--eval-steps", type=int, default=300,
                        help="Adam steps of each evaluation network")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="keep the runs here (default: temporary)")
    parser.add_argument("--json", default=None, help="also write every run's numbers here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 seed, 3 steps, tiny evaluation networks")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return 0

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    ipcs = [int(s) for s in args.ipc.split(",") if s.strip()]
    methods = [m for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    skipped = [m for m in methods if not (_SPECS / f"{_spec(m)}.yaml").is_file()]
    methods = [m for m in methods if m not in skipped]
    if args.quick:
        seeds = seeds[:1]
    common = [f"train.device={args.device}"]
    if args.steps is not None:
        common.append(f"train.steps={args.steps}")
    if args.quick:
        common += _QUICK
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        records: list[dict] = []
        shared: dict[str, dict] = {}
        for name in dict.fromkeys(p for m in methods for p in PREREQUISITES.get(m, [])):
            # (full runs even with --quick: dd_mtt needs the experts' 16 epochs; ~20 s each)
            shared[name] = _run(name, root / name, [f"train.device={args.device}"])
            print(f"{name} (shared, seed 0): {shared[name]['wall_s']:.0f} s, peak RSS "
                  f"{shared[name]['peak_rss'] / 2**20:.0f} MiB", flush=True)
        for ipc in ipcs:
            for seed in seeds:
                for method in methods:
                    overrides = [*common, f"train.seed={seed}",
                                 f"nodes.syn.params.images_per_class={ipc}",
                                 *SETTINGS[method].get(ipc, [])]
                    for node in _EVAL_NODES:
                        overrides += [f"nodes.{node}.params.seeds=[{seed}]",
                                      f"nodes.{node}.params.steps={args.eval_steps}"]
                        if args.quick:
                            overrides += [f"nodes.{node}.params.models="
                                          f"{json.dumps(_QUICK_EVAL)}",
                                          f"nodes.{node}.params.steps=10"]
                    result = _run(_spec(method),
                                  root / f"{method.replace('+', '_')}_ipc{ipc}_seed{seed}",
                                  overrides)
                    result.update(method=method, ipc=ipc, seed=seed)
                    records.append(result)
                    s = result["summary"]
                    print(f"ipc {ipc} seed {seed} {method}: "
                          + ", ".join(f"{node} {m} {s.get(f'{node}/accuracy@{m}', -1):.3f}"
                                      for node in _EVAL_NODES for m in _MODELS)
                          + f" ({result['wall_s'] - result['eval_s']:.0f} s distillation, "
                          f"{result['eval_s']:.0f} s evaluation)", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"shared": shared, "runs": records},
                                                  indent=1))
    print()
    print(_table(records, methods, ipcs, seeds, shared))
    if skipped:
        print(f"\nskipped (no spec file): {', '.join(skipped)}")
    return 0


def _table(records: list[dict], methods: list[str], ipcs: list[int], seeds: list[int],
           shared: dict[str, dict]) -> str:
    lines = [f"seeds {', '.join(map(str, seeds))}; accuracy on the 360 held-out digits, "
             "mean ± std over seeds; time and memory: see the script's docstring", "",
             "| set | images/class | MLP | ConvNet | distillation wall time (s) | "
             "peak RSS MiB: distillation (growth) / whole run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for ipc in ipcs:
        runs = [r for r in records if r["ipc"] == ipc]
        if not runs:
            continue
        first = [r for r in runs if r["method"] == runs[0]["method"]]
        real = {m: [r["summary"].get(f"random_real/accuracy@{m}") for r in first]
                for m in _MODELS}
        lines.append(f"| random real | {ipc} | {_fmt([v for v in real['mlp'] if v is not None])}"
                     f" | {_fmt([v for v in real['convnet'] if v is not None])} | - | - |")
        for method in methods:
            mine = [r for r in runs if r["method"] == method]
            if not mine:
                continue
            acc = {m: [r["summary"][f"synthetic/accuracy@{m}"] for r in mine
                       if f"synthetic/accuracy@{m}" in r["summary"]] for m in _MODELS}
            wall = [r["wall_s"] - r["eval_s"] for r in mine]
            growth = max(r["distill_peak_rss"] - r["start_rss"] for r in mine) / 2**20
            lines.append(f"| `{method}` | {ipc} | {_fmt(acc['mlp'])} | {_fmt(acc['convnet'])} "
                         f"| {_fmt(wall, 1)} | {_mib([r['distill_peak_rss'] for r in mine])} "
                         f"(+{growth:.0f}) / {_mib([r['peak_rss'] for r in mine])} |")
    for name, result in shared.items():
        lines.append(f"\nshared, trained once (seed 0): `{name}` {result['wall_s']:.1f} s, "
                     f"peak RSS {result['peak_rss'] / 2**20:.0f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
