"""What calling layers through ``nn.Module.__call__`` costs, and what ``call_plain`` saves.

dgraph's ``mlp`` (and the RL policies, value nets and RND) run their plain layers (Linear and
the activations, not subclasses or wrappers) as the functions their ``forward`` calls, through
``dgraph._torch_declare.call_plain``, unless a hook is registered. Timed here, interleaved on
one thread, each against the same computation written the usual way:

  kd pair   a teacher 64->[256, 256]->10 and a student 64->[24]->10 (peers.py's small job):
            forward of both and backward of the student at batch 64, as the ``mlp`` the zoo
            builds, as the flat ``nn.Sequential`` a hand-written script uses, and as ``mlp``
            with every layer called as a module (what it did before ``call_plain``)
  policy    ``mlp_policy`` (CartPole: 4 -> [64, 64] -> 2 actions, with a critic) forward at
            batch 1 without gradients, the call a rollout makes per environment step, against
            its actor and critic called as modules

Prints microseconds per call (median of the blocks) and the ratio of each variant to the
first of its group (median of the per-round ratios), with min and max.

    python benchmarks/layer_calls.py                 # CPU, 1 thread, ~1 min
    python benchmarks/layer_calls.py --quick         # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _timing import interleave, resolve_device
from torch import nn


def _flat(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def _module_calls(mlp: nn.Module):
    """``mlp``'s forward as it was: the body Sequential and the head called as modules."""
    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = mlp.body(x)
        return {"logits": mlp.head(features), "features": features}
    return forward


def kd_pair(device: torch.device) -> dict[str, object]:
    from dgraph.components.models.mlp import MLP

    torch.manual_seed(0)
    teacher = MLP.create(in_features=64, hidden=[256, 256], num_classes=10).to(device).eval()
    student = MLP.create(in_features=64, hidden=[24], num_classes=10).to(device)
    teacher.requires_grad_(False)
    flat_teacher, flat_student = _flat([64, 256, 256, 10]).to(device), \
        _flat([64, 24, 10]).to(device)
    x = torch.randn(64, 64, device=device)

    def step(t, s, pick) -> None:
        with torch.no_grad():
            t(x)
        pick(s(x)).sum().backward()

    def logits(out):
        return out["logits"]

    # The generated step calls a node's forward directly (no hook on the node itself).
    return {
        "mlp (call_plain)": lambda: step(teacher.forward, student.forward, logits),
        "flat nn.Sequential": lambda: step(flat_teacher, flat_student, lambda out: out),
        "mlp, layers as modules": lambda: step(_module_calls(teacher), _module_calls(student),
                                               logits),
    }


def policy(device: torch.device) -> dict[str, object]:
    from dgraph.components.rl.policy import CategoricalPolicy

    torch.manual_seed(0)
    net = CategoricalPolicy.create(obs_dim=4, num_actions=2, hidden=[64, 64]).to(device)
    obs = torch.randn(1, 4, device=device)

    def as_modules() -> dict[str, torch.Tensor]:
        return {"logits": net.actor(obs), "value": net.critic(obs).squeeze(-1)}

    def plain() -> dict[str, torch.Tensor]:
        return net(obs)

    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(plain().values(), as_modules().values(),
                                                     strict=True))

    def no_grad(fn):
        def run() -> None:
            with torch.no_grad():
                fn()
        return run

    return {"mlp_policy (call_plain)": no_grad(plain), "actor, critic as modules":
            no_grad(as_modules)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a few short rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.block = 4, 10
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    print(f"device {device}, {torch.get_num_threads()} thread(s), {args.rounds} rounds x "
          f"{args.block} calls, torch {torch.__version__}")
    print("| group | variant | us per call | ratio to the first (min-max) |")
    print("| --- | --- | --- | --- |")
    for group, make in (("kd pair", kd_pair), ("policy", policy)):
        arms = make(device)
        for fn in arms.values():  # warm-up
            for _ in range(args.block):
                fn()
        times = interleave(arms, rounds=args.rounds, block=args.block, sync=sync, clock=clock)
        first = times[next(iter(arms))]
        for name, values in times.items():
            ratios = [v / f for v, f in zip(values, first, strict=True)]
            print(f"| {group} | {name} | {statistics.median(values) * 1e6:.1f} | "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
