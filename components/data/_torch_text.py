"""Tokenizers and the loaders behind ``text_lm`` and ``jsonl_pairs`` (imported when built).

Tokenizers come from the ``tokenizers`` library and are built offline: a byte-level one with
a fixed vocabulary (``<pad>`` = 0, ``<eos>`` = 1, then the 256 bytes), a byte-level BPE
trained on the training text, or a saved ``tokenizer.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from dgraph.components._inputs import (
    check_model_folder,
    existing_path,
    input_error,
    run_dir_path,
)

from dgraph.errors import Location, Problem, SpecError, ValidationError
from dgraph.registry import BuildContext
from dgraph.runtime.data import DataSource

from .text import (
    BYTE_VOCAB_SIZE,
    CORPUS_DIR,
    SPECIAL_TOKENS,
    JsonlPairsParams,
    TextLMParams,
    TokenizerParams,
)

__all__ = [
    "PAD_ID",
    "EOS_ID",
    "build_jsonl_pairs",
    "build_text_lm",
    "build_tokenizer",
    "byte_tokenizer",
    "encode_pairs",
]

PAD_ID, EOS_ID = 0, 1


def byte_tokenizer():
    """A ``tokenizers.Tokenizer`` mapping every byte to one id (2..257); 0/1 are special."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: i + len(SPECIAL_TOKENS) for i, ch in enumerate(alphabet)})
    assert len(vocab) == BYTE_VOCAB_SIZE
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def _train_bpe(texts: Sequence[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def build_tokenizer(p: TokenizerParams, texts: Sequence[str] = (),
                    context: BuildContext | None = None):
    """The tokenizer the parameters describe; checks its size against ``p.size``.

    With a ``context`` (a node being built) every problem is a located error on the node's
    ``tokenizer`` parameters; ``save_to`` writes only inside the run directory."""
    if p.kind == "byte":
        tok = byte_tokenizer()
    elif p.kind == "file":
        tok = _tokenizer_file(p, context)
    else:
        tok = _train_bpe(texts, p.size)

    def fail(param: str, message: str, expected: str, found: str, hint: str) -> Exception:
        if context is None:
            return SpecError(message, expected=expected, found=found, suggestion=hint)
        return input_error(context, f"tokenizer.{param}", message, code="bad-tokenizer",
                           expected=expected, found=found, hint=hint)

    actual = tok.get_vocab_size(with_added_tokens=True)
    if actual > p.size:
        raise fail("vocab_size", f"the {p.kind} tokenizer has {actual} ids but vocab_size is "
                   f"{p.size}", expected=f"vocab_size >= the tokenizer's {actual} ids",
                   found=f"vocab_size: {p.size}",
                   hint=f"set tokenizer.vocab_size to {actual} (and the models' vocab_size)")
    for i, special in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(special) != i:
            raise fail("path" if p.kind == "file" else "kind",
                       f"the tokenizer gives '{special}' the id {tok.token_to_id(special)}",
                       expected=f"'{special}' with id {i} ('<pad>' = 0, '<eos>' = 1)",
                       found=f"'{special}' = {tok.token_to_id(special)}",
                       hint="save a tokenizer whose first special tokens are <pad> and <eos>")
    if p.save_to and context is not None and not context.meta:
        folder = run_dir_path(context, "tokenizer.save_to", p.save_to)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            tok.save(str(folder / "tokenizer.json"))
    return tok


def _tokenizer_path(p: TokenizerParams, context: BuildContext) -> Path:
    """The ``tokenizer.json`` that ``tokenizer.path`` names (a file, or a folder holding one
    whose ``tokenizer_config.json`` names no custom code); checked, not read."""
    what = "a tokenizer.json saved by the tokenizers library, or a folder holding one"
    path = existing_path(context, "tokenizer.path", p.path or "", kind="file or folder",
                         what=what)
    if path.is_dir():
        check_model_folder(context, "tokenizer.path", path, what=what,
                           expected="a tokenizer folder whose tokenizer_config.json names "
                           "no custom code")
        if not (path / "tokenizer.json").is_file():
            raise input_error(context, "tokenizer.path", f"{path} holds no tokenizer.json",
                              code="missing-file", expected=what,
                              found="a folder without tokenizer.json",
                              hint="save the tokenizer with tokenizer.save(...) or "
                              "save_pretrained into that folder")
        path = path / "tokenizer.json"
    return path


def _tokenizer_file(p: TokenizerParams, context: BuildContext | None):
    """A saved ``tokenizer.json`` (or a folder holding one), read by ``tokenizers`` (which
    runs no code); a folder whose ``tokenizer_config.json`` names custom code is refused."""
    from tokenizers import Tokenizer

    if context is None:
        path = Path(p.path or "")
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise SpecError(f"tokenizer file {path} does not exist")
        return Tokenizer.from_file(str(path))
    what = "a tokenizer.json saved by the tokenizers library"
    path = _tokenizer_path(p, context)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
        raise input_error(context, "tokenizer.path", f"{path} is not a readable tokenizer "
                          "file", expected=what,
                          found=f"{type(exc).__name__}: {str(exc).strip()[:200]}",
                          hint="write it with tokenizers' Tokenizer.save") from None


def _encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def _check_inputs(p: TextLMParams | JsonlPairsParams, context: BuildContext,
                  what: str) -> None:
    """The dry run reads no text, but the files the parameters name must be there."""
    if p.path is not None:
        existing_path(context, "path", p.path, kind="file", what=what)
    if p.tokenizer.kind == "file":
        _tokenizer_path(p.tokenizer, context)


def _read_text(path: str | None, context: BuildContext, default: str, what: str
               ) -> tuple[Path, str]:
    """The file ``params.path`` names (default: the shipped one) and its UTF-8 text."""
    resolved = CORPUS_DIR / default if path is None else \
        existing_path(context, "path", path, kind="file", what=what)
    try:
        return resolved, resolved.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise input_error(context, "path", f"{resolved} is not UTF-8 text", expected=what,
                          found=f"byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                          f"{exc.start} is not UTF-8", hint="convert the file to UTF-8"
                          ) from None
    except OSError as exc:
        raise input_error(context, "path", f"{resolved} cannot be read", expected=what,
                          found=f"{type(exc).__name__}: {exc.strerror or exc}",
                          hint="check the file and its permissions") from None


def _chunks(ids: torch.Tensor, seq_len: int, stride: int) -> torch.Tensor:
    if ids.numel() < seq_len + 1:
        return torch.empty((0, seq_len + 1), dtype=torch.long)
    return ids.unfold(0, seq_len + 1, stride).contiguous()


def _text_split(windows: torch.Tensor, prompt_len: int) -> dict[str, torch.Tensor]:
    n, length = windows.shape
    seq_len = length - 1
    return {
        "input_ids": windows[:, :-1].contiguous(),
        "targets": windows[:, 1:].contiguous(),
        "attention_mask": torch.ones((n, seq_len), dtype=torch.bool),
        "loss_mask": torch.ones((n, seq_len), dtype=torch.bool),
        "prompt_ids": windows[:, :prompt_len].contiguous(),
        "prompt_mask": torch.ones((n, prompt_len), dtype=torch.bool),
    }


def _meta_split(n: int, seq_len: int, prompt_len: int) -> dict[str, torch.Tensor]:
    def t(length: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty((n, length), dtype=dtype, device="meta")

    return {"input_ids": t(seq_len, torch.long), "targets": t(seq_len, torch.long),
            "attention_mask": t(seq_len, torch.bool), "loss_mask": t(seq_len, torch.bool),
            "prompt_ids": t(prompt_len, torch.long), "prompt_mask": t(prompt_len, torch.bool)}


def build_text_lm(p: TextLMParams, context: BuildContext) -> DataSource:
    info: dict[str, object] = {"vocab_size": p.tokenizer.size, "seq_len": p.seq_len}
    if context.meta:
        # Only shapes matter in a dry run; no text is read or tokenized.
        _check_inputs(p, context, "a UTF-8 text file")
        return DataSource(train=_meta_split(p.batch_size, p.seq_len, p.prompt_len),
                          eval=_meta_split(p.batch_size, p.seq_len, p.prompt_len),
                          batch_size=p.batch_size, shuffle=p.shuffle, drop_last=p.drop_last,
                          info=info)
    path, text = _read_text(p.path, context, "shakespeare.txt", "a UTF-8 text file")
    cut = int(len(text) * (1.0 - p.eval_fraction))
    train_text, eval_text = text[:cut], text[cut:]
    tok = build_tokenizer(p.tokenizer, [train_text], context)
    stride = p.stride or p.seq_len
    train_ids = torch.tensor(_encode(tok, train_text), dtype=torch.long)
    windows = _chunks(train_ids, p.seq_len, stride)
    if p.max_examples is not None:
        windows = windows[: p.max_examples]
    if len(windows) == 0:
        raise input_error(context, "path", f"{path} holds too little text for one sequence",
                          code="bad-data", expected=f"more than {p.seq_len} tokens of "
                          "training text", found=f"{int(train_ids.numel())} tokens",
                          hint="use a longer text, a smaller seq_len or a smaller "
                          "eval_fraction")
    evaluation = None
    if p.eval_fraction > 0:
        eval_ids = torch.tensor(_encode(tok, eval_text), dtype=torch.long)
        eval_windows = _chunks(eval_ids, p.seq_len, p.seq_len)
        if len(eval_windows):
            evaluation = _text_split(eval_windows, p.prompt_len)
    info.update({"path": str(path), "train_tokens": int(train_ids.numel()),
                 "train_sequences": int(len(windows))})
    return DataSource(train=_text_split(windows, p.prompt_len), eval=evaluation,
                      batch_size=p.batch_size, shuffle=p.shuffle, drop_last=p.drop_last,
                      info=info)


def encode_pairs(pairs: Sequence[tuple[list[int], list[int]]], max_len: int,
                 max_prompt_len: int, *, add_eos: bool = True) -> dict[str, torch.Tensor]:
    """Token-id pairs -> padded next-token tensors with prompt and padding masked out."""
    n = len(pairs)
    input_ids = torch.full((n, max_len), PAD_ID, dtype=torch.long)
    targets = torch.full((n, max_len), PAD_ID, dtype=torch.long)
    attention = torch.zeros((n, max_len), dtype=torch.bool)
    loss_mask = torch.zeros((n, max_len), dtype=torch.bool)
    prompt_ids = torch.full((n, max_prompt_len), PAD_ID, dtype=torch.long)
    prompt_mask = torch.zeros((n, max_prompt_len), dtype=torch.bool)
    for i, (prompt, response) in enumerate(pairs):
        prompt = prompt[-max_prompt_len:] if max_prompt_len else []
        response = list(response) + ([EOS_ID] if add_eos else [])
        full = (prompt + response)[: max_len + 1]
        length = len(full) - 1  # input positions
        if length <= 0:
            continue
        input_ids[i, :length] = torch.tensor(full[:-1])
        targets[i, :length] = torch.tensor(full[1:])
        attention[i, :length] = True
        # Position t predicts full[t + 1]: it counts when that token is in the response.
        first = max(len(prompt) - 1, 0)
        loss_mask[i, first:length] = True
        if prompt:
            prompt_ids[i, max_prompt_len - len(prompt):] = torch.tensor(prompt)
            prompt_mask[i, max_prompt_len - len(prompt):] = True
    return {"input_ids": input_ids, "targets": targets, "attention_mask": attention,
            "loss_mask": loss_mask, "prompt_ids": prompt_ids, "prompt_mask": prompt_mask}


def build_jsonl_pairs(p: JsonlPairsParams, context: BuildContext) -> DataSource:
    info: dict[str, object] = {"vocab_size": p.tokenizer.size, "seq_len": p.max_len}
    what = f"a JSONL file: one {{\"{p.prompt_key}\": ..., \"{p.response_key}\": ...}} per line"
    if context.meta:
        _check_inputs(p, context, what)
        return DataSource(train=_meta_split(p.batch_size, p.max_len, p.max_prompt_len),
                          eval=_meta_split(p.batch_size, p.max_len, p.max_prompt_len),
                          batch_size=p.batch_size, shuffle=p.shuffle, drop_last=p.drop_last,
                          info=info)
    path, text = _read_text(p.path, context, "shakespeare_dialogue.jsonl", what)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            records.append((str(obj[p.prompt_key]), str(obj[p.response_key])))
        except (ValueError, KeyError, TypeError) as exc:
            found = (f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyError)
                     else f"an object without the key {exc}")
            raise ValidationError([Problem(
                code="bad-data", location=Location(str(path), number, 1), node=context.node,
                message=f"params.path: line {number} of {path} is not a prompt/response "
                "pair", expected=f"a JSON object with '{p.prompt_key}' and "
                f"'{p.response_key}'", found=found,
                suggestion="fix the line, or set prompt_key / response_key to the file's "
                "keys")]) from None
    n_eval = int(len(records) * p.eval_fraction)
    train_records = records[: len(records) - n_eval]
    eval_records = records[len(records) - n_eval:]
    if p.max_examples is not None:
        train_records = train_records[: p.max_examples]
    if not train_records:
        raise input_error(context, "path", f"{path} leaves no training pairs", code="bad-data",
                          expected="at least one prompt/response pair for training",
                          found=f"{len(records)} pairs, {n_eval} held out by eval_fraction",
                          hint="add pairs or lower eval_fraction")
    tok = build_tokenizer(p.tokenizer, [a + b for a, b in train_records], context)

    def encode(recs):
        return encode_pairs([(_encode(tok, a), _encode(tok, b)) for a, b in recs],
                            p.max_len, p.max_prompt_len, add_eos=p.add_eos)

    info.update({"path": str(path), "train_pairs": len(train_records)})
    return DataSource(train=encode(train_records),
                      eval=encode(eval_records) if eval_records else None,
                      batch_size=p.batch_size, shuffle=p.shuffle, drop_last=p.drop_last,
                      info=info)
