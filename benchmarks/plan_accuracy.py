"""How close ``dgraph plan`` comes to a real training step on the CPU.

For each zoo spec: the plan (meta device, fp32, one process) against a real step of the same
spec, set up by the runtime exactly as ``dgraph train`` does it (``RunSetup``, then
``StepRunner.run_update`` for every update of the first stage), on the CPU.

What is measured, and how:

- **Peak memory.** After one warm-up step (which creates the optimizer state), a second step
  runs under ``torch.profiler`` with ``profile_memory=True``: every CPU allocation and free
  is an event carrying the allocator's running total of bytes allocated since profiling
  began. The step's own peak is the largest of those totals; what was already held before
  it (parameters, buffers, optimizer state, the loaders' training splits, teacher caches) is
  counted exactly from the live tensors, each storage once. Measured peak = held + step peak.
  This is the allocator's view of tensor memory (not RSS, which the allocator's caching and
  the Python heap blur); it is what a GPU's ``max_memory_allocated`` reports there.
- **FLOPs.** ``FlopCounterMode`` around the real step (forward and backward; the optimizer
  adds none it counts) against the plan's per-step FLOPs. That step runs with the math
  attention kernel: FlopCounterMode has no formula for the backward of the CPU flash kernel
  that ``sdpa`` picks by default, and would miss those FLOPs.

What the plan cannot see on the meta device, and where the ratios below come from: Hugging
Face models run eager attention there (the dry run's choice: no data-dependent mask checks),
keeping the attention probabilities for backward, while training uses ``sdpa`` (flash
attention on the CPU without a mask, which keeps O(T) per head), so the plan over-predicts
the step's attention memory. Convolutions on the CPU (oneDNN) copy their operands into
blocked layouts while they run: the plan adds those copies on the CPU (input and weight in
forward, also the output's gradient in backward), which this script measured.

Initial weights that specs load from other runs (``init: {run: ...}``) are not loaded: the
values of the weights change neither memory nor FLOPs.

    OMP_NUM_THREADS=1 python benchmarks/plan_accuracy.py            # the default specs
    OMP_NUM_THREADS=1 python benchmarks/plan_accuracy.py kd llm_kd  # chosen ones
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import dgraph.runtime.setup as runtime_setup
from dgraph.compiler.dryrun import dry_run
from dgraph.compiler.plan import format_bytes, plan_graph
from dgraph.graph import validate
from dgraph.runtime.distributed import World
from dgraph.runtime.step import StepRunner
from dgraph.spec import load_spec

DEFAULT = ["kd", "fitnet", "teacher_digits_cnn", "dd_dm", "consistency_toy", "dmd2_toy",
           "embed_kd", "llm_kd", "llm_hidden"]


def _held(setup) -> int:
    """Bytes of every tensor the run holds between steps, each storage once."""
    seen: dict[int, int] = {}

    def add(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        seen.setdefault(storage.data_ptr(), storage.nbytes())

    for module in setup.instances.unique_modules().values():
        for t in (*module.parameters(), *module.buffers()):
            add(t)
    for optimizer in setup.optimizers.values():
        for state in optimizer.state.values():
            for t in state.values():
                if isinstance(t, torch.Tensor):
                    add(t)
    for loader in setup.loaders.values():
        for t in loader.tensors.values():
            add(t)
    for cache in setup.program.caches.values():
        for t in cache.values():
            add(t)
    return sum(size for ptr, size in seen.items() if ptr)


def _step(setup, runner, step: int) -> None:
    stage = setup.stages[0]
    shared: dict = {}
    for name in stage.updates:
        runner.run_update(name, stage, step, shared)


def measure(name: str) -> dict:
    overrides = ["train.device=cpu", "train.precision=fp32"]
    spec = load_spec(name, overrides)
    graph, _ = validate(spec)
    dry_run(graph)
    plan = plan_graph(graph)
    spec = load_spec(name, overrides)
    graph, _ = validate(spec)
    runtime_setup.load_initial_weights = lambda *args, **kwargs: None  # values do not matter
    with tempfile.TemporaryDirectory() as run_dir:
        setup = runtime_setup.RunSetup(graph, Path(run_dir), world=World())
        runner = StepRunner(setup)
        _step(setup, runner, 0)  # warm-up: the optimizer state appears
        held = _held(setup)
        trace = Path(run_dir) / "trace.json"
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            _step(setup, runner, 1)
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
        totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
        step_peak = max([0, *totals])
        counter = FlopCounterMode(display=False)
        # The math attention kernel: FlopCounterMode has no formula for the CPU flash
        # kernel's backward (it would count no attention FLOPs in backward).
        with counter, sdpa_kernel([SDPBackend.MATH]):
            _step(setup, runner, 2)
        flops = counter.get_total_flops()
    stage_updates = set(setup.stages[0].updates)
    predicted_flops = sum((u.flops_forward + u.flops_backward)
                          * round(u.runs_per_step * setup.spec.updates[u.name].every)
                          for u in plan.updates if u.name in stage_updates)
    predicted = plan.totals()["peak"]
    measured = held + step_peak
    return {"spec": name, "predicted_peak": predicted, "measured_peak": measured,
            "held": held, "measured_step_peak": step_peak,
            "predicted_step_peak": plan.totals()["step_peak"],
            "memory_ratio": predicted / measured,
            "predicted_flops": predicted_flops, "measured_flops": flops,
            "flops_ratio": predicted_flops / flops if flops else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=DEFAULT)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = []
    print("| spec | predicted peak | measured peak | ratio | step peak (pred / meas) | "
          "predicted FLOPs | measured FLOPs | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.specs:
        row = measure(name)
        rows.append(row)
        print(f"| {name} | {format_bytes(row['predicted_peak'])} | "
              f"{format_bytes(row['measured_peak'])} | {row['memory_ratio']:.3f} | "
              f"{format_bytes(row['predicted_step_peak'])} / "
              f"{format_bytes(row['measured_step_peak'])} | "
              f"{row['predicted_flops']:.4g} | {row['measured_flops']:.4g} | "
              f"{row['flops_ratio']:.3f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
