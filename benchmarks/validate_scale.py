"""Static validation at scale: load + validate a generated spec of ~2,000 nodes.

The spec is a ladder on the digits data: ``m0 -> p0 -> m1 -> p1 -> ...`` where each ``m<i>``
is an ``mlp`` model and each ``p<i>`` a ``linear_projector`` mapping ``m<i>.features`` onto the
next model's input; every model has a ``cross_entropy`` loss on its logits, and the remaining
nodes are ``feature_mse`` / ``mse`` hint losses between projectors and the next model's
features. One update trains every model and projector on every loss. Nothing is built: this
times only ``dgraph.spec.load_spec`` (YAML + pydantic) and ``dgraph.graph.validate`` (graph
build + every static check), median over several runs. Goal: under 1 s for 2,000 nodes.

    python benchmarks/validate_scale.py                # 2,000 nodes, 5 runs
    python benchmarks/validate_scale.py --profile      # + cProfile of one validate
    python benchmarks/validate_scale.py --quick        # 200 nodes, 2 runs (smoke test)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path


def make_spec(nodes: int, width: int = 16) -> tuple[str, dict[str, int]]:
    """YAML text of a valid spec with exactly ``nodes`` nodes (at least 8)."""
    if nodes < 8:
        raise ValueError("--nodes must be at least 8")
    models = max(2, nodes // 4)
    projectors = models - 1
    ce = models
    hints = nodes - 1 - models - projectors - ce
    lines = [
        "dgraph: 1",
        f"name: scale_{nodes}",
        "nodes:",
        "  data: {kind: data, type: digits, params: {batch_size: 32}}",
    ]
    for i in range(models):
        src = "data.x" if i == 0 else f"p{i - 1}.y"
        fan_in = 64 if i == 0 else width
        lines.append(
            f"  m{i}: {{kind: model, type: mlp, params: {{in_features: {fan_in}, "
            f"hidden: [{width}], num_classes: 10}}, inputs: {{x: {src}}}}}")
    for i in range(projectors):
        lines.append(
            f"  p{i}: {{kind: projector, type: linear_projector, params: {{in_features: "
            f"{width}, out_features: {width}}}, inputs: {{x: m{i}.features}}}}")
    losses = []
    for i in range(ce):
        lines.append(
            f"  ce{i}: {{kind: loss, type: cross_entropy, "
            f"inputs: {{logits: m{i}.logits, target: data.y}}}}")
        losses.append(f"ce{i}")
    for j in range(hints):
        i = j % projectors
        if j % 2 == 0:
            lines.append(
                f"  hint{j}: {{kind: loss, type: feature_mse, "
                f"inputs: {{student: p{i}.y, teacher: m{i + 1}.features}}}}")
        else:
            lines.append(
                f"  hint{j}: {{kind: loss, type: mse, "
                f"inputs: {{prediction: p{i}.y, target: m{i + 1}.features}}}}")
        losses.append(f"hint{j}")
    params = [f"m{i}" for i in range(models)] + [f"p{i}" for i in range(projectors)]
    lines += [
        "updates:",
        "  main:",
        "    optimizer: {type: adam, lr: 0.001}",
        "    params: [" + ", ".join(params) + "]",
        "    objective: {" + ", ".join(f"{name}: 1.0" for name in losses) + "}",
        "train: {steps: 10, seed: 0, device: cpu}",
    ]
    counts = {"data": 1, "mlp": models, "linear_projector": projectors, "cross_entropy": ce,
              "feature_mse/mse": hints}
    return "\n".join(lines) + "\n", counts


def time_once(path: Path) -> tuple[float, float, int, int]:
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    t0 = time.perf_counter()
    spec = load_spec(path)
    t1 = time.perf_counter()
    graph, _warnings = validate(spec)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(graph.nodes), len(graph.edges)


def profile_once(path: Path, top: int) -> str:
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    spec = load_spec(path)
    profiler = cProfile.Profile()
    profiler.enable()
    validate(spec)
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return stream.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000, help="nodes in the generated spec")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--goal", type=float, default=1.0, help="goal for load+validate (s)")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="stop starting new runs once this many seconds are spent "
                        "(at least one run is always done)")
    parser.add_argument("--profile", action="store_true", help="cProfile one validate()")
    parser.add_argument("--top", type=int, default=25, help="rows of the profile to print")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                        help="accepted for symmetry with the other scripts; validation is "
                        "static and never touches a device")
    parser.add_argument("--quick", action="store_true", help="200 nodes, 2 runs (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.runs = min(args.nodes, 200), 2

    import dgraph.registry

    dgraph.registry.load_plugins()  # component registration is a one-off, not timed
    text, counts = make_spec(args.nodes)
    with tempfile.TemporaryDirectory(prefix="dgraph_bench_") as tmp:
        path = Path(tmp) / f"scale_{args.nodes}.yaml"
        path.write_text(text)
        print(f"spec: {args.nodes} nodes (" + ", ".join(f"{k} {v}" for k, v in counts.items())
              + f"), {len(text.splitlines())} YAML lines")
        warm_text, _ = make_spec(60)
        warm = Path(tmp) / "warm_up.yaml"
        warm.write_text(warm_text)
        time_once(warm)  # warm-up on a small spec: imports, pydantic schemas, plugins
        loads, checks = [], []
        started = time.perf_counter()
        for run in range(args.runs):
            spent = time.perf_counter() - started
            if run and spent + (loads[-1] + checks[-1]) > args.budget:
                print(f"  (stopping after {run} runs: the --budget of {args.budget:g} s would "
                      "be exceeded)")
                break
            load_s, validate_s, n_nodes, n_edges = time_once(path)
            loads.append(load_s)
            checks.append(validate_s)
            print(f"  run {run + 1}: load {load_s * 1e3:8.1f} ms   validate "
                  f"{validate_s * 1e3:8.1f} ms   ({n_nodes} nodes, {n_edges} edges)")
        load_med, val_med = statistics.median(loads), statistics.median(checks)
        total = statistics.median(a + b for a, b in zip(loads, checks, strict=True))
        print(f"median over {len(loads)} runs: load_spec {load_med * 1e3:.1f} ms, validate "
              f"{val_med * 1e3:.1f} ms, total {total * 1e3:.1f} ms (goal < {args.goal:g} s)")
        verdict = "OK" if total < args.goal else "SLOWER THAN GOAL"
        print(f"ratio total/goal: {total / args.goal:.3f} ({verdict})")
        if args.profile:
            print(profile_once(path, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
