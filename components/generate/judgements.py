"""``arithmetic_judgements``: the arithmetic task's problems with true and corrupted answers,
labelled, for training a reward model (a sequence classifier) with dgraph itself.

For each problem ``"37+48="`` (the same seeded problems as ``arithmetic_task`` with the same
``seed``, ``max_operand`` and ``ops``, so the splits match) the source holds the text
``"37+48=85"`` labelled 1 and ``wrong_per_problem`` texts with a corrupted answer labelled 0:
the true answer moved by a nonzero offset drawn from ``-max_offset..max_offset`` (never
negative, never the true answer), the near misses a weak model makes. The texts are what a
``reward_model`` critic scores (``{prompt}{output}``), as byte tokens right-padded with
``<pad>`` (0), without ``<eos>``.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from dgraph.components.data.text import BYTE_VOCAB_SIZE, byte_tokenizer
from dgraph.components.generate.arithmetic import arithmetic_problems

from dgraph.declare import Labels, Mask, Outputs, Tokens, data, param
from dgraph.registry import BuildContext

__all__ = ["arithmetic_judgements", "corrupted_answers"]


def corrupted_answers(answer: str, n: int, *, max_offset: int, rng: random.Random) -> list[str]:
    """``n`` wrong answers near ``answer`` (distinct when there are enough)."""
    value = int(answer)
    choices = [value + d for d in range(-max_offset, max_offset + 1) if d and value + d >= 0]
    rng.shuffle(choices)
    return [str(v) for v in (choices * n)[:n]]


def _texts(problems: list[tuple[str, str]], wrong: int, max_offset: int, seed: int
           ) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for prompt, answer in problems:
        out.append((prompt + answer, 1))
        out += [(prompt + a, 0) for a in corrupted_answers(answer, wrong,
                                                            max_offset=max_offset, rng=rng)]
    return out


def _tensors(texts: list[tuple[str, int]], tok: Any, max_len: int) -> dict[str, Any]:
    import torch

    ids = torch.zeros((len(texts), max_len), dtype=torch.long)
    mask = torch.zeros((len(texts), max_len), dtype=torch.bool)
    for row, (text, _) in enumerate(texts):
        tokens = tok.encode(text, add_special_tokens=False).ids
        if len(tokens) > max_len:
            raise ValueError(f"'{text}' is {len(tokens)} tokens, over max_len {max_len}")
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = True
    labels = torch.tensor([label for _, label in texts], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _fits(p) -> None:  # noqa: ANN001 - the generated parameter model
    longest = 2 * len(str(p.max_operand)) + 1 + len(str(2 * p.max_operand + p.max_offset))
    if p.max_len < longest:
        raise ValueError(f"max_len ({p.max_len}) must hold the longest text ({longest} tokens "
                         f"for operands up to {p.max_operand})")


@data("arithmetic_judgements", check=_fits,
      sizes=lambda p: {"vocab_size": BYTE_VOCAB_SIZE})
def arithmetic_judgements(
    *,
    n_train: int = param(2000, gt=0, doc="training problems"),
    n_eval: int = param(200, gt=0, doc="held-out problems (disjoint from the training ones)"),
    max_operand: int = param(49, ge=1, le=99_999, doc="operands are drawn from 0..max_operand"),
    ops: Literal["+", "+-", "-"] = param("+", doc="the operations drawn"),
    seed: int = param(0, ge=0, doc="the problems' seed (that of arithmetic_task)"),
    wrong_per_problem: int = param(1, ge=1, le=16, doc="corrupted answers per problem"),
    max_offset: int = param(10, ge=1, doc="corrupted answers differ by 1..max_offset"),
    max_len: int = param(12, gt=1, doc="T: tokens per text"),
    batch_size: int = param(64, gt=0, doc="texts per batch"),
    context: BuildContext,
) -> Outputs(input_ids=Tokens("B, {max_len}", "prompt + answer bytes, right-padded (int64)"),
             attention_mask=Mask("B, {max_len}", "1 = real token"),
             labels=Labels("B", "1: the true answer, 0: a corrupted one")):
    """Arithmetic problems with their true answer (label 1) and corrupted ones (label 0)."""
    import torch

    from dgraph.data import DataSource

    loader = {"batch_size": batch_size, "shuffle": True, "drop_last": True}
    info: dict[str, object] = {"vocab_size": BYTE_VOCAB_SIZE, "pad_token_id": 0,
                               "num_classes": 2}
    if context.meta:
        def meta(n: int) -> dict[str, Any]:
            rows = n * (1 + wrong_per_problem)
            return {"input_ids": torch.empty((rows, max_len), dtype=torch.long, device="meta"),
                    "attention_mask": torch.empty((rows, max_len), dtype=torch.bool,
                                                  device="meta"),
                    "labels": torch.empty((rows,), dtype=torch.long, device="meta")}
        return DataSource(train=meta(n_train), eval=meta(n_eval), info=info, **loader)
    problems = arithmetic_problems(n_train + n_eval, max_operand=max_operand, ops=ops,
                                   seed=seed)
    tok = byte_tokenizer()
    info["tokenizer"] = tok
    train = _texts(problems[:n_train], wrong_per_problem, max_offset, seed)
    held_out = _texts(problems[n_train:], wrong_per_problem, max_offset, seed + 1)
    return DataSource(train=_tensors(train, tok, max_len), eval=_tensors(held_out, tok, max_len),
                      info=info, **loader)
