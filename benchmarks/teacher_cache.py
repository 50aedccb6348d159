"""Speed-up of the teacher output cache (``cache: {where: memory}`` on a frozen teacher).

Two trainers are built from the same KD spec (0.9 * Hinton KD at T=4 + 0.1 * CE, Adam), one
with the teacher's outputs cached, one without; the teacher is much larger than the student
(default: digits, teacher 64->[2048,2048,2048], student 64->[64], batch 64). Their steps
(``StepRunner.run_update``, what ``Trainer.run`` does per step minus logging) are timed
interleaved in one process after a warm-up: ms/step medians and the median of per-round ratios
uncached/cached.

Next to the measured speed-up it prints the Amdahl bound: a perfect cache removes exactly the
teacher forward, so the best possible speed-up is
``(t_teacher_fwd + t_student_step) / t_student_step``, with ``t_teacher_fwd`` the teacher's
forward alone on one batch and ``t_student_step`` a plain-PyTorch student step alone (forward,
both losses against fixed teacher logits, backward, Adam) — timed interleaved too. The one-time
cost of filling the cache (one teacher pass over the whole training set) is reported as well,
with the number of steps after which the cache has paid for itself.

    python benchmarks/teacher_cache.py
    python benchmarks/teacher_cache.py --data random --in-features 512 --examples 8192
    python benchmarks/teacher_cache.py --quick          # small and fast (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import build_trainer, interleave, ints, resolve_device, yaml_list
from safetensors.torch import save_file

TEMPERATURE = 4.0
W_KD, W_CE = 0.9, 0.1
LR = 1e-3


def write_spec(folder: Path, args, device: torch.device, *, cached: bool) -> Path:
    if args.data == "digits":
        data = f"""
          data: {{kind: data, type: digits, params: {{batch_size: {args.batch}}}}}"""
    else:
        data = f"""
          data:
            kind: data
            type: tensor_file
            params:
              path: data.safetensors
              batch_size: {args.batch}
              keys:
                x: {{key: x, type: Features, shape: "B, {args.in_features}"}}
                y: {{key: y, type: Labels, shape: "B"}}"""
    cache = "\n            cache: {where: memory}" if cached else ""
    spec = f"""
        dgraph: 1
        name: teacher_cache_{'on' if cached else 'off'}
        nodes:{data}
          teacher:
            kind: teacher
            type: mlp
            params: {{in_features: {args.in_features}, hidden: {yaml_list(args.teacher_hidden)},
                     num_classes: {args.classes}}}
            init: {{weights: teacher.safetensors}}{cache}
            inputs: {{x: data.x}}
          student:
            kind: student
            type: mlp
            params: {{in_features: {args.in_features}, hidden: {yaml_list(args.student_hidden)},
                     num_classes: {args.classes}}}
            inputs: {{x: data.x}}
          kd:
            kind: loss
            type: hinton_kd
            params: {{temperature: {TEMPERATURE}}}
            inputs: {{student: student.logits, teacher: teacher.logits}}
          ce:
            kind: loss
            type: cross_entropy
            inputs: {{logits: student.logits, target: data.y}}
        updates:
          main:
            optimizer: {{type: adam, lr: {LR}}}
            params: [student]
            objective: {{kd: {W_KD}, ce: {W_CE}}}
        train:
          steps: 1000000
          seed: 0
          device: {device.type}
          log_every: 1000000
          checkpoint_every: 1000000
          eval: {{every: 1000000}}
        """
    path = folder / f"spec_{'on' if cached else 'off'}.yaml"
    path.write_text(textwrap.dedent(spec))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--quick", action="store_true", help="small and fast (smoke test)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads (0: leave the default)")
    parser.add_argument("--data", default="digits", choices=["digits", "random"])
    parser.add_argument("--in-features", type=int, default=64, help="64 for digits")
    parser.add_argument("--classes", type=int, default=10, help="10 for digits")
    parser.add_argument("--examples", type=int, default=4096, help="random examples")
    parser.add_argument("--teacher-hidden", type=ints, default=[2048, 2048, 2048])
    parser.add_argument("--student-hidden", type=ints, default=[64])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=10, help="steps per side per round")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.teacher_hidden, args.rounds, args.block, args.warmup = [512, 512], 3, 3, 1
    if args.data == "digits" and (args.in_features != 64 or args.classes != 10):
        parser.error("digits has 64 features and 10 classes")
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})"
                                 if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} torch threads)")
          + f"; torch {torch.__version__}; python {sys.version.split()[0]}")
    print(f"data {args.data}, in {args.in_features}, teacher {args.teacher_hidden}, student "
          f"{args.student_hidden}, {args.classes} classes, batch {args.batch}; {args.rounds} "
          f"rounds x {args.block} steps, {args.warmup} warm-up", flush=True)

    from dgraph.components.models.mlp import MLP

    with tempfile.TemporaryDirectory(prefix="dgraph_bench_") as tmp:
        folder = Path(tmp)
        torch.manual_seed(1234)
        teacher = MLP.create(in_features=args.in_features, hidden=args.teacher_hidden,
                             num_classes=args.classes)
        save_file({k: v.contiguous() for k, v in teacher.state_dict().items()},
                  str(folder / "teacher.safetensors"))
        if args.data == "random":
            gen = torch.Generator().manual_seed(99)
            save_file({"x": torch.randn(args.examples, args.in_features, generator=gen),
                       "y": torch.randint(args.classes, (args.examples,), generator=gen)},
                      str(folder / "data.safetensors"))
        plain = build_trainer(write_spec(folder, args, device, cached=False), folder / "off")
        t0 = time.perf_counter()
        cached = build_trainer(write_spec(folder, args, device, cached=True), folder / "on")
        sync()
        build_cached = time.perf_counter() - t0

    # The one-time fill, timed on its own (it replaces the cache with identical values).
    fills = []
    for _ in range(3 if not args.quick else 1):
        sync()
        t0 = time.perf_counter()
        cached._fill_caches()
        sync()
        fills.append(time.perf_counter() - t0)
    fill_s = statistics.median(fills)
    examples = plain.loaders["data"].size

    counters = {"off": 0, "on": 0}

    def step_off() -> None:
        plain.step_runner.run_update("main", plain.stages[0], counters["off"], {})
        counters["off"] += 1

    def step_on() -> None:
        cached.step_runner.run_update("main", cached.stages[0], counters["on"], {})
        counters["on"] += 1

    # Same seed, same batches: the first losses must agree (cache holds the same logits).
    first_off = plain.step_runner.run_update("main", plain.stages[0], 0, {})["total"].item()
    first_on = cached.step_runner.run_update("main", cached.stages[0], 0, {})["total"].item()
    counters["off"] = counters["on"] = 1

    # Amdahl parts: teacher forward alone, and a plain student step alone (fixed teacher logits).
    t_module = cached.instances.modules["teacher"]
    loader = plain.loaders["data"]
    xb = loader.tensors["x"][: args.batch]
    yb = loader.tensors["y"][: args.batch]
    with torch.no_grad():
        t_logits = t_module(xb)["logits"]
    student = MLP.create(in_features=args.in_features, hidden=args.student_hidden,
                         num_classes=args.classes).to(device)
    kernels = {"fused": True}  # as dgraph's
    optimizer = torch.optim.Adam(student.parameters(), lr=LR, **kernels)

    def teacher_fwd() -> None:
        with torch.no_grad():
            t_module(xb)

    def student_step() -> None:
        s_logits = student(xb)["logits"]
        kd = F.kl_div(F.log_softmax(s_logits / TEMPERATURE, dim=-1),
                      F.log_softmax(t_logits / TEMPERATURE, dim=-1),
                      reduction="batchmean", log_target=True) * TEMPERATURE**2
        total = W_KD * kd + W_CE * F.cross_entropy(s_logits, yb)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fns = {"off": step_off, "on": step_on, "teacher_fwd": teacher_fwd,
           "student_step": student_step}
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    sync()
    times = interleave(fns, rounds=args.rounds, block=args.block, sync=sync)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ratios = [off / on for off, on in zip(times["off"], times["on"], strict=True)]
    bounds = [(t + s) / s for t, s in zip(times["teacher_fwd"], times["student_step"], strict=True)]
    speedup = statistics.median(ratios)
    bound = statistics.median(bounds)
    saved_ms = med["off"] - med["on"]
    payback = fill_s * 1e3 / saved_ms if saved_ms > 0 else float("inf")

    print(f"first step total loss: no cache {first_off:.6f}, cache {first_on:.6f}")
    print(f"one-time cache fill: {fill_s:.3f} s ({examples} examples, one teacher pass; "
          f"the cached trainer's whole build took {build_cached:.3f} s)")
    print(f"no cache  {med['off']:9.3f} ms/step")
    print(f"cache     {med['on']:9.3f} ms/step")
    print(f"teacher forward alone {med['teacher_fwd']:.3f} ms; student step alone "
          f"{med['student_step']:.3f} ms")
    print(f"ratio no-cache/cache: median {speedup:.2f}x (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}); Amdahl bound {bound:.2f}x "
          f"({100 * (speedup - 1) / max(bound - 1, 1e-9):.0f}% of the possible gain)")
    print(f"the fill pays for itself after {payback:.0f} steps "
          f"({payback / max(loader.batches_per_epoch, 1):.1f} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
