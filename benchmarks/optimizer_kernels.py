"""The optimizer kernels dgraph builds, against the others torch offers, and the gradient clearing.

For each parameter set (the ``tiny`` student of ``overhead.py``, 64 -> 32 -> 10, and the
``realistic`` one, 1024 -> 2048 -> 2048 -> 1000) and each of Adam, AdamW and SGD with momentum:
one optimizer step with the fused kernels (dgraph's choice on CPU and CUDA), the foreach
kernels and torch's default for the device, timed in interleaved blocks (the gradients are
set before each step). Then ``optimizer.zero_grad(set_to_none=True)`` against the loop dgraph
runs instead (``p.grad = None`` per parameter). Prints microseconds per call (median of the
blocks) and each variant's ratio to the first one of its row.

    python benchmarks/optimizer_kernels.py                       # CPU, ~1 min
    python benchmarks/optimizer_kernels.py --device cuda
    python benchmarks/optimizer_kernels.py --quick               # smoke run (tiny only)
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _timing import interleave, resolve_device

SHAPES = {
    "tiny": [(32, 64), (32,), (10, 32), (10,)],
    "realistic": [(2048, 1024), (2048,), (2048, 2048), (2048,), (1000, 2048), (1000,)],
}
KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "default": {}}
OPTIMIZERS = {
    "adam": lambda params, kw: torch.optim.Adam(params, lr=1e-3, **kw),
    "adamw": lambda params, kw: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **kw),
    "sgd": lambda params, kw: torch.optim.SGD(params, lr=1e-3, momentum=0.9, **kw),
}


def _params(shapes, device) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen).to(device)) for s in shapes]
    grads = [torch.randn(*s, generator=gen).to(device) * 1e-2 for s in shapes]
    return params, grads


def _step_fn(optimizer, params, grads):
    def step() -> None:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()
    return step


def time_steps(name: str, device, rounds: int, block: int, sync) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for kind, make in OPTIMIZERS.items():
        arms = {}
        for kernel, kw in KERNELS.items():
            params, grads = _params(SHAPES[name], device)
            arms[kernel] = _step_fn(make(params, kw), params, grads)
        for fn in arms.values():  # state made, kernels warm
            for _ in range(3):
                fn()
        times = interleave(arms, rounds=rounds, block=block, sync=sync)
        rows[kind] = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    return rows


def time_clearing(name: str, device, rounds: int, block: int, sync) -> dict[str, float]:
    params, grads = _params(SHAPES[name], device)
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)

    def fill() -> None:
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    def zero_grad() -> None:
        fill()
        optimizer.zero_grad(set_to_none=True)

    def loop() -> None:
        fill()
        for p in params:
            p.grad = None

    times = interleave({"fill only": fill, "zero_grad": zero_grad, "loop": loop},
                       rounds=rounds, block=block, sync=sync)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on CPU (default 1, as overhead.py --threads 1)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true",
                        help="a few rounds of the tiny parameters only (smoke test)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rounds = 2 if args.quick else args.rounds
    print(f"device: {device} ({torch.get_num_threads()} torch threads on CPU); torch "
          f"{torch.__version__}; python {sys.version.split()[0]}; {rounds} rounds")
    print("\n| parameters | optimizer | fused us | foreach us | default us | foreach / fused "
          "| default / fused |\n| --- | --- | --- | --- | --- | --- | --- |")
    names = ["tiny"] if args.quick else list(SHAPES)
    for name in names:
        block = 2 if args.quick else (200 if name == "tiny" else 3)
        for kind, row in time_steps(name, device, rounds, block, sync).items():
            print(f"| {name} | {kind} | {row['fused']:.1f} | {row['foreach']:.1f} | "
                  f"{row['default']:.1f} | {row['foreach'] / row['fused']:.2f} | "
                  f"{row['default'] / row['fused']:.2f} |")
    print("\n| parameters | setting the gradients us | + zero_grad us | + the loop us |\n"
          "| --- | --- | --- | --- |")
    for name in names:
        row = time_clearing(name, device, rounds, 2 if args.quick else 500, sync)
        print(f"| {name} | {row['fill only']:.2f} | {row['zero_grad']:.2f} | "
              f"{row['loop']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
