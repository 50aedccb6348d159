"""Sentences for encoders: the lines of a text file, tokenized to one fixed length.

The tokenizer is a pretrained one read from a folder with transformers' ``AutoTokenizer``
(``tokenizer_path``, or the folder of the model node ``tokenizer_from`` names), or the byte
tokenizer of :mod:`dgraph.components.data.text` (ids 2..257, ``<pad>`` = 0) when the model
has no folder. Pretrained tokenizers keep their own special tokens (``[CLS] ... [SEP]``) and
pad token; one without a pad token gets its ``eos``/``sep``/``unk`` token as padding, with a
warning. Nothing is truncated silently: a sentence longer than ``max_length`` tokens is a
located error naming the node, the file and the line, unless ``truncate: true``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgraph.components._inputs import (
    check_model_folder,
    existing_path,
    input_error,
    model_path,
)

from dgraph.declare import Mask, NodeRef, Outputs, Tokens, data, param
from dgraph.errors import Location, Problem, ValidationError
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import torch

__all__ = ["text_sentences"]


@data("text_sentences")
def text_sentences(
    *,
    path: str | None = param(None, doc="a UTF-8 text file, one sentence a line; default: "
                             "the shipped corpus (two Shakespeare plays)"),
    tokenizer_path: str | None = param(
        None, doc="a folder holding a pretrained tokenizer (tokenizer.json / vocab.txt and "
        "tokenizer_config.json), read with AutoTokenizer, offline, without custom code"),
    tokenizer_from: NodeRef | None = param(
        None, doc="a model node loaded from a folder (hf_encoder, path:): its folder's "
        "tokenizer; a node built from a config gives the byte tokenizer"),
    max_length: int = param(64, gt=1, doc="T: tokens per sentence, special tokens "
                            "included; shorter ones are padded"),
    truncate: bool = param(False, doc="cut longer sentences to max_length (otherwise "
                           "they are an error)"),
    min_chars: int = param(20, ge=1, doc="skip lines shorter than this (after stripping)"),
    batch_size: int = param(32, gt=0, doc="sentences per batch"),
    shuffle: bool = param(True, doc="reshuffle the training set every epoch"),
    drop_last: bool = param(True, doc="skip the last incomplete training batch"),
    eval_fraction: float = param(0.1, ge=0.0, lt=1.0, doc="held-out share (the last lines)"),
    max_examples: int | None = param(None, gt=0, doc="cap on training sentences"),
    context: BuildContext,
) -> Outputs(input_ids=Tokens("B, {max_length}", "token ids (int64)"),
             attention_mask=Mask("B, {max_length}", "1 = real token, 0 = padding")):
    """Sentences (non-empty lines of at least ``min_chars`` characters) as padded token ids.

    The last ``eval_fraction`` of the sentences are held out. Every sentence is encoded
    without truncation, then right-padded to ``max_length`` with the tokenizer's pad id;
    ``attention_mask`` marks its real tokens. ``info`` reports the tokenizer, the vocabulary
    size and the longest sentence.
    """
    from dgraph.data import DataSource

    loader = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    folder, param_name = _tokenizer_folder(tokenizer_path, tokenizer_from, context)
    if context.meta:
        if path is not None:
            existing_path(context, "path", path, kind="file", what="a UTF-8 text file")
        split = _meta_split(batch_size, max_length)
        return DataSource(train=split, eval=split, info={"seq_len": max_length}, **loader)
    from dgraph.components.data.text import CORPUS_DIR

    file = CORPUS_DIR / "shakespeare.txt" if path is None else \
        existing_path(context, "path", path, kind="file", what="a UTF-8 text file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise input_error(context, "path", f"{file} cannot be read as UTF-8 text",
                          expected="a UTF-8 text file", found=f"{type(exc).__name__}",
                          hint="convert the file to UTF-8") from None
    sentences = [(n, line.strip()) for n, line in enumerate(lines, 1)
                 if len(line.strip()) >= min_chars]
    if len(sentences) < 2:
        raise input_error(context, "path", f"{file} holds {len(sentences)} sentences of "
                          f"at least {min_chars} characters", code="bad-data",
                          expected="at least 2 sentences", found=f"{len(sentences)}",
                          hint="use a longer file or a smaller min_chars")
    encode, pad_id, name, vocab = _tokenizer(folder, param_name, context)
    ids = [encode(text) for _, text in sentences]
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    if len(ids[longest]) > max_length and not truncate:
        number, text = sentences[longest]
        over = sum(len(x) > max_length for x in ids)
        raise ValidationError([Problem(
            code="bad-data", location=Location(str(file), number, 1), node=context.node,
            message=f"params.max_length: line {number} of {file} is {len(ids[longest])} "
            f"tokens with the tokenizer {name}, longer than max_length {max_length} "
            f"({over} of {len(ids)} sentences are); nothing is truncated silently",
            expected=f"sentences of at most {max_length} tokens",
            found=f"{len(ids[longest])} tokens: {text[:60]!r}",
            suggestion=f"set max_length: {len(ids[longest])} (within the model's "
            "positions), or truncate: true to cut them")])
    n_eval = int(len(ids) * eval_fraction)
    train, held = ids[: len(ids) - n_eval], ids[len(ids) - n_eval:]
    if max_examples is not None:
        train = train[:max_examples]
    info = {"path": str(file), "tokenizer": name, "vocab_size": vocab, "seq_len": max_length,
            "train_sentences": len(train), "longest": len(ids[longest]),
            "truncated": sum(len(x) > max_length for x in ids)}
    return DataSource(train=_padded(train, max_length, pad_id),
                      eval=_padded(held, max_length, pad_id) if held else None, info=info,
                      **loader)


def _tokenizer_folder(tokenizer_path: str | None, tokenizer_from: Any,
                      context: BuildContext) -> tuple[Path | None, str]:
    what = "a folder holding a pretrained tokenizer (tokenizer.json or vocab.txt)"
    if tokenizer_path is not None:
        folder = model_path(context, "tokenizer_path", tokenizer_path, kind="folder",
                            what=what)
        check_model_folder(context, "tokenizer_path", folder, what=what)
        return folder, "tokenizer_path"
    folder = getattr(tokenizer_from, "folder", None)
    return (Path(folder) if folder is not None else None), "tokenizer_from"


def _tokenizer(folder: Path | None, param_name: str, context: BuildContext
               ) -> tuple[Any, int, str, int]:
    """``(encode, pad id, description, vocabulary size)``."""
    if folder is None:
        from dgraph.components.data.text import BYTE_VOCAB_SIZE, PAD_ID, byte_tokenizer

        tok = byte_tokenizer()
        return (lambda text: tok.encode(text, add_special_tokens=False).ids, PAD_ID, "byte",
                BYTE_VOCAB_SIZE)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                            trust_remote_code=False)
    except Exception as exc:  # transformers raises many kinds for unreadable folders
        raise input_error(context, param_name, f"no tokenizer can be read from {folder}",
                          code="bad-tokenizer", expected="a folder holding a pretrained "
                          "tokenizer (tokenizer.json, or vocab.txt + tokenizer_config.json)",
                          found=f"{type(exc).__name__}: {str(exc).strip()[:200]}",
                          hint="save the tokenizer with save_pretrained into that folder"
                          ) from None
    pad = tok.pad_token_id
    if pad is None:
        for name in ("eos_token", "sep_token", "unk_token"):
            if getattr(tok, name, None) is not None:
                pad = tok.convert_tokens_to_ids(getattr(tok, name))
                warnings.warn(f"node '{context.node}': the tokenizer in {folder} has no pad "
                              f"token; padding with its {name} "
                              f"'{getattr(tok, name)}' (id {pad}), masked out by "
                              "attention_mask", stacklevel=2)
                break
        else:
            raise input_error(context, param_name, f"the tokenizer in {folder} has no pad, "
                              "eos, sep or unk token to pad with", code="bad-tokenizer",
                              expected="a tokenizer with a pad token",
                              found="no pad/eos/sep/unk token",
                              hint="set pad_token in its tokenizer_config.json")
    return (lambda text: tok(text, add_special_tokens=True, truncation=False,
                             verbose=False)["input_ids"], int(pad),
            f"{folder} ({type(tok).__name__})", len(tok))


def _padded(rows: list[list[int]], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    import torch

    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        row = row[:length]
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = True
    return {"input_ids": ids, "attention_mask": mask}


def _meta_split(n: int, length: int) -> dict[str, torch.Tensor]:
    import torch

    return {"input_ids": torch.empty((n, length), dtype=torch.long, device="meta"),
            "attention_mask": torch.empty((n, length), dtype=torch.bool, device="meta")}
