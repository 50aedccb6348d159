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
    python benchmarks/validate_scale.py --sizes 2000,100000,500000   # + peak RSS per size
    python benchmarks/validate_scale.py --dense json --sizes 100000  # short names, one line

``--sizes`` runs each size once in a fresh process and reports its peak RSS (and the growth
over a warmed-up process, per node), so that memory can be checked to grow linearly with the
spec and stay a small multiple of the file.
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


def _short_name(i: int) -> str:
    """``a``, ``b``, ... ``z``, ``aa``, ...: a letter, then base-36 digits (a valid node name).

    The first letter is never t, f or n, so that no name reads as true, false or null."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    letters = "abcdeghijklmopqrsuvwxyz"
    head, i = divmod(i, len(letters))
    text = letters[i]
    while head:
        head, d = divmod(head - 1, 36)
        text += digits[d]
    return text


def make_dense_spec(nodes: int, fmt: str = "yaml", chain: int = 7) -> tuple[str, dict[str, int]]:
    """The densest valid spec of ``nodes`` nodes: short names, one line (JSON or YAML flow).

    One ``digits`` data node ``D`` and one ``mlp`` model ``M`` feed chains of ``chain``
    ``detach`` ops, each ending in an ``mse`` loss against ``M.logits``; one update trains
    ``M`` on every loss. About 55 bytes a node in YAML flow style, 62 in JSON.
    """
    if nodes < chain + 3:
        raise ValueError(f"--nodes must be at least {chain + 3}")
    body = nodes - 2
    blocks, rest = divmod(body, chain + 1)
    json_ = fmt == "json"

    def q(text: str) -> str:
        return f'"{text}"' if json_ else text

    sep = "," if json_ else ", "
    colon = ":" if json_ else ": "

    def mapping(items: list[tuple[str, str]]) -> str:
        return "{" + sep.join(f"{q(k)}{colon}{v}" for k, v in items) + "}"

    entries = [
        (q("D"), mapping([("kind", q("data")), ("type", q("digits"))])),
        (q("M"), mapping([("kind", q("model")), ("type", q("mlp")), ("params", mapping(
            [("in_features", "64"), ("hidden", "[16]"), ("num_classes", "10")])),
            ("inputs", mapping([("x", q("D.x"))]))])),
    ]
    losses: list[str] = []
    counter = 0
    ops = losses_n = 0
    for block in range(blocks + (1 if rest else 0)):
        length = chain if block < blocks else rest - 1
        previous = "M.logits"
        for _ in range(length):
            name = _short_name(counter)
            counter += 1
            entries.append((q(name), mapping([("kind", q("op")), ("type", q("detach")),
                                              ("inputs", mapping([("x", q(previous))]))])))
            previous = f"{name}.y"
            ops += 1
        name = _short_name(counter)
        counter += 1
        entries.append((q(name), mapping([("kind", q("loss")), ("type", q("mse")), (
            "inputs", mapping([("prediction", q(previous)), ("target", q("M.logits"))]))])))
        losses.append(name)
        losses_n += 1
    spec = mapping([
        ("dgraph", "1"), ("name", q(f"dense_{nodes}")),
        ("nodes", "{" + sep.join(f"{k}{colon}{v}" for k, v in entries) + "}"),
        ("updates", mapping([("u", mapping([
            ("params", "[" + q("M") + "]"),
            ("objective", "{" + sep.join(f"{q(n)}{colon}1" for n in losses) + "}")]))])),
        ("train", mapping([("steps", "10"), ("device", q("cpu"))])),
    ])
    counts = {"data": 1, "mlp": 1, "detach": ops, "mse": losses_n}
    return spec + "\n", counts


def _child(path: Path, warm: Path) -> int:
    """One load + validate of ``path`` in this (fresh) process; prints a JSON line."""
    import json
    import resource

    import dgraph.registry

    dgraph.registry.load_plugins()
    time_once(warm)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load_s, validate_s, n_nodes, n_edges = time_once(path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"load_s": load_s, "validate_s": validate_s, "nodes": n_nodes,
                      "edges": n_edges, "peak_rss": peak, "base_rss": base}))
    return 0


def measure_sizes(sizes: list[int], dense: str | None) -> int:
    """Each size in a fresh process: time, and peak RSS over that after a warm-up."""
    import json
    import subprocess

    print(f"{'nodes':>10} {'file MB':>8} {'load s':>8} {'validate s':>10} {'total s':>8} "
          f"{'peak RSS MB':>11} {'B/node':>7} {'RSS/file':>8}")
    with tempfile.TemporaryDirectory(prefix="dgraph_bench_") as tmp:
        warm = Path(tmp) / "warm_up.yaml"
        warm.write_text(make_spec(60)[0])
        for nodes in sizes:
            suffix = ".json" if dense == "json" else ".yaml"
            text = make_dense_spec(nodes, dense)[0] if dense else make_spec(nodes)[0]
            path = Path(tmp) / f"scale_{nodes}{suffix}"
            path.write_text(text)
            size = len(text.encode())
            del text
            done = subprocess.run([sys.executable, __file__, "--child", str(path), str(warm)],
                                  capture_output=True, text=True, check=False)
            if done.returncode:
                print(done.stdout + done.stderr)
                return done.returncode
            r = json.loads(done.stdout.strip().splitlines()[-1])
            grown = r["peak_rss"] - r["base_rss"]
            print(f"{nodes:>10,} {size / 1e6:>8.1f} {r['load_s']:>8.2f} {r['validate_s']:>10.2f} "
                  f"{r['load_s'] + r['validate_s']:>8.2f} {r['peak_rss'] / 2**20:>11.0f} "
                  f"{grown / nodes:>7.0f} {r['peak_rss'] / size:>8.1f}", flush=True)
            path.unlink()
    return 0


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
    parser.add_argument("--dense", choices=["yaml", "json"],
                        help="the densest spec form (short names, one line of YAML flow style "
                        "or JSON, about 55-62 bytes a node) instead of the ladder")
    parser.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")],
                        help="comma-separated node counts, each loaded and validated once in a "
                        "fresh process that reports its peak RSS (e.g. 2000,100000,500000)")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(*args.child)
    if args.sizes:
        return measure_sizes(args.sizes, args.dense)
    if args.quick:
        args.nodes, args.runs = min(args.nodes, 200), 2

    import dgraph.registry

    dgraph.registry.load_plugins()  # component registration is a one-off, not timed
    text, counts = (make_dense_spec(args.nodes, args.dense) if args.dense
                    else make_spec(args.nodes))
    with tempfile.TemporaryDirectory(prefix="dgraph_bench_") as tmp:
        path = Path(tmp) / f"scale_{args.nodes}.{'json' if args.dense == 'json' else 'yaml'}"
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
