"""Token-level KD of a causal LM vs the same student trained from scratch, same steps.

1. trains the small GPT-2-style teacher (zoo spec ``llm_teacher``) on the shipped
   Shakespeare corpus;
2. writes it with ``save_pretrained`` and loads it back through ``from_pretrained(path)``
   (the KD spec's teacher node gets ``path:``);
3. trains the ``llm_kd`` student (forward KL to the teacher) and the same student from
   scratch (next-token cross-entropy), same steps, same seed;
4. prints the held-out perplexities (``ppl/perplexity`` of each run's summary.json).

As in the digits demo, the students see only part of the training text (``student_examples``
sequences; the teacher saw all of it): the regime where distillation pays, since the
teacher's soft targets carry what the hard next tokens of a small sample do not.

    python benchmarks/llm_kd.py [--tiny] [--out DIR]

``--tiny`` is the CI-sized version (a 2-layer teacher, a few hundred steps in all).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GPT2 = {"model_type": "gpt2", "vocab_size": 258, "n_positions": 128, "bos_token_id": 1,
        "eos_token_id": 1, "pad_token_id": 0}
FULL = {"teacher": {**GPT2, "n_layer": 3, "n_embd": 96, "n_head": 4},
        "student": {**GPT2, "n_layer": 1, "n_embd": 64, "n_head": 2},
        "teacher_steps": 800, "student_steps": 400, "batch": 32, "seq_len": 64,
        "student_examples": 256}
TINY = {"teacher": {**GPT2, "n_layer": 2, "n_embd": 64, "n_head": 2},
        "student": {**GPT2, "n_layer": 1, "n_embd": 32, "n_head": 2},
        "teacher_steps": 400, "student_steps": 150, "batch": 32, "seq_len": 32,
        "teacher_lr": 0.01, "student_examples": 64}


def _flow(value) -> str:
    return json.dumps(value)


def run(workdir: Path, setup: dict, *, log=print) -> dict[str, float]:
    """Teacher, save_pretrained round trip, KD student and scratch student; perplexities."""
    from dgraph.components.models.hf import save_pretrained_from_weights

    from dgraph.api import train

    workdir = Path(workdir)
    data = [f"nodes.data.params.seq_len={setup['seq_len']}",
            f"nodes.data.params.batch_size={setup['batch']}"]
    quiet = {"progress": False, "log": lambda *_: None}
    started = time.perf_counter()
    teacher_summary = train("llm_teacher", out=workdir / "llm_teacher", overrides=[
        *data, f"nodes.teacher.params.config={_flow(setup['teacher'])}",
        f"updates.main.optimizer.lr={setup.get('teacher_lr', 0.003)}",
        f"train.steps={setup['teacher_steps']}", f"train.eval.every={setup['teacher_steps']}",
        f"train.checkpoint_every={setup['teacher_steps']}"], **quiet)
    teacher_s = time.perf_counter() - started
    pretrained = save_pretrained_from_weights(
        setup["teacher"], workdir / "llm_teacher" / "final" / "teacher.safetensors",
        workdir / "teacher_hf")
    from dgraph.components.data.text import byte_tokenizer

    byte_tokenizer().save(str(pretrained / "tokenizer.json"))  # the tokenizer next to it
    steps = setup["student_steps"]
    subset = setup.get("student_examples")
    if subset:  # the students see a subset of the text; the teacher saw all of it
        data = [*data, f"nodes.data.params.max_examples={subset}"]
    common = [*data, f"nodes.teacher.params={_flow({'path': str(pretrained)})}",
              "nodes.teacher.init=null",
              f"nodes.student.params.config={_flow(setup['student'])}",
              f"train.steps={steps}", f"train.eval.every={steps}",
              f"train.checkpoint_every={steps}"]
    kd = train("llm_kd", out=workdir / "llm_kd", overrides=common, **quiet)
    ce = {"kind": "loss", "type": "token_ce", "inputs": {
        "logits": "student.logits", "targets": "data.targets", "mask": "data.loss_mask"}}
    scratch = train("llm_kd", out=workdir / "llm_scratch", overrides=[
        *common, f"nodes.ce={_flow(ce)}", "updates.main.objective.kd=0.0",
        "updates.main.objective.ce=1.0"], **quiet)
    result = {"teacher_perplexity": teacher_summary["ppl/perplexity"],
              "kd_student_perplexity": kd["ppl/perplexity"],
              "scratch_student_perplexity": scratch["ppl/perplexity"],
              "teacher_train_s": teacher_s,
              "total_s": time.perf_counter() - started}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CI-sized models and steps")
    parser.add_argument("--out", default=None, help="keep the runs here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 is much faster on "
                        "a small shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    setup = TINY if args.tiny else FULL
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.out or tmp), setup)
    print(f"teacher ({setup['teacher']['n_layer']}x{setup['teacher']['n_embd']}, "
          f"{setup['teacher_steps']} steps) held-out perplexity: "
          f"{result['teacher_perplexity']:.3f}")
    print(f"student ({setup['student']['n_layer']}x{setup['student']['n_embd']}, "
          f"{setup['student_steps']} steps) from scratch:        "
          f"{result['scratch_student_perplexity']:.3f}")
    print(f"student ({setup['student']['n_layer']}x{setup['student']['n_embd']}, "
          f"{setup['student_steps']} steps) with KD (forward KL): "
          f"{result['kd_student_perplexity']:.3f}")
    print(f"ratio scratch/KD perplexity: "
          f"{result['scratch_student_perplexity'] / result['kd_student_perplexity']:.3f}   "
          f"(total {result['total_s']:.0f} s)")
    return 0 if result["kd_student_perplexity"] < result["scratch_student_perplexity"] else 1


if __name__ == "__main__":
    sys.exit(main())
