"""Black-box KD (a file of the teacher's outputs) against white-box KD: held-out perplexity.

Trains, per seed and for the same number of steps, the same 1-layer GPT-2 student with

* ``blackbox_kd``: the shipped teacher file only (276 dialogue prompts: a sampled response,
  top-4 log-probs per response token, 3 ranked candidates; CycleAlign-style ranking filter);
* ``blackbox_kd`` without the filter (``threshold = -1``: every example kept);
* ``llm_kd``: the forward token KL to the teacher's full distribution on the corpus text;
* ``llm_topk``: the teacher's cached top-16 log-probs on the corpus text;

and measures every final student on the same two held-out sets: the real responses of the
held-out dialogue pairs (what blackbox_kd's ``ppl`` reports) and the held-out corpus windows
(what llm_kd's reports). Prints a markdown table (mean ± std over the seeds).

    python benchmarks/blackbox_kd.py [--seeds 0] [--steps 400] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
STUDENT = {"model_type": "gpt2", "n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 258,
           "n_positions": 128, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}
ARMS = {"blackbox_kd": ("blackbox_kd", []),
        "blackbox_kd, no filter": ("blackbox_kd", ["nodes.agree.params.threshold=-1.0"]),
        "llm_kd (white-box, full KL)": ("llm_kd", []),
        "llm_topk (white-box, top-16)": ("llm_topk", [])}


def _build(type_name: str, **params: object) -> object:
    from dgraph.registry import COMPONENTS, BuildContext

    cls = COMPONENTS.get(type_name)
    return cls(cls.Params.model_validate(params), type_name).build(
        BuildContext(node=type_name))


def held_out_sets() -> dict[str, dict]:
    dialogue = _build("jsonl_pairs", truncate=True, max_len=96, max_prompt_len=48,
                      eval_fraction=0.1)
    corpus = _build("text_lm", seq_len=64)
    return {"dialogue responses": dialogue.eval, "corpus windows": corpus.eval}


def perplexity(weights: Path, split: dict) -> float:
    import torch
    import torch.nn.functional as F

    from dgraph.runtime.checkpoint import load_weights

    model = _build("hf_causal_lm", config=STUDENT)
    model.load_state_dict(load_weights(weights))
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for lo in range(0, len(split["input_ids"]), 128):
            part = {k: v[lo:lo + 128] for k, v in split.items()}
            logits = model(input_ids=part["input_ids"],
                           attention_mask=part["attention_mask"])["logits"]
            ce = F.cross_entropy(logits.flatten(0, 1), part["targets"].flatten(),
                                 reduction="none")
            mask = part["loss_mask"].flatten().bool()
            total += float(ce[mask].sum())
            count += float(mask.sum())
    return math.exp(total / count)


def compare(arms: dict[str, tuple[str, list[str]]], *, seeds: list[int], steps: int,
            out: Path, overwrite: bool = False) -> None:
    """Train every arm (spec, overrides) at every seed and print the held-out perplexities of
    the final students on the dialogue responses and corpus windows (mean ± std over seeds)."""
    from dgraph.api import train

    sets = held_out_sets()
    quiet = {"progress": False, "log": lambda *_: None}
    table: dict[str, dict[str, list[float]]] = {arm: {} for arm in arms}
    started = time.perf_counter()
    for seed in seeds:
        for arm, (spec, extra) in arms.items():
            run = out / f"{arm.split(' (')[0].replace(', ', '_').replace(' ', '_')}" \
                f"_seed{seed}"
            train(spec, out=run, overwrite=overwrite,
                  overrides=[f"train.seed={seed}", f"train.steps={steps}",
                             f"train.eval.every={steps}", *extra], **quiet)
            for name, split in sets.items():
                value = perplexity(run / "final" / "student.safetensors", split)
                table[arm].setdefault(name, []).append(value)
            print(f"seed {seed} {arm}: " + ", ".join(
                f"{n} {v[-1]:.2f}" for n, v in table[arm].items()), flush=True)
    print(f"\n{len(seeds)} seed(s), {steps} steps, {time.perf_counter() - started:.0f} s\n")
    print("| student | held-out PPL, dialogue responses | held-out PPL, corpus windows |")
    print("| --- | --- | --- |")
    for arm, values in table.items():
        cells = []
        for name in sets:
            v = values[name]
            cells.append(f"{v[0]:.2f}" if len(v) == 1
                         else f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}")
        print(f"| {arm} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_blackbox"))
    parser.add_argument("--quick", action="store_true", help="a few steps, one seed")
    args = parser.parse_args()
    from dgraph.registry import load_plugins

    load_plugins()
    if args.quick:
        args.seeds, args.steps = [0], 5
    # llm_topk looks for its teacher run beside its own run: the shared one, when trained.
    shared, beside = Path("runs/llm_teacher"), args.out / "llm_teacher"
    if (shared / "final").is_dir() and not beside.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        beside.symlink_to(shared.resolve())
    compare(ARMS, seeds=args.seeds, steps=args.steps, out=args.out)


if __name__ == "__main__":
    main()
