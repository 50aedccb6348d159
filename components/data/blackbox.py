"""``blackbox_teacher``: a teacher that is only a JSONL file of its outputs, keyed by prompt.

A black-box teacher (an API model, or any model whose weights the run cannot see) is known
only by what it wrote. Each line of the file is one object::

    {"prompt": "...",                    # the key: a prompt as the data node serves it
     "response": "...",                  # the teacher's text (sequence-level KD targets)
     "topk": {"ids": [[...k], ...],      # or "tokens": token strings of the tokenizer
              "logprobs": [[...k], ...]}, # per response token: the teacher's k best
     "candidates": ["...", ...],         # responses the teacher ranked
     "ranking": [2, 0, 1]}               # candidate indices, best first

Only ``prompt`` is always required; ``response`` (and ``topk``, ``candidates``/``ranking``
when the node's ``k``/``candidates`` ask for them) must be there for every prompt used.

It is a **data source**, not a teacher node: a file of outputs has no computation to run per
step, and as data it is joined once, batched, shuffled and resumed like any other source; the
teacher never appears in the graph (as in ``llm_topk``). The node reads its prompts from
another data node (``prompts``: a ``jsonl_pairs`` or ``text_lm`` node, anything with
``prompt_ids``/``prompt_mask``): every training prompt is decoded with ``tokenizer`` and
looked up in the file. A prompt the file lacks, a malformed line, a top-k token the tokenizer
does not know, a ranking that is not a permutation: each is a located error naming the file
and line (or the prompt and the data node).

Training split: ``prompt + response (+ <eos>)`` sequences (``encode_pairs``, the response
masked in ``loss_mask``) with, per response position, the teacher's top-k log-probs
(``topk_logprobs``/``topk_indices`` ``[B, T, k]``, ``topk_mask`` where given), and the
candidates as ``cand_ids``/``cand_targets``/``cand_attention``/``cand_loss_mask``
``[B, C, T]`` with
``teacher_rank`` ``[B, C]`` (0 = the teacher's best). Held-out split: the prompts node's own
held-out sequences (real data; no teacher entries needed), with empty top-k and candidates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgraph.components._inputs import existing_path, input_error
from dgraph.components.data.text import (
    CORPUS_DIR,
    TokenizerParams,
    _encode,
    build_tokenizer,
    encode_pairs,
    special_ids,
)
from pydantic import Field

from dgraph.declare import LogProbs, Mask, NodeRef, Outputs, Tensor, Tokens, data, param
from dgraph.errors import Location, Problem, ValidationError
from dgraph.ports import Port
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import torch

__all__ = ["blackbox_teacher", "read_teacher_file"]

SHIPPED = "blackbox_teacher.jsonl"

_SEQ = {
    "input_ids": Tokens("B, {max_len}", "prompt + teacher response (train) / real data (eval)"),
    "targets": Tokens("B, {max_len}", "the next token of each position"),
    "attention_mask": Mask("B, {max_len}", "1 = real token"),
    "loss_mask": Mask("B, {max_len}", "1 = a response token (or <eos>) is predicted"),
    "prompt_ids": Tokens("B, {max_prompt_len}", "prompts, left-padded"),
    "prompt_mask": Mask("B, {max_prompt_len}", "1 = real prompt token"),
}
_TOPK = {
    "topk_logprobs": LogProbs("B, {max_len}, {k}", "the teacher's top-k log-probabilities"),
    "topk_indices": Tokens("B, {max_len}, {k}", "their token ids"),
    "topk_mask": Mask("B, {max_len}", "1 = the file gives the teacher's top-k here"),
}
_CANDIDATES = {
    "cand_ids": Tokens("B, {candidates}, {max_len}", "prompt + candidate response"),
    "cand_targets": Tokens("B, {candidates}, {max_len}", "the next token of each position"),
    "cand_attention": Mask("B, {candidates}, {max_len}", "1 = real token"),
    "cand_loss_mask": Mask("B, {candidates}, {max_len}", "1 = a candidate token is predicted"),
    "teacher_rank": Tensor("B, {candidates}", "the teacher's rank of each candidate (0 = "
                           "best; int64)"),
}


def _ports(p) -> dict[str, Port]:  # noqa: ANN001 - the generated parameter model
    ports = dict(_SEQ)
    if p.k:
        ports.update(_TOPK)
    if p.candidates:
        ports.update(_CANDIDATES)
    return {name: port if isinstance(port, Port) else port(None) for name, port in ports.items()}


def _sizes(p) -> dict[str, int]:  # noqa: ANN001 - the generated parameter model
    return {"vocab_size": p.tokenizer.size}


def _check(p) -> None:  # noqa: ANN001 - the generated parameter model
    if p.max_prompt_len >= p.max_len:
        raise ValueError(f"max_prompt_len ({p.max_prompt_len}) must be < max_len ({p.max_len})")


def _problem(file: Path, line: int, node: str, message: str, expected: str, found: str,
             hint: str) -> ValidationError:
    return ValidationError([Problem(code="bad-data", location=Location(str(file), line, 1),
                                    node=node, message=message, expected=expected,
                                    found=found, suggestion=hint)])


def read_teacher_file(file: Path, node: str = "blackbox_teacher") -> dict[str, tuple[int, dict]]:
    """``{prompt: (line number, entry)}`` of a black-box teacher file; a located error for a
    line that is not a JSON object with a string ``prompt``, or a prompt given twice."""
    entries: dict[str, tuple[int, dict]] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise _problem(file, number, node, f"line {number} of {file} is not JSON",
                           "one JSON object per line", f"{type(exc).__name__}: {exc}",
                           "fix or remove the line") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise _problem(file, number, node, f"line {number} of {file} has no prompt",
                           "an object with a string 'prompt'",
                           f"{type(obj).__name__} {str(obj)[:80]}", "fix the line")
        if obj["prompt"] in entries:
            raise _problem(file, number, node, f"line {number} of {file} repeats the prompt "
                           f"of line {entries[obj['prompt']][0]}", "one line per prompt",
                           repr(obj["prompt"][:80]), "keep one of them")
        entries[obj["prompt"]] = (number, obj)
    return entries


_TOKENIZER = Field(default_factory=TokenizerParams,
                   description="{kind: byte|bpe|file, vocab_size, ...}: the prompts' "
                   "tokenizer")


@data("blackbox_teacher", check=_check, sizes=_sizes, output_ports=_ports)
def blackbox_teacher(
    *,
    prompts: NodeRef = param(doc="the data node whose prompts (prompt_ids/prompt_mask) the "
                             "file answers; its held-out split is served as this node's"),
    path: str | None = param(None, doc="the teacher's JSONL file, relative to the spec's "
                             "folder; default: the shipped one (blackbox_teacher.jsonl, "
                             "made by benchmarks/make_blackbox_teacher.py)"),
    tokenizer: TokenizerParams = _TOKENIZER,
    max_len: int = param(96, gt=1, doc="T: tokens per sequence (the prompts node's)"),
    max_prompt_len: int = param(48, gt=0, doc="P: prompt tokens (the prompts node's)"),
    k: int = param(0, ge=0, doc="teacher top-k entries served per position (0: none)"),
    candidates: int = param(0, ge=0, doc="ranked candidates served per prompt (0: none)"),
    add_eos: bool = param(True, doc="append <eos> to responses and candidates"),
    truncate: bool = param(True, doc="cut responses that do not fit max_len (otherwise an "
                           "error naming the line)"),
    batch_size: int = param(32, gt=0, doc="sequences per batch"),
    context: BuildContext,
) -> Outputs(**_SEQ, **_TOPK, **_CANDIDATES):
    """Sequences, top-k log-probs and rankings from a file of a black-box teacher's outputs.

    The file is joined with another data node's prompts (see the module's documentation).
    """
    import torch

    from dgraph.data import DataSource

    loader = {"batch_size": batch_size, "shuffle": True, "drop_last": True}
    source = prompts
    if context.meta:
        _teacher_path(path, context)

        def split(n: int) -> dict[str, torch.Tensor]:
            return _empty(n, max_len, max_prompt_len, k, candidates, device="meta")

        return DataSource(train=split(batch_size), eval=split(batch_size), **loader)
    file = _teacher_path(path, context)
    node = context.node
    train = getattr(source, "train", None) or {}
    if "prompt_ids" not in train or "prompt_mask" not in train:
        raise input_error(context, "prompts", "the node named by 'prompts' serves no prompts",
                          expected="a data node with prompt_ids and prompt_mask (jsonl_pairs, "
                          "text_lm)", found=f"ports {sorted(train)}",
                          hint="name the spec's prompt data node")
    entries = read_teacher_file(file, node)
    tok = build_tokenizer(tokenizer, [], context)
    pad_id, eos_id = special_ids(tok, tokenizer, context)
    vocab = tokenizer.size
    # The data node is the one params.prompts names (the error's location shows it).
    read = getattr(source, "info", {}).get("path")
    prompt_name = "the prompts node" + (f" (reading {Path(str(read)).name})" if read else "")
    pairs, cand_pairs, ranks, topks = [], [], [], []
    for i, (ids, mask) in enumerate(zip(train["prompt_ids"], train["prompt_mask"],
                                        strict=True)):
        prompt_ids = ids[mask.bool()].tolist()
        prompt = tok.decode(prompt_ids, skip_special_tokens=False)
        if prompt not in entries:
            raise input_error(
                context, "prompts", f"the teacher file {file} has no line for training "
                f"prompt {i} of {prompt_name}", code="bad-data",
                expected=f"a line {{\"prompt\": ...}} for every training prompt of "
                f"{prompt_name} ({len(train['prompt_ids'])} prompts; the file has "
                f"{len(entries)} lines)", found=f"no line with prompt {prompt[-120:]!r}",
                hint="add the prompt's line to the file (regenerate it), or give the data "
                "node only the prompts the file answers")
        line, entry = entries[prompt]

        def need(key: str, line: int = line, entry: dict = entry) -> Any:
            if key not in entry:
                raise _problem(file, line, node, f"line {line} of {file} has no '{key}'",
                               f"'{key}' for every prompt (the node's parameters use it)",
                               f"keys {sorted(entry)}", f"add '{key}', or drop what needs "
                               "it from the node's parameters")
            return entry[key]

        response = need("response")
        if not isinstance(response, str):
            raise _problem(file, line, node, f"line {line}: 'response' is not a string",
                           "a string", type(response).__name__, "fix the line")
        resp_ids = _encode(tok, response)
        room = max_len + 1 - len(prompt_ids) - int(add_eos)
        if len(resp_ids) > room:
            if not truncate:
                raise _problem(file, line, node, f"line {line}: the response does not fit "
                               "max_len", f"at most {room} response tokens",
                               f"{len(resp_ids)} tokens", "raise max_len or set truncate")
            resp_ids = resp_ids[:room]
        pairs.append((prompt_ids, resp_ids))
        if k:
            topks.append(_topk(need("topk"), tok, vocab, k, len(prompt_ids), len(resp_ids),
                               add_eos, max_len, file, line, node))
        if candidates:
            cands, ranking = need("candidates"), need("ranking")
            if not (isinstance(cands, list) and len(cands) == candidates
                    and all(isinstance(c, str) for c in cands)):
                raise _problem(file, line, node, f"line {line}: 'candidates' is not a list "
                               f"of {candidates} strings", f"{candidates} candidate responses",
                               str(cands)[:120], "fix the line or the node's candidates")
            if sorted(ranking) != list(range(candidates)) if isinstance(ranking, list) \
                    else True:
                raise _problem(file, line, node, f"line {line}: 'ranking' is not a "
                               f"permutation of the {candidates} candidates",
                               f"candidate indices 0..{candidates - 1}, best first",
                               str(ranking)[:120], "fix the line")
            rank = [0] * candidates
            for position, index in enumerate(ranking):
                rank[index] = position
            ranks.append(rank)
            cand_pairs += [(prompt_ids, _encode(tok, c)[:room]) for c in cands]
    out = encode_pairs(pairs, max_len, max_prompt_len, add_eos=add_eos, pad_id=pad_id,
                       eos_id=eos_id)
    n = len(pairs)
    if k:
        out["topk_logprobs"] = torch.stack([t[0] for t in topks])
        out["topk_indices"] = torch.stack([t[1] for t in topks])
        out["topk_mask"] = torch.stack([t[2] for t in topks])
    if candidates:
        cand = encode_pairs(cand_pairs, max_len, max_prompt_len, add_eos=add_eos,
                            pad_id=pad_id, eos_id=eos_id)
        out["cand_ids"] = cand["input_ids"].view(n, candidates, max_len)
        out["cand_targets"] = cand["targets"].view(n, candidates, max_len)
        out["cand_attention"] = cand["attention_mask"].view(n, candidates, max_len)
        out["cand_loss_mask"] = cand["loss_mask"].view(n, candidates, max_len)
        out["teacher_rank"] = torch.tensor(ranks, dtype=torch.long)
    evaluation = None
    held = getattr(source, "eval", None)
    if held:
        lengths = {p: held[p].shape[1] for p in ("input_ids", "prompt_ids") if p in held}
        if lengths != {"input_ids": max_len, "prompt_ids": max_prompt_len}:
            raise input_error(context, "max_len", f"the held-out sequences of {prompt_name} "
                              "have other lengths", code="bad-data",
                              expected=f"T = max_len ({max_len}), P = max_prompt_len "
                              f"({max_prompt_len})", found=str(lengths),
                              hint="give this node the prompts node's max_len and "
                              "max_prompt_len")
        size = held["input_ids"].shape[0]
        evaluation = _empty(size, max_len, max_prompt_len, k, candidates)
        evaluation.update({p: held[p] for p in _SEQ})
    return DataSource(train=out, eval=evaluation, **loader,
                      info={"teacher_file": str(file), "prompts": n, "vocab_size": vocab,
                            "pad_token_id": pad_id, "eos_token_id": eos_id})


def _teacher_path(path: str | None, context: BuildContext) -> Path:
    if path is None:
        return CORPUS_DIR / SHIPPED
    return existing_path(context, "path", path, kind="file",
                         what="a JSONL file of a teacher's outputs keyed by prompt")


def _topk(value: Any, tok: Any, vocab: int, k: int, prompt_len: int, resp_len: int,
          add_eos: bool, max_len: int, file: Path, line: int, node: str
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A line's top-k entries placed at the positions that predict its response tokens."""
    import torch

    def bad(message: str, expected: str, found: str) -> ValidationError:
        return _problem(file, line, node, f"line {line} of {file}: {message}", expected,
                        found, "regenerate the line with the tokenizer the student uses")

    if not isinstance(value, dict) or "logprobs" not in value or \
            ("ids" in value) == ("tokens" in value):
        raise bad("'topk' is malformed", "{\"ids\" or \"tokens\": [[...k] per response "
                  "token], \"logprobs\": [[...k] per response token]}",
                  str(value)[:120])
    logprobs, keys = value["logprobs"], value.get("ids", value.get("tokens"))
    allowed = (resp_len, resp_len + 1) if add_eos else (resp_len,)
    if not (isinstance(logprobs, list) and isinstance(keys, list)) or \
            len(logprobs) != len(keys) or len(keys) < resp_len:
        raise bad("'topk' does not cover the response", f"one entry per response token "
                  f"({resp_len}{' or one more for <eos>' if add_eos else ''})",
                  f"{len(keys) if isinstance(keys, list) else keys!r} entries")
    values = torch.zeros(max_len, k)
    indices = torch.zeros(max_len, k, dtype=torch.long)
    mask = torch.zeros(max_len, dtype=torch.bool)
    for j, (row, lp) in enumerate(zip(keys[:max(allowed)], logprobs[:max(allowed)],
                                      strict=True)):
        if not (isinstance(row, list) and isinstance(lp, list) and len(row) == len(lp)
                and len(row) >= k):
            raise bad(f"top-k entry {j} is malformed", f"at least k = {k} tokens with as "
                      "many log-probabilities", f"{str(row)[:60]} / {str(lp)[:60]}")
        ids = []
        for token in row[:k]:
            found = token if isinstance(token, int) and not isinstance(token, bool) \
                else tok.token_to_id(token) if isinstance(token, str) else None
            if found is None or not 0 <= found < vocab:
                raise bad(f"top-k entry {j}: token {token!r} is not in the tokenizer's "
                          "vocabulary", f"token strings of the tokenizer or ids in "
                          f"[0, {vocab})", repr(token))
            ids.append(found)
        if not all(isinstance(x, int | float) and x <= 0 for x in lp[:k]):
            raise bad(f"top-k entry {j}: log-probabilities must be numbers <= 0",
                      "log-probabilities", str(lp[:k]))
        position = prompt_len - 1 + j
        values[position] = torch.tensor(lp[:k], dtype=torch.float32)
        indices[position] = torch.tensor(ids)
        mask[position] = True
    return values, indices, mask


def _empty(n: int, max_len: int, prompt_len: int, k: int, candidates: int,
           device: str = "cpu") -> dict[str, torch.Tensor]:
    import torch

    def t(*shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=device)

    out = {"input_ids": t(n, max_len, dtype=torch.long),
           "targets": t(n, max_len, dtype=torch.long),
           "attention_mask": t(n, max_len, dtype=torch.bool),
           "loss_mask": t(n, max_len, dtype=torch.bool),
           "prompt_ids": t(n, prompt_len, dtype=torch.long),
           "prompt_mask": t(n, prompt_len, dtype=torch.bool)}
    if k:
        out.update(topk_logprobs=t(n, max_len, k, dtype=torch.float32),
                   topk_indices=t(n, max_len, k, dtype=torch.long),
                   topk_mask=t(n, max_len, dtype=torch.bool))
    if candidates:
        out.update(cand_ids=t(n, candidates, max_len, dtype=torch.long),
                   cand_targets=t(n, candidates, max_len, dtype=torch.long),
                   cand_attention=t(n, candidates, max_len, dtype=torch.bool),
                   cand_loss_mask=t(n, candidates, max_len, dtype=torch.bool),
                   teacher_rank=t(n, candidates, dtype=torch.long))
        if device != "meta":
            out["teacher_rank"] = torch.arange(candidates).repeat(n, 1)
    return out
