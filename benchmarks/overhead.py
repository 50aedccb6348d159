"""Per-step overhead of dgraph's training step against the same loop written by hand.

KD configs: both sides train a copy of the same student, distilled from the same frozen
teacher, on the same batches, with the same loss (0.9 * Hinton KD at T=4 + 0.1 *
cross-entropy; on digits the cross-entropy is masked by the `labelled` port, as
specs/kd.yaml wires it, and the hand loop masks it too) and the same optimizer (Adam:
fused, as dgraph builds it). ``adversarial_toy`` is the zoo spec itself (two updates at
5:1, a critic shared by two nodes, noise from torch's global generator) against the same
GAN loop by hand. The dgraph side is exactly what ``Trainer.run`` does per step minus
logging/eval/checkpoints: ``Trainer.run_step`` (stage and step bookkeeping, every update due:
draw the batch from the BatchLoader, the generated step, backward, the non-finite check,
``optimizer.step``, ``zero_grad``). The hand side indexes the same on-device tensors with
the loader's own permutations, precomputed, so both sides see identical batches (and, for
the GAN, identical noise: each side keeps its own global RNG state) and on CPU end with
bit-identical weights, which is checked.

Timing is interleaved in one process: after a warm-up, each round times a block of dgraph
steps and a block of hand steps (alternating which goes first); the reported ratio is the
median of the per-round ratios dgraph/hand, with its min and max. ``--clock cpu`` times this
thread's CPU time instead of wall time (with ``--threads 1`` on a shared machine: time other
processes take the core away is not counted).

Configurations:
  tiny             digits (64 features, 10 classes), teacher 64->[256,256], student 64->[32],
                   batch 64, masked cross-entropy
  realistic        random data, 1024 features -> 1000 classes, teacher [4096,4096],
                   student [2048,2048], batch 256 (sizes configurable with the flags below)
  adversarial_toy  specs/adversarial_toy.yaml: critic every step, generator every 5th

    python benchmarks/overhead.py                      # all configs (~2-4 min on 2 CPU cores)
    python benchmarks/overhead.py --device cpu --threads 1 --clock cpu --rounds 30
    python benchmarks/overhead.py --configs realistic --device cuda --rounds 20 --block 20
    python benchmarks/overhead.py --quick              # small and fast (smoke test)
    python benchmarks/overhead.py --device cuda --compile reduce-overhead   # CUDA graphs
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


def write_spec(folder: Path, cfg: dict, device: torch.device) -> Path:
    """Random teacher weights (and random data for non-digits configs), then the KD spec."""
    from dgraph.components.models.mlp import MLP

    torch.manual_seed(1234)
    teacher = MLP.create(in_features=cfg["in_features"], hidden=cfg["teacher"],
                         num_classes=cfg["classes"])
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()},
              str(folder / "teacher.safetensors"))
    if cfg["data"] == "digits":
        data = f"""
          data: {{kind: data, type: digits, params: {{batch_size: {cfg['batch']}}}}}"""
    else:
        gen = torch.Generator().manual_seed(99)
        x = torch.randn(cfg["examples"], cfg["in_features"], generator=gen)
        y = torch.randint(cfg["classes"], (cfg["examples"],), generator=gen)
        save_file({"x": x, "y": y}, str(folder / "data.safetensors"))
        data = f"""
          data:
            kind: data
            type: tensor_file
            params:
              path: data.safetensors
              batch_size: {cfg['batch']}
              keys:
                x: {{key: x, type: Features, shape: "B, {cfg['in_features']}"}}
                y: {{key: y, type: Labels, shape: "B"}}"""
    # specs/kd.yaml's cross-entropy reads the digits' `labelled` mask (through _digits_student).
    mask = ", mask: data.labelled" if cfg.get("mask") else ""
    spec = f"""
        dgraph: 1
        name: overhead_{cfg['name']}
        nodes:{data}
          teacher:
            kind: teacher
            type: mlp
            params: {{in_features: {cfg['in_features']}, hidden: {yaml_list(cfg['teacher'])},
                     num_classes: {cfg['classes']}}}
            init: {{weights: teacher.safetensors}}
            inputs: {{x: data.x}}
          student:
            kind: student
            type: mlp
            params: {{in_features: {cfg['in_features']}, hidden: {yaml_list(cfg['student'])},
                     num_classes: {cfg['classes']}}}
            inputs: {{x: data.x}}
          kd:
            kind: loss
            type: hinton_kd
            params: {{temperature: {TEMPERATURE}}}
            inputs: {{student: student.logits, teacher: teacher.logits}}
          ce:
            kind: loss
            type: cross_entropy
            inputs: {{logits: student.logits, target: data.y{mask}}}
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
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(spec))
    return path


def loader_indices(loader, steps: int, device: torch.device) -> list[torch.Tensor]:
    """The batches' example indices the BatchLoader will draw, precomputed on device."""
    per_epoch = loader.batches_per_epoch
    out: list[torch.Tensor] = []
    epoch = loader.epoch
    position = loader.position
    order = None
    while len(out) < steps:
        if position >= per_epoch or order is None:
            if order is not None:
                epoch, position = epoch + 1, 0
            if loader.shuffle:
                gen = torch.Generator().manual_seed(loader.seed * 1_000_003 + epoch)
                order = torch.randperm(loader.size, generator=gen).to(device)
            else:
                order = torch.arange(loader.size, device=device)
        start = position * loader.batch_size
        out.append(order[start:start + loader.batch_size])
        position += 1
    return out


class HandKD:
    """Hinton KD in plain PyTorch: the loop a user would write.

    ``loader`` (a dgraph BatchLoader) replaces the precomputed-index batches and ``losses``
    (dgraph's kd and ce loss modules, either may be None) replace the inline ``F`` calls: the
    --breakdown variants.
    """

    def __init__(self, teacher_state, student_state, cfg, x, y, indices, *, loader=None,
                 losses=None, labelled=None) -> None:
        from dgraph.components.models.mlp import MLP

        device = x.device
        self.teacher = MLP.create(in_features=cfg["in_features"], hidden=cfg["teacher"],
                                  num_classes=cfg["classes"]).to(device)
        self.teacher.load_state_dict(teacher_state)
        self.teacher.eval()
        self.teacher.requires_grad_(False)
        self.student = MLP.create(in_features=cfg["in_features"], hidden=cfg["student"],
                                  num_classes=cfg["classes"]).to(device)
        self.student.load_state_dict(student_state)
        # The kernels dgraph's build_optimizer picks: fused (CPU and CUDA).
        kernels = {"fused": True}
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=LR, **kernels)
        self.x, self.y, self.indices = x, y, indices
        # The labelled mask of the examples, when the spec's cross-entropy reads one.
        self.labelled = labelled
        self.loader, self.losses = loader, losses
        self.i = 0

    def step(self) -> None:
        labelled = None
        if self.loader is not None:
            batch = self.loader.next()
            x, y = batch["x"], batch["y"]
            if self.labelled is not None:
                labelled = batch["labelled"]
        else:
            index = self.indices[self.i]
            self.i += 1
            x = self.x.index_select(0, index)
            y = self.y.index_select(0, index)
            if self.labelled is not None:
                labelled = self.labelled.index_select(0, index)
        with torch.no_grad():
            t_logits = self.teacher(x)["logits"]
        s_logits = self.student(x)["logits"]
        kd_module, ce_module = self.losses or (None, None)
        if kd_module is not None:
            kd = kd_module(student=s_logits, teacher=t_logits)["loss"]
        else:
            kd = F.kl_div(F.log_softmax(s_logits / TEMPERATURE, dim=-1),
                          F.log_softmax(t_logits / TEMPERATURE, dim=-1),
                          reduction="batchmean", log_target=True) * TEMPERATURE**2
        if ce_module is not None:
            ce = (ce_module(logits=s_logits, target=y)["loss"] if labelled is None
                  else ce_module(logits=s_logits, target=y, mask=labelled)["loss"])
        elif labelled is None:
            ce = F.cross_entropy(s_logits, y)
        else:
            # Masked: the mean over labelled examples, 0 (not NaN) for a batch without any.
            target = y.masked_fill(~labelled, -1)
            ce = F.cross_entropy(s_logits, target, ignore_index=-1, reduction="sum") / (
                target >= 0).sum().clamp_min(1)
        total = W_KD * kd + W_CE * ce
        total.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class HandGAN:
    """specs/adversarial_toy.yaml in plain PyTorch: a critic step every step, a generator step
    every 5th, non-saturating GAN losses, Adam (betas 0.5, 0.9) per network.

    The same maths as the spec's components, in the order its generated steps run them (the
    noise comes from torch's global generator, so the order of draws matters): the critic
    scores the real batch, noise is drawn, the generator (without gradients) maps it and the
    critic scores the fakes; the generator step then draws fresh noise for the same batch.
    """

    def __init__(self, trainer, x: torch.Tensor, indices: list[torch.Tensor]) -> None:
        from dgraph.components.models.mlp import MLPMap

        spec = trainer.spec
        nodes = trainer.graph.nodes
        device = x.device

        def copy(name: str) -> torch.nn.Module:
            module = MLPMap.create(**nodes[name].spec.params).to(device)
            module.load_state_dict(trainer.instances.modules[name].state_dict())
            return module

        self.critic, self.generator = copy("critic"), copy("generator")
        kernels = {"fused": True}  # as dgraph's build_optimizer

        def adam(update: str, module: torch.nn.Module) -> torch.optim.Optimizer:
            opt = spec.updates[update].optimizer
            return torch.optim.Adam(module.parameters(), lr=opt.lr, betas=tuple(opt.betas),
                                    **kernels)

        self.opt_critic = adam("critic", self.critic)
        self.opt_generator = adam("generator", self.generator)
        self.generator_params = list(self.generator.parameters())
        self.every = spec.updates["generator"].every
        self.noise_dim = nodes["noise"].spec.params["dim"]
        self.x, self.indices = x, indices
        self.i = 0

    def step(self) -> None:
        x = self.x.index_select(0, self.indices[self.i])
        n = x.shape[0]
        # critic: softplus(-d(real)) + softplus(d(fake)), each a mean over the batch
        real = self.critic(x)["y"]
        noise = torch.randn(n, self.noise_dim, device=x.device)
        with torch.no_grad():
            fake = self.generator(noise)["y"]
        loss = F.softplus(-real).mean() + F.softplus(self.critic(fake)["y"]).mean()
        loss.backward()
        self.opt_critic.step()
        self.opt_critic.zero_grad(set_to_none=True)
        if self.i % self.every == 0:
            # generator: softplus(-d(G(z))); gradients reach only the generator
            noise = torch.randn(n, self.noise_dim, device=x.device)
            loss = F.softplus(-self.critic(self.generator(noise)["y"])["y"]).mean()
            loss.backward(inputs=self.generator_params)
            self.opt_generator.step()
            self.opt_generator.zero_grad(set_to_none=True)
        self.i += 1


def run_adversarial(cfg: dict, device: torch.device, *, rounds: int, block: int,
                    warmup: int, clock=time.perf_counter, compile_mode: str = "false") -> dict:
    """The zoo's adversarial_toy (two updates at 5:1, shared critic) against HandGAN."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    spec = Path(__file__).resolve().parent.parent / "specs" / "adversarial_toy.yaml"
    never = 1_000_000
    overrides = (f"train.steps={never}", f"train.log_every={never}",
                 f"train.checkpoint_every={never}", f"train.eval.every={never}",
                 f"train.device={device.type}", f"train.compile={compile_mode}")
    with tempfile.TemporaryDirectory(prefix="dgraph_bench_") as tmp:
        t0 = time.perf_counter()
        trainer = build_trainer(spec, Path(tmp) / "run", overrides)
        build_s = time.perf_counter() - t0
    loader = trainer.loaders["data"]
    indices = loader_indices(loader, warmup + rounds * block, device)
    hand = HandGAN(trainer, loader.tensors["x"], indices)
    counter = {"step": 0}

    def dgraph_step() -> None:
        trainer.run_step()
        counter["step"] += 1

    arms = {"dgraph": dgraph_step, "hand": hand.step}
    # Both sides draw noise from torch's global generator: each keeps its own state, swapped
    # in before its block (outside the timing), both starting from the same one.
    states = {name: torch.get_rng_state() for name in arms}
    active: list[str] = []

    def switch(name: str) -> None:
        if active:
            states[active[0]] = torch.get_rng_state()
        torch.set_rng_state(states[name])
        active[:] = [name]

    for _ in range(warmup):
        for name, fn in arms.items():
            switch(name)
            fn()
    sync()
    times = interleave(arms, rounds=rounds, block=block, sync=sync, clock=clock, switch=switch)
    diffs = []
    for name, module in (("critic", hand.critic), ("generator", hand.generator)):
        final = trainer.instances.modules[name].state_dict()
        diffs += [float((final[k] - v).abs().max()) for k, v in module.state_dict().items()]
    return summarize(cfg, times, build_s, counter["step"], max(diffs), rounds, block)


def summarize(cfg: dict, times: dict[str, list[float]], build_s: float, steps: int,
              max_diff: float | None, rounds: int, block: int) -> dict:
    dgraph_s, hand_s = times["dgraph"], times["hand"]
    ratios = [d / h for d, h in zip(dgraph_s, hand_s, strict=True)]
    return {
        "config": cfg["name"],
        "build_s": build_s,
        "steps_per_side": steps,
        "dgraph_ms": statistics.median(dgraph_s) * 1e3,
        "hand_ms": statistics.median(hand_s) * 1e3,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        # timeit's rule: the fastest block of each side is the least disturbed by the rest
        # of the machine.
        "best_ratio": min(dgraph_s) / min(hand_s),
        "dgraph_best_ms": min(dgraph_s) * 1e3,
        "hand_best_ms": min(hand_s) * 1e3,
        "max_weight_diff": max_diff,
        "rounds": rounds,
        "block": block,
        "arms": {name: (statistics.median(v) * 1e3,
                        statistics.median(a / h for a, h in zip(v, hand_s, strict=True)))
                 for name, v in times.items()},
    }


def run_config(cfg: dict, device: torch.device, *, rounds: int, block: int,
               warmup: int, breakdown: bool = False, clock=time.perf_counter,
               compile_mode: str = "false") -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="dgraph_bench_") as tmp:
        folder = Path(tmp)
        spec_path = write_spec(folder, cfg, device)
        t0 = time.perf_counter()
        trainer = build_trainer(spec_path, folder / "run", (f"train.compile={compile_mode}",))
        build_s = time.perf_counter() - t0

    stage = trainer.stages[0]
    student_state = {k: v.detach().clone()
                     for k, v in trainer.instances.modules["student"].state_dict().items()}
    teacher_state = trainer.instances.modules["teacher"].state_dict()
    loader = trainer.loaders["data"]
    total_steps = warmup + rounds * block
    indices = loader_indices(loader, total_steps, device)

    def make_hand(**kw) -> HandKD:
        return HandKD(teacher_state, student_state, cfg, loader.tensors["x"],
                      loader.tensors["y"], indices, labelled=loader.tensors.get("labelled"),
                      **kw)

    hand = make_hand()
    counter = {"step": 0}

    def dgraph_step() -> None:
        trainer.run_step()
        counter["step"] += 1

    arms = {"dgraph": dgraph_step, "hand": hand.step}
    if breakdown:
        from dgraph.runtime.data import BatchLoader

        def own_loader():
            return BatchLoader(dict(loader.tensors), loader.batch_size, shuffle=loader.shuffle,
                               drop_last=loader.drop_last, seed=loader.seed, device=device)

        kd_ce = (trainer.instances.modules["kd"], trainer.instances.modules["ce"])
        arms["hand+loader"] = make_hand(loader=own_loader()).step
        arms["hand+kd module"] = make_hand(losses=(kd_ce[0], None)).step
        arms["hand+ce module"] = make_hand(losses=(None, kd_ce[1])).step
        arms["hand+both"] = make_hand(loader=own_loader(), losses=kd_ce).step
        # The generated step with the runtime's loader, optimizer and backward, but none of
        # run_update's bookkeeping (finite check, target following, terms dict).
        plan = trainer.program.plans["main"]
        optimizer = trainer.optimizers["main"]
        inline_loader = own_loader()
        weights = trainer.step_runner._weights(plan, stage, 0)

        def inline_step() -> None:
            total, _terms = plan.step({"data": inline_loader.next()}, weights)
            total.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        arms["plan.step inline"] = inline_step

    for _ in range(warmup):
        for fn in arms.values():
            fn()
    sync()

    times = interleave(arms, rounds=rounds, block=block, sync=sync, clock=clock)
    final = trainer.instances.modules["student"].state_dict()
    max_diff = max(float((final[k] - v).abs().max()) for k, v in hand.student.state_dict().items())
    return summarize(cfg, times, build_s, counter["step"], None if breakdown else max_diff,
                     rounds, block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,realistic,adversarial_toy",
                        help="comma-separated: tiny, realistic, adversarial_toy")
    parser.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--quick", action="store_true",
                        help="few short rounds, realistic config shrunk (smoke test)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time hand-written variants that use dgraph's BatchLoader "
                        "and/or its kd / ce loss modules (hand+both: loader and both losses), "
                        "and the generated step without run_update ('plan.step inline'), to "
                        "attribute the overhead (the same-weights check is then skipped)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads (0: leave the default)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: elapsed time; cpu: this thread's CPU time (time.thread_time;"
                        " CPU only, with --threads 1: time other processes take the core from "
                        "the benchmark is not counted)")
    g = parser.add_argument_group("realistic config sizes")
    g.add_argument("--in-features", type=int, default=1024)
    g.add_argument("--teacher-hidden", type=ints, default=[4096, 4096])
    g.add_argument("--student-hidden", type=ints, default=[2048, 2048])
    g.add_argument("--classes", type=int, default=1000)
    g.add_argument("--batch", type=int, default=256)
    g.add_argument("--examples", type=int, default=4096, help="random training examples")
    parser.add_argument("--compile", default="false",
                        choices=["false", "true", "auto", "reduce-overhead"],
                        help="train.compile of the dgraph side (the hand loop stays eager): "
                        "reduce-overhead or auto on CUDA measure the CUDA-graph path")
    t = parser.add_argument_group("timing (default: per config)")
    t.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    t.add_argument("--block", type=int, default=None, help="steps per side per round")
    t.add_argument("--warmup", type=int, default=None, help="warm-up steps per side")
    args = parser.parse_args(argv)
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    device = resolve_device(args.device)
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock cpu counts one thread's CPU time: use it with --device cpu "
                     "--threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    configs = {
        "tiny": {"name": "tiny", "data": "digits", "in_features": 64, "teacher": [256, 256],
                 "student": [32], "classes": 10, "batch": 64, "mask": True,
                 "timing": (20, 40, 40) if not args.quick else (3, 5, 3)},
        "realistic": {"name": "realistic", "data": "random", "in_features": args.in_features,
                      "teacher": args.teacher_hidden, "student": args.student_hidden,
                      "classes": args.classes, "batch": args.batch, "examples": args.examples,
                      "timing": (8, 3, 2) if device.type == "cpu" else (20, 20, 10)},
        "adversarial_toy": {"name": "adversarial_toy",
                            "timing": (20, 20, 20) if not args.quick else (3, 5, 5)},
    }
    if args.quick:
        configs["realistic"].update(in_features=128, teacher=[512, 512], student=[256, 256],
                                    classes=100, batch=64, examples=512, timing=(3, 2, 1))
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in configs]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {', '.join(configs)}")

    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})"
                                 if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} torch threads)")
          + f"; torch {torch.__version__}; python {sys.version.split()[0]}; "
          f"{args.clock} clock; dgraph side train.compile={args.compile}")
    results = []
    for name in names:
        cfg = configs[name]
        rounds, block, warmup = cfg["timing"]
        rounds = args.rounds or rounds
        block = args.block or block
        warmup = args.warmup if args.warmup is not None else warmup
        shape = ("specs/adversarial_toy.yaml: critic every step, generator every 5th"
                 if name == "adversarial_toy" else
                 f"in {cfg['in_features']}, teacher {cfg['teacher']}, student "
                 f"{cfg['student']}, {cfg['classes']} classes, batch {cfg['batch']}")
        print(f"[{name}] {shape}; {rounds} rounds x {block} steps per side, "
              f"{warmup} warm-up", flush=True)
        if name == "adversarial_toy":
            res = run_adversarial(cfg, device, rounds=rounds, block=block, warmup=warmup,
                                  clock=clock, compile_mode=args.compile)
        else:
            res = run_config(cfg, device, rounds=rounds, block=block, warmup=warmup,
                             breakdown=args.breakdown, clock=clock, compile_mode=args.compile)
        results.append(res)
        if args.breakdown:
            for arm, (ms, rel) in res["arms"].items():
                print(f"[{name}]   {arm:<18} {ms:9.3f} ms/step   x{rel:.3f} of hand")
        diff = res["max_weight_diff"]
        same = ("not compared (--breakdown trains the dgraph student more)" if diff is None
                else "identical" if diff == 0 else f"max |diff| {diff:.2e}")
        print(f"[{name}] dgraph {res['dgraph_ms']:.3f} ms/step, hand {res['hand_ms']:.3f} "
              f"ms/step (medians); trained weights after {res['steps_per_side']} steps: {same}")
        print(f"[{name}] ratio dgraph/hand: median {res['ratio']:.3f} "
              f"(min {res['ratio_min']:.3f}, max {res['ratio_max']:.3f})", flush=True)
        print(f"[{name}] fastest blocks: dgraph {res['dgraph_best_ms']:.3f} ms/step, hand "
              f"{res['hand_best_ms']:.3f} ms/step, ratio {res['best_ratio']:.3f}", flush=True)
    print()
    print(f"{'config':<16} {'dgraph ms/step':>15} {'hand ms/step':>13} {'ratio':>7} "
          f"{'min':>7} {'max':>7} {'fastest':>8}")
    for res in results:
        print(f"{res['config']:<16} {res['dgraph_ms']:>15.3f} {res['hand_ms']:>13.3f} "
              f"{res['ratio']:>7.3f} {res['ratio_min']:>7.3f} {res['ratio_max']:>7.3f} "
              f"{res['best_ratio']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
