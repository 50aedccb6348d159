"""Decoding helpers shared by the generator, the likelihood critic and ``exact_match``:
batched ``generate`` with sampling, greedy or beam search, forbidden and required token strings,
and the mean log-likelihood of given continuations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Candidate", "decode", "mean_loglik", "tokenizer_of"]


@dataclass
class Candidate:
    """One generated output for one prompt, as verifiers and critics see it."""

    index: int  # the prompt's index in the source's split
    prompt: str
    output: str
    answer: str | None  # the source's reference answer, when it has one
    prompt_ids: list[int]
    output_ids: list[int]  # without the final <eos>
    ended: bool  # the output ended with <eos> (not cut at max_new_tokens)
    scores: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # the node that generated it (a generator's model)


def tokenizer_of(source: Any) -> Any:
    """A data source's tokenizer (``info['tokenizer']``), else the byte tokenizer."""
    from dgraph.components.data.text import byte_tokenizer

    tok = getattr(source, "info", {}).get("tokenizer")
    return tok if tok is not None else byte_tokenizer()


def hf_model(module: Any) -> Any:
    """The transformers model inside a node's module (``hf_causal_lm`` keeps it as ``model``)."""
    return getattr(module, "model", module)


def _required_processor(required: list[list[int]], prompt_len: int, max_new_tokens: int,
                        eos_token_id: int) -> Any:
    """A logits processor that makes every output contain each ``required`` token string:
    ``<eos>`` is blocked while one is missing, and once the tokens left are just enough to
    write the missing ones, their next token is forced (the partial match at the end of the
    output continues)."""
    import torch
    from transformers import LogitsProcessor

    def progress(out: list[int], req: list[int]) -> int:
        for k in range(min(len(req) - 1, len(out)), 0, -1):
            if out[-k:] == req[:k]:
                return k
        return 0

    def contains(out: list[int], req: list[int]) -> bool:
        return any(out[i:i + len(req)] == req for i in range(len(out) - len(req) + 1))

    class Required(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            generated = input_ids[:, prompt_len:].tolist()
            left = max_new_tokens - (input_ids.shape[1] - prompt_len)
            for row, out in enumerate(generated):
                missing = [r for r in required if not contains(out, r)]
                if not missing:
                    continue
                scores[row, eos_token_id] = -float("inf")
                done = progress(out, missing[0])
                need = len(missing[0]) - done + sum(len(r) for r in missing[1:])
                if need >= left:
                    forced = missing[0][done]
                    keep = scores[row, forced].clone()
                    scores[row] = -float("inf")
                    scores[row, forced] = keep if torch.isfinite(keep) else 0.0
            return scores

    return Required()


def decode(module: Any, prompt_ids: Any, prompt_mask: Any, *, max_new_tokens: int,
           decoding: str = "greedy", num_samples: int = 1, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, num_beams: int = 1,
           forbidden: Sequence[list[int]] = (), required: Sequence[list[int]] = (),
           eos_token_id: int = 1, pad_token_id: int = 0) -> Any:
    """``[B * num_samples, max_new_tokens]`` generated tokens (the samples of a prompt in
    consecutive rows; after ``<eos>``, padding)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    sample = decoding == "sample"
    beams = max(num_beams, num_samples) if decoding == "beam" else 1
    config = GenerationConfig(
        do_sample=sample, max_new_tokens=max_new_tokens, num_beams=beams,
        num_return_sequences=num_samples,
        temperature=temperature if sample else None,
        top_k=(top_k or 0) if sample else None,
        top_p=(top_p if top_p is not None else 1.0) if sample else None,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None,
        bad_words_ids=[list(w) for w in forbidden] or None,
    )
    processors = LogitsProcessorList()
    if required:
        processors.append(_required_processor([list(r) for r in required],
                                              prompt_ids.shape[1], max_new_tokens,
                                              eos_token_id))
    model = hf_model(module)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask.long(),
                                  generation_config=config, logits_processor=processors,
                                  trust_remote_code=False)
    finally:
        model.train(was_training)
    out = full[:, prompt_ids.shape[1]:]
    if out.shape[1] < max_new_tokens:
        pad = torch.full((out.shape[0], max_new_tokens - out.shape[1]), pad_token_id,
                         dtype=out.dtype, device=out.device)
        out = torch.cat([out, pad], 1)
    return out


def split_output(row: list[int], eos_token_id: int) -> tuple[list[int], bool]:
    """The tokens before the first ``<eos>``, and whether there was one."""
    if eos_token_id in row:
        return row[:row.index(eos_token_id)], True
    return row, False


def mean_loglik(module: Any, candidates: Sequence[Candidate], *, eos_token_id: int = 1,
                batch_size: int = 256) -> list[float]:
    """Mean log-probability per token of each candidate's output (and its ``<eos>`` when it
    ended) given its prompt, under ``module``'s model."""
    import torch
    from dgraph.components.data.text import encode_pairs

    model = hf_model(module)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores: list[float] = []
    try:
        for start in range(0, len(candidates), batch_size):
            part = candidates[start:start + batch_size]
            pairs = [(c.prompt_ids, c.output_ids + ([eos_token_id] if c.ended else []))
                     for c in part]
            longest = max(len(p) + len(o) for p, o in pairs)
            prompt = max(len(p) for p, _ in pairs)
            t = encode_pairs(pairs, max(longest - 1, 1), prompt, add_eos=False)
            with torch.no_grad():
                logits = model(input_ids=t["input_ids"].to(device),
                               attention_mask=t["attention_mask"].long().to(device)).logits
            logp = torch.log_softmax(logits.float(), -1).gather(
                -1, t["targets"].to(device).unsqueeze(-1)).squeeze(-1)
            mask = t["loss_mask"].to(device)
            total = (logp * mask).sum(1)
            count = mask.sum(1).clamp(min=1)
            scores += (total / count).tolist()
    finally:
        model.train(was_training)
    return scores
