"""The LLM half of benchmarks/peers.py: dgraph's llm_kd / llm_gkd against TRL's GKDTrainer.

``run_llm`` prepares the shared inputs once (the teacher and the student initialisation as
save_pretrained folders, the tokenizer, the training batches in dgraph's loader order and the
held-out sequences), then runs each side in its own subprocess (``python _peers_llm.py worker
SIDE MODE WORKDIR STEPS``), pairs alternating which side starts. A worker prints one JSON line:
per-step times (and which steps generated), setup and training wall time, the RSS high-water
mark, and the held-out perplexity of its student. The TRL worker never imports dgraph.

Run inside the peers venv (peers.py re-runs itself there).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPT2 = {"model_type": "gpt2", "vocab_size": 258, "n_positions": 128, "bos_token_id": 1,
        "eos_token_id": 1, "pad_token_id": 0}
TEACHER = {**GPT2, "n_layer": 3, "n_embd": 96, "n_head": 4}      # specs/_llm_corpus.yaml
# specs/_llm_distil.yaml's student; dropout off, as TRL's disable_dropout makes it.
STUDENT = {**GPT2, "n_layer": 1, "n_embd": 64, "n_head": 2, "resid_pdrop": 0.0,
           "embd_pdrop": 0.0, "attn_pdrop": 0.0}
SPEC = {"kd": "llm_kd", "gkd": "llm_gkd"}
# TRL: lmbda (on-policy probability), beta (JSD; 0 = forward KL), sampling temperature.
TRL_SETTINGS = {"kd": {"lmbda": 0.0, "beta": 0.0, "temperature": 1.0, "max_new_tokens": 49},
                "gkd": {"lmbda": 0.5, "beta": 0.5, "temperature": 1.0, "max_new_tokens": 49}}
LR, WEIGHT_DECAY, CLIP = 3e-3, 0.01, 1.0   # specs/_llm.yaml
WARMUP = 3   # first steps left out of the per-step statistics
# trl: GKDTrainer with gradient checkpointing off (the same computation as dgraph's);
# trl_default: GKDConfig's defaults (SFTConfig turns gradient checkpointing on).
SIDES = ("dgraph", "trl", "trl_default")


def _rss_kib() -> tuple[int, int]:
    """(current RSS, high-water mark) of this process in KiB."""
    now = hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            now = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return now, max(hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def held_out_perplexity(model, ev: dict, batch: int = 32) -> float:
    """exp(mean next-token NLL) over the held-out sequences' loss_mask, same code both sides."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, ev["input_ids"].shape[0], batch):
            ids = ev["input_ids"][i:i + batch]
            mask = ev["attention_mask"][i:i + batch].long()
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            nll = F.cross_entropy(logits.float().flatten(0, 1),
                                  ev["targets"][i:i + batch].flatten(), reduction="none")
            keep = ev["loss_mask"][i:i + batch].flatten().bool()
            total += float(nll[keep].sum())
            count += float(keep.sum())
    return float(torch.exp(torch.tensor(total / max(count, 1.0))))


def dgraph_overrides(work: Path, steps: int) -> list[str]:
    return [f"nodes.teacher.params={json.dumps({'path': str(work / 'teacher_hf')})}",
            "nodes.teacher.init=null",
            f"nodes.student.params={json.dumps({'path': str(work / 'student_init')})}",
            f"train.steps={steps}", f"train.eval.every={steps}",
            f"train.checkpoint_every={steps}", f"train.log_every={steps}", "train.device=cpu"]


# -- preparation (this process, dgraph imported) -------------------------------------------------
def prepare(work: Path, modes: list[str], steps: dict[str, int], log=print) -> dict:
    import torch
    from dgraph.components.data.text import byte_tokenizer
    from dgraph.components.models.hf import HFCausalLM, save_pretrained_from_weights

    from dgraph.graph import validate
    from dgraph.runtime.train import Trainer
    from dgraph.spec import load_spec

    info: dict = {}
    weights = REPO / "runs" / "llm_teacher" / "final" / "teacher.safetensors"
    if not weights.is_file():
        from dgraph.api import train

        log("training the llm_teacher zoo run (runs/llm_teacher is missing)")
        train("llm_teacher", out=REPO / "runs" / "llm_teacher", progress=False,
              log=lambda *_: None)
    info["teacher"] = str(weights)
    teacher_dir = save_pretrained_from_weights(TEACHER, weights, work / "teacher_hf")
    byte_tokenizer().save(str(teacher_dir / "tokenizer.json"))
    torch.manual_seed(0)
    HFCausalLM.create(config=STUDENT).model.save_pretrained(str(work / "student_init"))
    for mode in modes:
        spec = load_spec(SPEC[mode], dgraph_overrides(work, steps[mode]))
        graph, _warnings = validate(spec)
        trainer = Trainer(graph, work / f"prep_{mode}", progress=False, log=lambda *_: None)
        loader = trainer.loaders["data"]
        drawn = [loader.next() for _ in range(steps[mode])]
        train = {k: torch.stack([b[k] for b in drawn]) for k in drawn[0]}
        ev = {k: v for k, v in trainer.instances.data["data"].eval.items()}
        torch.save({"train": train, "eval": ev}, work / f"batches_{mode}.pt")
        info[mode] = {"batch": int(train["input_ids"].shape[1]),
                      "seq_len": int(train["input_ids"].shape[2]),
                      "prompt_len": int(train["prompt_ids"].shape[2])
                      if "prompt_ids" in train else None,
                      "eval_sequences": int(ev["input_ids"].shape[0])}
        del trainer
    return info


# -- the workers (a fresh process each) ------------------------------------------------------------
class _GenerateFlag:
    """Wraps ``model.generate`` to note that the current step generated (on-policy)."""

    def __init__(self, model) -> None:
        self.hit = False
        original = model.generate

        def generate(*args, **kwargs):
            self.hit = True
            return original(*args, **kwargs)

        model.generate = generate


def worker_dgraph(mode: str, work: Path, steps: int) -> dict:
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from dgraph.graph import validate
    from dgraph.runtime.train import Trainer
    from dgraph.spec import load_spec

    data = torch.load(work / f"batches_{mode}.pt")
    spec = load_spec(SPEC[mode], dgraph_overrides(work, steps))
    graph, _warnings = validate(spec)
    run_dir = work / f"run_dgraph_{mode}_{os.getpid()}"
    run_dir.mkdir(parents=True)
    trainer = Trainer(graph, run_dir, progress=False, log=lambda *_: None)
    student = trainer.instances.modules["student"].model
    flag = _GenerateFlag(student)
    loader = trainer.loaders["data"]
    first = {}
    next_batch = loader.next

    def checked_next():
        batch = next_batch()
        if not first:
            first["same"] = bool(torch.equal(batch["input_ids"], data["train"]["input_ids"][0]))
        return batch

    loader.next = checked_next
    ends: list[tuple[float, float]] = []
    generated: list[bool] = []
    run_update = trainer.step_runner.run_update

    def timed_update(*args, **kwargs):
        flag.hit = False
        out = run_update(*args, **kwargs)
        ends.append((time.perf_counter(), time.thread_time()))
        generated.append(flag.hit)
        return out

    trainer.step_runner.run_update = timed_update
    rss_before, _ = _rss_kib()
    setup_s = time.perf_counter() - started
    t0 = (time.perf_counter(), time.thread_time())
    trainer.run()
    run_s = time.perf_counter() - t0[0]
    peak = _rss_kib()[1]
    coins = work / f"coins_{mode}_{steps}.json"
    if not coins.exists():  # the on-policy pattern that TRL's runs replay
        coins.write_text(json.dumps(generated))
    ppl = held_out_perplexity(student, data["eval"])
    return _report("dgraph", mode, t0, ends, generated, setup_s, run_s, ppl, rss_before, peak,
                   same_batches=first.get("same"))


def worker_trl(mode: str, work: Path, steps: int, *, defaults: bool = False) -> dict:
    """GKDTrainer. ``defaults=False`` (side "trl"): gradient checkpointing off, as dgraph's
    student runs (GKDConfig inherits SFTConfig's default ``gradient_checkpointing=True``, which
    recomputes the student's activations in backward and generates without a KV cache);
    ``defaults=True`` (side "trl_default"): that default kept."""
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    import logging

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    data = torch.load(work / f"batches_{mode}.pt")
    train = data["train"]
    batch_size = int(train["input_ids"].shape[1])
    student = AutoModelForCausalLM.from_pretrained(str(work / "student_init"))
    teacher = AutoModelForCausalLM.from_pretrained(str(work / "teacher_hf"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(work / "teacher_hf" /
                                                           "tokenizer.json"),
                                        pad_token="<pad>", eos_token="<eos>")

    class SameBatches:
        """dgraph's batch k at the k-th call, in the layout GKDTrainer reads."""

        def __init__(self) -> None:
            self.k = 0

        def __call__(self, _features):
            k, self.k = self.k, self.k + 1
            ids = torch.cat([train["input_ids"][k], train["targets"][k][:, -1:]], 1)
            attention = train["attention_mask"][k].long()
            attention = torch.cat([attention, attention[:, -1:]], 1)
            labels = ids.clone()
            labels[:, 0] = -100
            labels[:, 1:][~train["loss_mask"][k].bool()] = -100
            if "prompt_ids" in train:
                prompts, prompt_mask = train["prompt_ids"][k], train["prompt_mask"][k].long()
            else:  # llm_kd reads no prompts and TRL with lmbda 0 uses none
                prompts, prompt_mask = ids[:, :16], attention[:, :16]
            return {"input_ids": ids, "attention_mask": attention, "labels": labels,
                    "prompts": prompts, "prompt_attention_mask": prompt_mask}

    ends: list[tuple[float, float]] = []
    generated: list[bool] = []
    flag = _GenerateFlag(student)

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            flag.hit = False

        def on_step_end(self, args, state, control, **kwargs):
            ends.append((time.perf_counter(), time.thread_time()))
            generated.append(flag.hit)

    settings = TRL_SETTINGS[mode]
    coins = work / f"coins_{mode}_{steps}.json"
    if 0.0 < settings["lmbda"] < 1.0 and coins.exists():
        # The same steps generate as in dgraph's run (its torch-seeded coin), so that both
        # students see the same number of on-policy batches at the same steps: GKDTrainer
        # draws ``random.random() <= lmbda`` once per step.
        import trl.experimental.gkd.gkd_trainer as gkd_module

        pattern = iter(json.loads(coins.read_text()))

        class Replay:
            def __getattr__(self, name):
                return getattr(__import__("random"), name)

            @staticmethod
            def random() -> float:
                return 0.0 if next(pattern, False) else 1.0

        gkd_module.random = Replay()
    args = GKDConfig(
        output_dir=str(work / f"run_trl_{mode}_{os.getpid()}"), max_steps=steps,
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
        learning_rate=LR, weight_decay=WEIGHT_DECAY, lr_scheduler_type="cosine",
        warmup_steps=0, max_grad_norm=CLIP, logging_steps=10**6, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True,
        bf16=False, fp16=False, **settings,
        **({} if defaults else {"gradient_checkpointing": False}))
    # dgraph's AdamW: weight decay on every parameter, fused kernels; the schedule is TRL's.
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=WEIGHT_DECAY,
                                  fused=True)
    dataset = Dataset.from_dict({"idx": list(range(steps * batch_size))})
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args,
                         train_dataset=dataset, processing_class=tokenizer,
                         data_collator=SameBatches(), optimizers=(optimizer, None),
                         callbacks=[Timer()])
    rss_before, _ = _rss_kib()
    setup_s = time.perf_counter() - started
    t0 = (time.perf_counter(), time.thread_time())
    trainer.train()
    run_s = time.perf_counter() - t0[0]
    peak = _rss_kib()[1]
    ppl = held_out_perplexity(trainer.model, data["eval"])
    return _report("trl_default" if defaults else "trl", mode, t0, ends, generated, setup_s,
                   run_s, ppl, rss_before, peak,
                   gradient_checkpointing=bool(args.gradient_checkpointing))


def _report(side: str, mode: str, t0: tuple[float, float], ends: list[tuple[float, float]],
            generated: list[bool],
            setup_s: float, run_s: float, ppl: float, rss_before: int, peak: int,
            **extra) -> dict:
    """``peak_rss_mib``: the process's RSS high-water mark when its training call returned
    (imports, set-up, training, the framework's own end-of-run evaluation and saving; not the
    perplexity measured afterwards, which is the same code on both sides)."""
    marks = [t0, *ends]
    steps = [b[0] - a[0] for a, b in zip(marks[:-1], marks[1:], strict=True)]
    cpu = [b[1] - a[1] for a, b in zip(marks[:-1], marks[1:], strict=True)]
    return {"side": side, "mode": mode, "step_s": steps, "step_cpu_s": cpu,
            "generated": generated,
            "setup_s": setup_s, "run_s": run_s, "perplexity": ppl,
            "rss_before_train_mib": rss_before / 1024, "peak_rss_mib": peak / 1024, **extra}


# -- orchestration -----------------------------------------------------------------------------
def _run_worker(side: str, mode: str, work: Path, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "worker", side, mode,
                           str(work), str(steps)], env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {mode} worker failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    out = json.loads(lines[-1])
    out["process_wall_s"] = wall
    return out


def summarise(runs: list[dict]) -> dict:
    """Per side, medians (min, max) over the runs of: each run's median ms/step on data and on
    on-policy steps (wall clock, and the main thread's CPU time), the RSS peak, the held-out
    perplexity and the set-up time; and the dgraph / TRL ratios of the medians."""
    out: dict = {}
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        if not mine:
            continue
        per_run: dict[str, list[float]] = {}
        for clock, key in (("", "step_s"), ("_cpu", "step_cpu_s")):
            for kind, gen in (("data", False), ("on_policy", True)):
                values = []
                for r in mine:
                    picked = [t for i, (t, g) in enumerate(zip(r[key], r["generated"],
                                                               strict=True))
                              if i >= WARMUP and g == gen]
                    if picked:
                        values.append(statistics.median(picked) * 1e3)
                per_run[kind + clock] = values
        for key in ("peak_rss_mib", "rss_before_train_mib", "perplexity", "setup_s", "run_s",
                    "process_wall_s"):
            per_run[key] = [r[key] for r in mine]
        out[side] = {k: (statistics.median(v), min(v), max(v)) if v else None
                     for k, v in per_run.items()}
        out[side]["on_policy_steps"] = [sum(r["generated"]) for r in mine]
        out[side]["same_batches"] = [r.get("same_batches") for r in mine]
    for other in SIDES[1:]:
        if "dgraph" in out and other in out:
            out[f"ratios_{other}"] = {
                k: out["dgraph"][k][0] / out[other][k][0]
                for k in ("data", "on_policy", "data_cpu", "on_policy_cpu", "peak_rss_mib",
                          "perplexity", "setup_s")
                if out["dgraph"].get(k) and out[other].get(k)}
    return out


def run_llm(modes: list[str], *, runs: int, steps: dict[str, int], log=print,
            work: Path | None = None, sides: tuple[str, ...] = SIDES) -> dict:
    import tempfile

    results: dict = {"settings": {m: {"steps": steps[m], "trl": TRL_SETTINGS[m],
                                      "spec": SPEC[m]} for m in modes}}
    with tempfile.TemporaryDirectory(prefix="dgraph_peers_llm_") as tmp:
        work = Path(work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results["data"] = prepare(work, modes, steps, log=log)
        for mode in modes:
            all_runs: list[dict] = []
            for i in range(runs):
                # dgraph first in the first round: its on-policy pattern is what TRL replays;
                # then the order rotates.
                order = sides[i % len(sides):] + sides[:i % len(sides)]
                for side in order:
                    r = _run_worker(side, mode, work, steps[mode])
                    all_runs.append(r)
                    wall = statistics.median(r["step_s"][WARMUP:]) * 1e3
                    cpu = statistics.median(r["step_cpu_s"][WARMUP:]) * 1e3
                    log(f"[{mode} {i + 1}/{runs}] {side}: {wall:.1f} ms/step (cpu {cpu:.1f}; "
                        f"median), {sum(r['generated'])} generating steps, peak RSS "
                        f"{r['peak_rss_mib']:.0f} MiB, perplexity {r['perplexity']:.3f}, "
                        f"setup {r['setup_s']:.1f} s, train {r['run_s']:.1f} s", flush=True)
            results[mode] = {"summary": summarise(all_runs), "runs": all_runs}
    return results


def llm_table(results: dict) -> str:
    lines = ["LLM KD vs TRL GKDTrainer (trl: gradient checkpointing off, as dgraph; "
             "trl_default: GKDConfig's default gradient_checkpointing=True, which also "
             "generates without a KV cache): medians (min-max) over the runs of each run's "
             f"median ms/step (steps after the first {WARMUP}); wall clock, and in brackets the "
             "main thread's CPU time (what the step costs, whatever else the machine runs):",
             "",
             "| job | side | ms/step, data steps | ms/step, on-policy steps | peak RSS MiB "
             "| held-out perplexity | set-up s |", "|---|---|---|---|---|---|---|"]

    def cell(v, fmt="{:.1f}") -> str:
        if v is None:
            return "-"
        return f"{fmt.format(v[0])} ({fmt.format(v[1])}-{fmt.format(v[2])})"

    for mode in ("kd", "gkd"):
        if mode not in results:
            continue
        s = results[mode]["summary"]
        name = {"kd": "token-level KD (llm_kd vs lmbda 0, beta 0)",
                "gkd": "GKD (llm_gkd vs lmbda 0.5, beta 0.5)"}[mode]
        name += f", {results['settings'][mode]['steps']} steps"
        for side in SIDES:
            if side not in s:
                continue
            r = s[side]
            lines.append(f"| {name} | {side} | {cell(r['data'])} [cpu {cell(r['data_cpu'])}] | "
                         f"{cell(r['on_policy'])}"
                         + (f" [cpu {cell(r['on_policy_cpu'])}]" if r["on_policy_cpu"] else "")
                         + f" | {cell(r['peak_rss_mib'], '{:.0f}')} | "
                         f"{cell(r['perplexity'], '{:.3f}')} | {cell(r['setup_s'])} |")
        for other in SIDES[1:]:
            q = s.get(f"ratios_{other}")
            if not q:
                continue

            def ratio(key: str, q: dict = q) -> str:
                return f"{q[key]:.3f}" if key in q else "-"

            lines.append(f"| {name} | **dgraph / {other}** | {ratio('data')} [cpu "
                         f"{ratio('data_cpu')}] | {ratio('on_policy')} [cpu "
                         f"{ratio('on_policy_cpu')}] | {ratio('peak_rss_mib')} | "
                         f"{ratio('perplexity')} | {ratio('setup_s')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "worker":
        side, mode, work, steps = sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
        if side == "dgraph":
            out = worker_dgraph(mode, work, steps)
        else:
            out = worker_trl(mode, work, steps, defaults=side == "trl_default")
        print(json.dumps(out), flush=True)
    else:
        raise SystemExit(__doc__)
