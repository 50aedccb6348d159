"""``arithmetic_task``: addition (and subtraction) problems with checkable answers, generated
by the repo itself from a seed.

Each example is a prompt ``"37+48="`` and its answer ``"85"``, in the byte-level tokens of the
text sources (:func:`dgraph.components.data.text.byte_tokenizer`: 258 ids, ``<pad>`` 0,
``<eos>`` 1), so the small GPT-2 models of the LLM zoo read it unchanged. The tensors are those
of ``jsonl_pairs`` (``input_ids``/``targets``/``attention_mask``/``loss_mask`` over
``prompt + answer + <eos>``, the loss on the answer and ``<eos>`` only; ``prompt_ids`` /
``prompt_mask`` left-padded for generation). The texts travel in the source's ``info``
(``prompts``/``answers`` per split, and the ``tokenizer``) for generators, verifiers and the
``exact_match`` metric.

Problems are drawn without repetition (``random.Random(seed)``); the held-out split is disjoint
from the training split.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal

from dgraph.components.data.text import BYTE_VOCAB_SIZE, byte_tokenizer, encode_pairs

from dgraph.declare import Mask, Outputs, Tokens, data, param
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import torch

__all__ = ["arithmetic_problems", "arithmetic_task", "pair_tensors"]


def _prompt_len(max_operand: int) -> int:
    return 2 * len(str(max_operand)) + 2  # "a+b="


def _fits(p) -> None:  # noqa: ANN001 - the generated parameter model
    need = _prompt_len(p.max_operand)
    if p.max_prompt_len < need:
        raise ValueError(f"max_prompt_len ({p.max_prompt_len}) must hold the longest prompt "
                         f"({need} tokens for operands up to {p.max_operand})")
    answer = len(str(2 * p.max_operand))
    if p.max_len < need + answer:
        raise ValueError(f"max_len ({p.max_len}) must hold the longest prompt, answer and "
                         f"<eos> ({need + answer + 1} tokens, minus one)")
    pairs = (p.max_operand + 1) ** 2
    if p.n_train + p.n_eval > pairs:
        raise ValueError(f"n_train + n_eval ({p.n_train + p.n_eval}) exceeds the {pairs} "
                         f"distinct problems with operands up to {p.max_operand}")


def _vocab(_p) -> dict[str, int]:  # noqa: ANN001 - the generated parameter model
    return {"vocab_size": BYTE_VOCAB_SIZE}


def arithmetic_problems(n: int, *, max_operand: int, ops: str, seed: int
                        ) -> list[tuple[str, str]]:
    """``n`` distinct ``(prompt, answer)`` pairs, e.g. ``("37+48=", "85")``, drawn from
    ``seed``. Subtraction keeps the result non-negative (``a >= b``)."""
    rng = random.Random(seed)
    seen: set[tuple[int, int, str]] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice(ops)
        if op == "-" and a < b:
            a, b = b, a
        if (a, b, op) in seen:
            continue
        seen.add((a, b, op))
        out.append((f"{a}{op}{b}=", str(a + b if op == "+" else a - b)))
    return out


def pair_tensors(pairs: list[tuple[str, str]], tokenizer: Any, *, max_len: int,
                 max_prompt_len: int) -> dict[str, torch.Tensor]:
    """Text pairs -> the next-token tensors of ``jsonl_pairs`` (answer + ``<eos>`` trained)."""
    ids = [(tokenizer.encode(p, add_special_tokens=False).ids,
            tokenizer.encode(r, add_special_tokens=False).ids) for p, r in pairs]
    return encode_pairs(ids, max_len, max_prompt_len)


def meta_pairs(n: int, max_len: int, max_prompt_len: int) -> dict[str, torch.Tensor]:
    """Meta tensors of the pair shapes (a dry run's batch)."""
    import torch

    def t(length: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty((n, length), dtype=dtype, device="meta")

    return {"input_ids": t(max_len, torch.long), "targets": t(max_len, torch.long),
            "attention_mask": t(max_len, torch.bool), "loss_mask": t(max_len, torch.bool),
            "prompt_ids": t(max_prompt_len, torch.long),
            "prompt_mask": t(max_prompt_len, torch.bool)}


PAIRS = Outputs(
    input_ids=Tokens("B, {max_len}", "prompt + answer tokens fed to the model (int64)"),
    targets=Tokens("B, {max_len}", "the next token of each position (int64)"),
    attention_mask=Mask("B, {max_len}", "1 = real input token"),
    loss_mask=Mask("B, {max_len}", "1 = the target is an answer token or the final <eos>"),
    prompt_ids=Tokens("B, {max_prompt_len}", "the prompt, left-padded"),
    prompt_mask=Mask("B, {max_prompt_len}", "1 = real prompt token"),
)


@data("arithmetic_task", check=_fits, sizes=_vocab)
def arithmetic_task(
    *,
    n_train: int = param(2000, gt=0, doc="training problems"),
    n_eval: int = param(200, gt=0, doc="held-out problems (disjoint from the training ones)"),
    max_operand: int = param(49, ge=1, le=99_999, doc="operands are drawn from 0..max_operand"),
    ops: Literal["+", "+-", "-"] = param("+", doc="the operations drawn"),
    seed: int = param(0, ge=0, doc="the problems' seed (not train.seed: every run of a "
                      "spec sees the same task)"),
    max_len: int = param(12, gt=1, doc="T: tokens per sequence"),
    max_prompt_len: int = param(8, gt=0, doc="P: prompt tokens (left-padded)"),
    batch_size: int = param(64, gt=0, doc="sequences per batch"),
    shuffle: bool = param(True, doc="reshuffle the training set every epoch"),
    drop_last: bool = param(True, doc="skip the last incomplete training batch"),
    context: BuildContext,
) -> PAIRS:
    """Seeded arithmetic problems ``"a+b="`` -> ``"c"`` as prompt/answer token pairs."""
    from dgraph.data import DataSource

    loader = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    info: dict[str, object] = {"vocab_size": BYTE_VOCAB_SIZE, "pad_token_id": 0,
                               "eos_token_id": 1}
    if context.meta:
        return DataSource(train=meta_pairs(n_train, max_len, max_prompt_len),
                          eval=meta_pairs(n_eval, max_len, max_prompt_len), info=info,
                          **loader)
    problems = arithmetic_problems(n_train + n_eval, max_operand=max_operand, ops=ops,
                                   seed=seed)
    train, held_out = problems[:n_train], problems[n_train:]
    tok = byte_tokenizer()
    info.update({
        "tokenizer": tok,
        "prompts": {"train": [p for p, _ in train], "eval": [p for p, _ in held_out]},
        "answers": {"train": [a for _, a in train], "eval": [a for _, a in held_out]},
    })
    sizes = {"max_len": max_len, "max_prompt_len": max_prompt_len}
    return DataSource(train=pair_tensors(train, tok, **sizes),
                      eval=pair_tensors(held_out, tok, **sizes), info=info, **loader)
