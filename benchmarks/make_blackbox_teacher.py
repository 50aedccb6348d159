"""Write components/data/corpus/blackbox_teacher.jsonl: a black-box teacher's outputs.

The "black box" is the zoo's small LM teacher (``llm_teacher``: a 3-layer GPT-2 trained on
the shipped Shakespeare plays, byte tokens), which the ``blackbox_kd`` spec never loads: it
only reads this file. For every training prompt of the shipped dialogue pairs
(``shakespeare_dialogue.jsonl`` as ``jsonl_pairs`` serves it: truncate, max_len 96,
max_prompt_len 48, eval_fraction 0.1 — so the held-out 10% of the pairs stay unseen) the
script writes

* ``response``: 40 tokens sampled from the teacher (temperature 0.7, top-k 20);
* ``topk``: per response token, the teacher's 4 most likely token ids and their
  log-probabilities (3 decimals), given the prompt and the response so far;
* ``candidates``: 3 more samples of 32 tokens (temperature 1.0, top-k 20), and ``ranking``:
  their indices ordered by the teacher's mean token log-likelihood, best first.

Usage: ``python benchmarks/make_blackbox_teacher.py [--teacher RUN_DIR] [--out FILE]``
(the teacher run defaults to runs/llm_teacher, trained first if missing). Seeded: the same
teacher weights give the same file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dgraph.registry import COMPONENTS, BuildContext, load_plugins

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "components" / "data" / "corpus" / "blackbox_teacher.jsonl"
CONFIG = {"model_type": "gpt2", "n_layer": 3, "n_embd": 96, "n_head": 4, "vocab_size": 258,
          "n_positions": 128, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}
PAIRS = {"truncate": True, "max_len": 96, "max_prompt_len": 48, "eval_fraction": 0.1}
K, RESPONSE, CANDIDATES, CAND_LEN = 4, 40, 3, 32


def build(type_name: str, **params: object) -> object:
    cls = COMPONENTS.get(type_name)
    component = cls(cls.Params.model_validate(params), type_name)
    return component.build(BuildContext(node=type_name))


def teacher_module(run: Path) -> torch.nn.Module:
    from dgraph.runtime.checkpoint import load_weights

    weights = run / "final" / "teacher.safetensors"
    if not weights.exists():
        from dgraph.api import train

        train("llm_teacher", out=run, progress=False)
    module = build("hf_causal_lm", config=CONFIG)
    module.load_state_dict(load_weights(weights))
    return module.eval()


def sample(model: torch.nn.Module, prompt: list[int], n: int, length: int,
           temperature: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` continuations of ``length`` tokens (byte ids 2..257 only: no <pad>/<eos>)."""
    ids = torch.tensor([prompt] * n)
    for _ in range(length):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"][:, -1]
        logits = logits.float() / temperature
        logits[:, :2] = -float("inf")
        top = logits.topk(20, dim=-1)
        probs = torch.softmax(top.values, -1)
        choice = top.indices.gather(-1, torch.multinomial(probs, 1, generator=gen))
        ids = torch.cat([ids, choice], 1)
    return ids[:, len(prompt):]


def logprobs(model: torch.nn.Module, prompt: list[int], cont: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``[n, len(cont), V]`` of the positions predicting ``cont``."""
    ids = torch.cat([torch.tensor([prompt] * len(cont)), cont], 1)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"].float()
    return torch.log_softmax(logits[:, len(prompt) - 1:-1], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("runs/llm_teacher"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    load_plugins()
    from dgraph.components.data.text import byte_tokenizer

    torch.manual_seed(0)
    model = teacher_module(args.teacher)
    tok = byte_tokenizer()
    source = build("jsonl_pairs", **PAIRS)
    gen = torch.Generator().manual_seed(0)
    lines = []
    with torch.no_grad():
        for ids, mask in zip(source.train["prompt_ids"], source.train["prompt_mask"],
                             strict=True):
            prompt = ids[mask].tolist()
            text = tok.decode(prompt, skip_special_tokens=False)
            while True:  # a sample whose text encodes back to the same bytes
                response = sample(model, prompt, 1, RESPONSE, 0.7, gen)
                response_text = tok.decode(response[0].tolist())
                if tok.encode(response_text, add_special_tokens=False).ids == \
                        response[0].tolist():
                    break
            top = logprobs(model, prompt, response)[0].topk(K, dim=-1)
            cands = sample(model, prompt, CANDIDATES, CAND_LEN, 1.0, gen)
            cand_lp = logprobs(model, prompt, cands).gather(-1, cands.unsqueeze(-1))[..., 0]
            ranking = cand_lp.mean(-1).argsort(descending=True).tolist()
            lines.append({
                "prompt": text, "response": response_text,
                "topk": {"ids": top.indices.tolist(),
                         "logprobs": [[round(v, 3) for v in row]
                                      for row in top.values.tolist()]},
                "candidates": [tok.decode(c.tolist()) for c in cands],
                "ranking": ranking})
    args.out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n"
                                for line in lines), encoding="utf-8")
    print(f"wrote {len(lines)} prompts to {args.out} ({args.out.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
