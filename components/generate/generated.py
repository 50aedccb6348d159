"""``generated_pairs``: training pairs from the newest dataset a generator node wrote.

The node names an ``lm_generator`` (``generator: traces``). The runtime rebuilds it after each
stage that runs that generator (and on resume), reading the JSONL file the generator wrote
last (its ``latest``): every kept ``{prompt, response}`` (their token ids when written)
becomes a next-token sequence like
``jsonl_pairs``' (the loss on the response and its ``<eos>``), tokenized with the prompts'
source's tokenizer. ``weight`` is each example's weight from the file.

The held-out split is the prompts' source's own (its reference answers, when it has them:
``arithmetic_task``), so held-out losses measure the real task; otherwise the kept set.
Before any dataset exists (the dry run, or a run's setup) the source holds ``batch_size``
padding rows of the declared shapes with ``loss_mask`` all 0; validation checks that no stage
trains on it before its generator has run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgraph.components._inputs import input_error
from dgraph.components.data.text import BYTE_VOCAB_SIZE, encode_pairs, sequence_ports
from dgraph.components.generate.arithmetic import meta_pairs

from dgraph.declare import NodeRef, Tensor, data, param
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import torch

__all__ = ["generated_pairs", "read_generated"]


def _fits(p) -> None:  # noqa: ANN001 - the generated parameter model
    if p.max_prompt_len >= p.max_len:
        raise ValueError(f"max_prompt_len ({p.max_prompt_len}) must be < max_len "
                         f"({p.max_len})")


def _vocab(_p) -> dict[str, int]:  # noqa: ANN001 - the generated parameter model
    return {"vocab_size": BYTE_VOCAB_SIZE}


def read_generated(path: Path) -> list[dict[str, Any]]:
    """The examples of a generated JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _placeholder(n: int, max_len: int, max_prompt_len: int) -> dict[str, torch.Tensor]:
    import torch

    tensors = encode_pairs([([], [])] * n, max_len, max_prompt_len, add_eos=False)
    tensors["weight"] = torch.zeros(n)
    return tensors


@data("generated_pairs", check=_fits, sizes=_vocab)
def generated_pairs(
    *,
    generator: NodeRef = param(doc="the lm_generator node whose newest dataset is read"),
    max_len: int = param(16, gt=1, doc="T: tokens per sequence (prompt + response + <eos>, "
                         "minus one)"),
    max_prompt_len: int = param(8, gt=0, doc="P: prompt tokens (left-padded)"),
    batch_size: int = param(64, gt=0, doc="sequences per batch"),
    shuffle: bool = param(True, doc="reshuffle the training set every epoch"),
    drop_last: bool = param(False, doc="skip the last incomplete training batch"),
    context: BuildContext,
) -> sequence_ports(
    "{max_len}", "{max_prompt_len}", "the prompt, left-padded",
    weight=Tensor("B", "each example's weight from the generator (float)"),
):
    """The newest kept set of ``generator`` as prompt/response training pairs."""
    import torch

    from dgraph.data import DataSource

    loader = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    info: dict[str, object] = {"vocab_size": BYTE_VOCAB_SIZE}
    if context.meta:
        meta = {**meta_pairs(batch_size, max_len, max_prompt_len),
                "weight": torch.empty((batch_size,), device="meta")}
        return DataSource(train=meta, eval=dict(meta), info=info, **loader)
    gen = context.references["generator"]
    source = getattr(gen, "prompt_source", None)
    if source is None or not hasattr(gen, "tokenizer"):
        raise input_error(context, "generator", "names a node that is not a generator",
                          code="not-a-generator", expected="an lm_generator node",
                          found=f"a {type(gen).__name__}",
                          hint="point generator at the spec's lm_generator node")
    tok = gen.tokenizer

    def encode(pairs: list[tuple[Any, Any]], where: str) -> dict[str, torch.Tensor]:
        ids = []
        for number, (prompt, response) in enumerate(pairs, 1):
            # Token ids as written (exact), or text to tokenize.
            p = prompt if isinstance(prompt, list) else \
                tok.encode(prompt, add_special_tokens=False).ids
            r = response if isinstance(response, list) else \
                tok.encode(response, add_special_tokens=False).ids
            if len(p) > max_prompt_len or len(p) + len(r) > max_len:
                raise input_error(
                    context, "max_len", f"{where} example {number} does not fit",
                    code="bad-data", expected=f"prompts of at most {max_prompt_len} tokens "
                    f"and prompt + response of at most {max_len}",
                    found=f"{len(p)} prompt and {len(r)} response tokens ({prompt!r} -> "
                    f"{response!r})", hint="raise max_len / max_prompt_len (and the "
                    "models' n_positions), or generate fewer tokens")
            ids.append((p, r))
        return encode_pairs(ids, max_len, max_prompt_len)

    texts = getattr(source, "info", {})
    held_out = None
    if texts.get("prompts", {}).get("eval") and texts.get("answers", {}).get("eval"):
        pairs = list(zip(texts["prompts"]["eval"], texts["answers"]["eval"], strict=True))
        held_out = encode(pairs, "held-out")
        held_out["weight"] = torch.ones(len(pairs))
    latest = getattr(gen, "latest", None)
    if latest is None:
        train = _placeholder(batch_size, max_len, max_prompt_len)
        info["generated"] = None
        return DataSource(train=train, eval=held_out or dict(train), info=info, **loader)
    examples = read_generated(Path(latest))
    if not examples:
        raise input_error(context, "generator", f"the generator kept no examples in {latest}",
                          code="empty-dataset", expected="at least one kept example",
                          found="0 lines", hint="lower the generator's threshold, sample "
                          "more (num_samples), or train the generating model longer")
    train = encode([(e.get("prompt_ids", e["prompt"]), e.get("response_ids", e["response"]))
                    for e in examples], f"{latest}:")
    train["weight"] = torch.tensor([float(e.get("weight", 1.0)) for e in examples])
    info.update({"generated": str(latest), "examples": len(examples)})
    loader["batch_size"] = min(batch_size, len(examples))
    return DataSource(train=train, eval=held_out or dict(train), info=info, **loader)
