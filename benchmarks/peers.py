"""dgraph against a hand-written loop, torchdistill and TRL, side by side in one run.

Classification KD (three sides, one process, interleaved): the dgraph step exactly as
``Trainer`` runs it (``StepRunner.run_update``: batch from the BatchLoader, generated step,
backward, finite check, ``optimizer.step``, ``zero_grad``), the same loop written by hand in
plain PyTorch, and torchdistill's own machinery (its ``DistillationBox`` built from a
``train_config`` with its ``WeightedSumLoss`` of its ``KDLoss``; each step is
``forward_process`` + ``post_forward_process``, as its example scripts run it). Same teacher
weights, same student initialisation, same batches (the dgraph BatchLoader's order, indexed on
device for the other two), Adam (fused), loss ``0.1 CE + 0.9 T^2 KL(T = 4)``, 1 torch
thread. Each round times a block of steps per side, the order rotating; the table gives the
median ms/step with its min-max over the rounds, and the per-round ratio to the hand loop.

  small  digits (64 features, 10 classes), teacher [256, 256], student [24], batch 64
         (the shapes of specs/kd.yaml, with an unmasked cross-entropy: torchdistill's KDLoss
         has no mask)
  large  digits, teacher [2048, 2048], student [512, 512], batch 256

LLM KD against TRL's ``GKDTrainer`` (experimental.gkd), each run a fresh subprocess per side
(so the RSS high-water mark is that side's alone), pairs alternating which side goes first:

  kd   token-level KD, forward KL: dgraph ``llm_kd`` against GKDTrainer with ``lmbda=0,
       beta=0`` (TRL's documented forward-KL setting: no on-policy data, JSD(0) = KL(p_t||p_s))
  gkd  GKD: dgraph ``llm_gkd`` (lambda 0.5, JSD beta 0.5, 49 new tokens after 16-token
       prompts, temperature 1) against GKDTrainer with ``lmbda=0.5, beta=0.5, temperature=1,
       max_new_tokens=49``

Both load the same teacher and the same student initialisation with ``from_pretrained(path)``
(the zoo's ``llm_teacher`` run written with save_pretrained; the student's random init
written once, dropout 0 as TRL's ``disable_dropout`` makes it), see the same token ids in the
same order (dgraph's text_lm loader's batches, handed to TRL through a collator), AdamW (lr
3e-3, weight decay 0.01 on every parameter, fused), cosine schedule, grad-norm clip 1.
The sides differ where dgraph's own components do: dgraph's ``hf_causal_lm`` runs GPT-2's
``gelu_new`` as torch's fused tanh GELU (same formula; logits agree to ~1e-6), TRL runs the
model as transformers builds it. Side ``trl`` turns GKDConfig's default gradient checkpointing
off (the same computation as dgraph's); side ``trl_default`` keeps every GKDConfig default.
Per step is the time between the ends of consecutive optimizer steps inside each framework's
own training loop (so its data fetch and bookkeeping count); on-policy steps (the student
generated) are reported apart. Held-out perplexity is computed the same way for both, on the
corpus' held-out sequences, after the same number of steps.

The script runs in its own virtual environment, never in the dev one: the first run creates
it (``--venv``, default ~/.cache/dgraph/peers-venv: torch 2.14.1 + torchvision 0.29.1, which
load together, torchdistill, trl, and this checkout installed editable), later runs reuse it,
and the script re-runs itself inside it.

    python benchmarks/peers.py                     # everything (10-15 min on 2 busy cores)
    python benchmarks/peers.py --only cls --rounds 12
    python benchmarks/peers.py --only llm --llm-runs 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_VENV = Path.home() / ".cache" / "dgraph" / "peers-venv"
# What the venv holds; a change here re-installs. torch 2.14.1 and torchvision 0.29.1 are the
# pair that loads together (PyPI's torchvision does not load beside torch 2.13).
PINS = {"torch": "2.14.1", "torchvision": "0.29.1", "torchdistill": "1.1.5", "trl": "1.16.0",
        "transformers": "5.24.0"}
INNER = "DGRAPH_PEERS_INNER"

# The hand and torchdistill sides repeat overhead.py's spec (its write_spec writes dgraph's side).
TEMPERATURE = 4.0
ALPHA_CE, BETA_KD = 0.1, 0.9
LR = 1e-3
CLS_CONFIGS = {
    "small": {"teacher": [256, 256], "student": [24], "batch": 64, "block": 40, "warmup": 40},
    "large": {"teacher": [2048, 2048], "student": [512, 512], "batch": 256, "block": 3,
              "warmup": 3},
}


# -- the virtual environment ---------------------------------------------------------------------
def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, log=print) -> float:
    """Create (or complete) the peers venv; seconds spent (0 when it was ready)."""
    marker = venv / "dgraph-peers.json"
    want = {**PINS, "repo": str(REPO)}
    if marker.is_file() and json.loads(marker.read_text()) == want and \
            venv_python(venv).is_file():
        return 0.0
    started = time.perf_counter()
    log(f"creating the peers venv in {venv} (once; a few minutes)")
    if not venv_python(venv).is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={PINS['torch']}", f"torchvision=={PINS['torchvision']}"],
                   check=True)
    subprocess.run([*pip, f"torchdistill=={PINS['torchdistill']}", f"trl=={PINS['trl']}",
                    f"transformers=={PINS['transformers']}"], check=True)
    # The checkout itself, editable: the benchmark measures the tree as it is.
    subprocess.run([*pip, "-e", str(REPO)], check=True)
    marker.write_text(json.dumps(want, indent=1))
    spent = time.perf_counter() - started
    log(f"peers venv ready in {spent:.0f} s")
    return spent


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# -- classification KD: dgraph, hand, torchdistill -------------------------------------------------
def _plain_mlp(widths: list[int], state: dict):
    """The dgraph MLP as the nn.Sequential a hand-written script (or torchdistill) uses."""
    import torch
    from torch import nn

    layers: list = []
    for a, b in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    model = nn.Sequential(*layers)
    linear = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    keys = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("body.")},
                  key=lambda k: int(k.split(".")[1])) + ["head"]
    with torch.no_grad():
        for index, key in zip(linear, keys, strict=True):
            model[index].weight.copy_(state[f"{key}.weight"])
            model[index].bias.copy_(state[f"{key}.bias"])
    return model


class HandKD:
    """Hinton KD in plain PyTorch: the loop a user writes."""

    def __init__(self, teacher, student, x, y, indices) -> None:
        import torch

        self.teacher, self.student = teacher.eval().requires_grad_(False), student
        self.optimizer = torch.optim.Adam(student.parameters(), lr=LR, fused=True)
        self.x, self.y, self.indices, self.i = x, y, indices, 0

    def step(self) -> None:
        import torch
        import torch.nn.functional as F

        index = self.indices[self.i]
        self.i += 1
        x, y = self.x.index_select(0, index), self.y.index_select(0, index)
        with torch.no_grad():
            t = self.teacher(x)
        s = self.student(x)
        kd = F.kl_div(F.log_softmax(s / TEMPERATURE, -1), F.log_softmax(t / TEMPERATURE, -1),
                      reduction="batchmean", log_target=True) * TEMPERATURE**2
        loss = BETA_KD * kd + ALPHA_CE * F.cross_entropy(s, y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class TorchdistillKD:
    """torchdistill's DistillationBox from a train_config, as its example scripts build it."""

    def __init__(self, teacher, student, x, y, indices, device) -> None:
        import logging

        from torchdistill.core.distillation import get_distillation_box

        logging.getLogger("torchdistill").setLevel(logging.WARNING)
        kd_kwargs = {"student_module_path": ".", "student_module_io": "output",
                     "teacher_module_path": ".", "teacher_module_io": "output",
                     "temperature": TEMPERATURE, "alpha": ALPHA_CE, "beta": BETA_KD,
                     "reduction": "batchmean"}
        train_config = {
            "num_epochs": 1,
            "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
            "student": {"forward_proc": "forward_batch_only"},
            "optimizer": {"key": "Adam", "kwargs": {"lr": LR, "fused": True}},
            "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {
                "kd": {"criterion": {"key": "KDLoss", "kwargs": kd_kwargs}, "weight": 1.0}}}},
        }
        teacher.eval()
        # No dataset: the batches are the BatchLoader's (indexed on device, as for the hand
        # loop); torchdistill's DataLoader would add per-example collation to its side only.
        self.box = get_distillation_box(teacher, student, {}, train_config, device, None,
                                        False, 1)
        self.box.pre_epoch_process(epoch=0)
        self.x, self.y, self.indices, self.i = x, y, indices, 0

    def step(self) -> None:
        index = self.indices[self.i]
        self.i += 1
        x, y = self.x.index_select(0, index), self.y.index_select(0, index)
        loss = self.box.forward_process(x, y, supp_dict=None)
        self.box.post_forward_process(loss)


def run_cls(name: str, cfg: dict, device, *, rounds: int, block: int | None, clock: str = "cpu",
            log=print) -> dict:
    """One classification job, three sides interleaved. ``clock``: "cpu" times each block by
    the main thread's CPU time (with one torch thread, all of a CPU step's work; what other
    processes take of the core is not counted), "wall" by the wall clock; both are kept."""
    import gc

    import torch

    sys.path.insert(0, str(HERE))
    from _timing import build_trainer
    from overhead import loader_indices, write_spec

    # overhead.py's KD spec on digits (same teacher weights, loss weights, temperature, lr).
    cfg = {**cfg, "name": f"peers_{name}", "data": "digits", "in_features": 64, "classes": 10}
    block = block or cfg["block"]
    warmup = cfg["warmup"]
    with tempfile.TemporaryDirectory(prefix="dgraph_peers_") as tmp:
        spec = write_spec(Path(tmp), cfg, device)
        trainer = build_trainer(spec, Path(tmp) / "run")
    stage = trainer.stages[0]
    student_state = {k: v.detach().clone()
                     for k, v in trainer.instances.modules["student"].state_dict().items()}
    teacher_state = trainer.instances.modules["teacher"].state_dict()
    loader = trainer.loaders["data"]
    indices = loader_indices(loader, warmup + rounds * block, device)
    x, y = loader.tensors["x"], loader.tensors["y"]
    t_widths = [64, *cfg["teacher"], 10]
    s_widths = [64, *cfg["student"], 10]

    def pair():
        return (_plain_mlp(t_widths, teacher_state).to(device),
                _plain_mlp(s_widths, student_state).to(device))

    hand = HandKD(*pair(), x, y, indices)
    td = TorchdistillKD(*pair(), x, y, indices, device)
    counter = {"step": 0}

    def dgraph_step() -> None:
        trainer.step_runner.run_update("main", stage, counter["step"], {})
        counter["step"] += 1

    arms = {"dgraph": dgraph_step, "hand": hand.step, "torchdistill": td.step}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    sync()
    wall: dict[str, list[float]] = {n: [] for n in arms}
    cpu: dict[str, list[float]] = {n: [] for n in arms}
    names = list(arms)
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(names)
            for arm in names[shift:] + names[:shift]:
                sync()
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(block):
                    arms[arm]()
                sync()
                wall[arm].append((time.perf_counter() - t0) / block)
                cpu[arm].append((time.thread_time() - c0) / block)
    finally:
        gc.enable()
    times = cpu if clock == "cpu" and device.type == "cpu" else wall
    final = trainer.instances.modules["student"].state_dict()
    hand_params = [p.detach() for p in hand.student.parameters()]
    td_params = [p.detach() for p in td.box.student_model.parameters()]
    dg_params = [final[k].detach() for k in sorted(final, key=_mlp_key_order)]
    diff_dgraph = max(float((a - b).abs().max()) for a, b in zip(dg_params, hand_params,
                                                                  strict=True))
    diff_td = max(float((a - b).abs().max()) for a, b in zip(td_params, hand_params,
                                                             strict=True))
    out = {"job": name, "teacher": cfg["teacher"], "student": cfg["student"],
           "batch": cfg["batch"], "rounds": rounds, "block": block,
           "clock": clock if device.type == "cpu" else "wall",
           "wall_ms": {a: [v * 1e3 for v in wall[a]] for a in arms},
           "cpu_ms": {a: [v * 1e3 for v in cpu[a]] for a in arms},
           "steps_per_side": warmup + rounds * block,
           "max_weight_diff_vs_hand": {"dgraph": diff_dgraph, "torchdistill": diff_td}}
    for arm, values in times.items():
        ratios = [v / h for v, h in zip(values, times["hand"], strict=True)]
        out[arm] = {"ms": statistics.median(values) * 1e3, "ms_min": min(values) * 1e3,
                    "ms_max": max(values) * 1e3, "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios), "ratio_max": max(ratios)}
    log(f"[{name}] " + ", ".join(f"{a} {out[a]['ms']:.3f} ms (x{out[a]['ratio']:.3f})"
                                  for a in arms)
        + f"; weights vs hand after {out['steps_per_side']} steps: dgraph "
        f"{diff_dgraph:.1e}, torchdistill {diff_td:.1e}")
    return out


def _mlp_key_order(key: str) -> tuple:
    parts = key.split(".")
    layer = int(parts[1]) if parts[0] == "body" else 10**6
    return (layer, 0 if parts[-1] == "weight" else 1)


# -- output --------------------------------------------------------------------------------------
def cls_table(results: list[dict]) -> str:
    lines = ["| job | hand ms/step | dgraph ms/step | torchdistill ms/step | dgraph / hand "
             "| torchdistill / hand |", "|---|---|---|---|---|---|"]
    for r in results:
        shape = f"student {r['student']}, teacher {r['teacher']}, batch {r['batch']}"

        def cell(arm: str, r: dict = r) -> str:
            return f"{r[arm]['ms']:.3f} ({r[arm]['ms_min']:.3f}-{r[arm]['ms_max']:.3f})"

        def ratio(arm: str, r: dict = r) -> str:
            return (f"{r[arm]['ratio']:.3f} ({r[arm]['ratio_min']:.3f}-"
                    f"{r[arm]['ratio_max']:.3f})")

        lines.append(f"| {r['job']} ({shape}) | {cell('hand')} | {cell('dgraph')} | "
                     f"{cell('torchdistill')} | {ratio('dgraph')} | {ratio('torchdistill')} |")
    return "\n".join(lines)


def machine_line() -> str:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread), python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


# -- main ----------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help=f"the peers virtual environment (default {DEFAULT_VENV})")
    parser.add_argument("--only", choices=["cls", "llm", "all"], default="all")
    parser.add_argument("--jobs", default="small,large", help="classification jobs")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds (cls)")
    parser.add_argument("--block", type=int, default=None,
                        help="steps per side per round (default: per job)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                        help="classification timing on CPU: the main thread's CPU time "
                        "(default; robust on a shared machine) or the wall clock (both are "
                        "in --json)")
    parser.add_argument("--llm-modes", default="kd,gkd", help="kd, gkd")
    parser.add_argument("--llm-runs", type=int, default=5,
                        help="rounds per mode (one run of each side per round)")
    parser.add_argument("--llm-sides", default="dgraph,trl,trl_default",
                        help="dgraph; trl: GKDTrainer with gradient checkpointing off (the "
                        "same computation); trl_default: GKDConfig's defaults (gradient "
                        "checkpointing on, generation without KV cache)")
    parser.add_argument("--kd-steps", type=int, default=60)
    parser.add_argument("--gkd-steps", type=int, default=30)
    parser.add_argument("--llm-work", type=Path, default=None,
                        help="keep the LLM inputs and runs in this folder (default: a "
                        "temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if os.environ.get(INNER) != "1":
        venv = args.venv.expanduser().resolve()
        setup_s = ensure_venv(venv)
        env = {**os.environ, INNER: "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "DGRAPH_PEERS_VENV_SETUP_S": f"{setup_s:.1f}",
               "DGRAPH_PEERS_VENV": str(venv), "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
        env.pop("VIRTUAL_ENV", None)
        return subprocess.run([str(venv_python(venv)), str(Path(__file__).resolve()), *argv],
                              env=env, check=False).returncode

    import torch

    torch.set_num_threads(1)
    device = torch.device(args.device)
    print(f"machine: {machine_line()}", flush=True)
    venv = Path(os.environ.get("DGRAPH_PEERS_VENV", sys.prefix))
    results: dict = {"machine": machine_line(), "command": "python benchmarks/peers.py "
                     + " ".join(argv), "pins": PINS, "venv": str(venv),
                     "venv_bytes": dir_size(venv),
                     "venv_setup_s": float(os.environ.get("DGRAPH_PEERS_VENV_SETUP_S", 0))}
    if args.only in ("cls", "all"):
        results["cls"] = []
        for job in [j.strip() for j in args.jobs.split(",") if j.strip()]:
            results["cls"].append(run_cls(job, CLS_CONFIGS[job], device, rounds=args.rounds,
                                          block=args.block, clock=args.clock))
    if args.only in ("llm", "all"):
        sys.path.insert(0, str(HERE))
        from _peers_llm import llm_table, run_llm

        results["llm"] = run_llm([m.strip() for m in args.llm_modes.split(",") if m.strip()],
                                 runs=args.llm_runs,
                                 steps={"kd": args.kd_steps, "gkd": args.gkd_steps},
                                 work=args.llm_work,
                                 sides=tuple(x.strip() for x in args.llm_sides.split(",")
                                             if x.strip()))
    print()
    print(f"machine: {results['machine']}")
    print(f"peers venv: {venv} ({results['venv_bytes'] / 2**30:.1f} GiB; "
          + ", ".join(f"{k} {v}" for k, v in PINS.items()) + ")")
    if "cls" in results:
        print()
        clock = ("main-thread CPU time" if results["cls"] and results["cls"][0]["clock"] ==
                 "cpu" else "wall clock")
        print(f"Classification KD, ms/step ({clock}) median (min-max) over "
              f"{args.rounds} interleaved rounds; ratios: median (min-max) of the per-round "
              "ratios:")
        print(cls_table(results["cls"]))
    if "llm" in results:
        print()
        print(llm_table(results["llm"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
