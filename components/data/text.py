"""Text data sources for language models: plain text chunked into sequences, and JSONL
prompt/response pairs, tokenized offline with the ``tokenizers`` library.

Every source emits next-token training tensors of one fixed length ``T``:

* ``input_ids[b, t]``: the tokens fed to the model;
* ``targets[b, t]``: the token that follows ``input_ids[b, t]`` (what position ``t`` predicts);
* ``attention_mask[b, t]``: 1 for real input tokens, 0 for padding;
* ``loss_mask[b, t]``: 1 where position ``t``'s prediction counts in a loss — its target is a
  real token, and (for prompt/response pairs) a response token or the end-of-sequence token.
  Prompt and padding positions are 0, so every token-level loss ignores them.

and prompts for samplers (``prompt_ids``/``prompt_mask``, left-padded to ``P``).

The vocabulary size is known statically from the parameters (``byte``: 258 = 256 bytes +
``<pad>`` + ``<eos>``; ``bpe``/``file``: the declared ``vocab_size``), so specs can write the
models' ``vocab_size`` and validation checks it without reading any text. The declaration
imports neither torch nor tokenizers: the builders and tokenizers import them when run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dgraph.components._inputs import (
    check_model_folder,
    existing_path,
    input_error,
    model_path,
    run_dir_path,
)
from pydantic import Field, field_validator, model_validator

from dgraph.declare import Mask, Outputs, Tokens, data, param
from dgraph.errors import Location, Problem, SpecError, ValidationError
from dgraph.registry import BuildContext, Params

if TYPE_CHECKING:
    import torch


__all__ = [
    "BYTE_VOCAB_SIZE",
    "CORPUS_DIR",
    "EOS_ID",
    "PAD_ID",
    "TokenizerParams",
    "build_tokenizer",
    "byte_tokenizer",
    "encode_pairs",
    "jsonl_pairs",
    "text_lm",
]

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SPECIAL_TOKENS = ("<pad>", "<eos>")  # ids 0 and 1
PAD_ID, EOS_ID = 0, 1
BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


class TokenizerParams(Params):
    """Which tokenizer turns text into ids (all built offline with ``tokenizers``)."""

    kind: Literal["byte", "bpe", "file"] = Field(
        "byte", description="byte: fixed byte-level vocabulary (258 ids); bpe: a byte-level "
        "BPE trained on the training text; file: a saved tokenizer.json"
    )
    vocab_size: int | None = Field(
        None, gt=len(SPECIAL_TOKENS), description="bpe: the size to train to; file: the "
        "tokenizer's size (checked when loaded); byte: 258 (may be omitted)"
    )
    path: str | None = Field(None, description="file: the tokenizer.json to load (or a "
                             "folder holding one), relative to the spec's folder")
    pad_token: str | None = Field(
        None, description="file: the padding token (default: tokenizer_config.json's "
        "pad_token, else <pad> or [PAD]; a tokenizer without one pads with its end token, "
        "with a warning)")
    eos_token: str | None = Field(
        None, description="file: the end-of-sequence token (default: tokenizer_config.json's "
        "eos_token, else <eos>, </s>, <|endoftext|> or [SEP])")
    save_to: str | None = Field(
        None, description="also write tokenizer.json into this folder of the run directory "
        "(e.g. next to a model saved with save_pretrained); a relative path without '..'"
    )

    @field_validator("save_to")
    @classmethod
    def _inside_run(cls, value: str | None) -> str | None:
        if value is not None and (Path(value).is_absolute() or value.startswith("~")
                                  or ".." in Path(value).parts):
            raise ValueError(f"save_to '{value}' leaves the run directory; components write "
                             "only inside it: give a relative folder without '..'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TokenizerParams:
        if self.kind == "byte" and self.vocab_size not in (None, BYTE_VOCAB_SIZE):
            raise ValueError(f"the byte tokenizer has {BYTE_VOCAB_SIZE} ids (256 bytes, <pad>, "
                             f"<eos>); vocab_size {self.vocab_size} cannot be honoured")
        if self.kind in ("bpe", "file") and self.vocab_size is None:
            raise ValueError(f"tokenizer kind '{self.kind}' needs vocab_size, so that models' "
                             "vocabularies can be checked before any text is read")
        if self.kind == "file" and not self.path:
            raise ValueError("tokenizer kind 'file' needs path: a tokenizer.json")
        if self.kind != "file" and (self.pad_token or self.eos_token):
            raise ValueError(f"pad_token and eos_token choose among a saved tokenizer's "
                             f"tokens (kind: file); the {self.kind} tokenizer's are <pad> "
                             "(id 0) and <eos> (id 1)")
        return self

    @property
    def size(self) -> int:
        return BYTE_VOCAB_SIZE if self.kind == "byte" else int(self.vocab_size or 0)


# The parameters both sources share (each declaration copies these fields).
_TOKENIZER = Field(default_factory=TokenizerParams,
                   description="{kind: byte|bpe|file, vocab_size, ...}")
_BATCH_SIZE = param(32, gt=0, doc="sequences per batch")
_SHUFFLE = param(True, doc="reshuffle the training set every epoch")
_DROP_LAST = param(True, doc="skip the last incomplete training batch")
_EVAL_FRACTION = param(0.1, ge=0.0, lt=1.0, doc="held-out share (the end of the text / file)")
_MAX_EXAMPLES = param(None, gt=0, doc="cap on training sequences")


def _vocab_size(p) -> dict[str, int]:  # noqa: ANN001 - the generated parameter model
    return {"vocab_size": p.tokenizer.size}


def _text_prompt_fits(p) -> None:  # noqa: ANN001 - the generated parameter model
    if p.prompt_len >= p.seq_len:
        raise ValueError(f"prompt_len ({p.prompt_len}) must be < seq_len ({p.seq_len})")


def _pairs_prompt_fits(p) -> None:  # noqa: ANN001 - the generated parameter model
    if p.max_prompt_len >= p.max_len:
        raise ValueError(f"max_prompt_len ({p.max_prompt_len}) must be < max_len "
                         f"({p.max_len})")


def sequence_ports(length: str, prompt: str, prompt_doc: str, **extra: Any) -> Outputs:
    """The ports of a source of prompted token sequences (text_lm, jsonl_pairs, domain
    mixtures, generated pairs), with ``extra`` ports of its own."""
    return Outputs(
        input_ids=Tokens(f"B, {length}", "token ids fed to the model (int64)"),
        targets=Tokens(f"B, {length}", "the next token of each position (int64)"),
        attention_mask=Mask(f"B, {length}", "1 = real input token, 0 = padding"),
        loss_mask=Mask(f"B, {length}", "1 = this position's prediction counts (not padding, "
                       "not prompt)"),
        prompt_ids=Tokens(f"B, {prompt}", prompt_doc),
        prompt_mask=Mask(f"B, {prompt}", "1 = real prompt token"),
        **extra,
    )


@data("text_lm", check=_text_prompt_fits, sizes=_vocab_size)
def text_lm(
    *,
    tokenizer: TokenizerParams = _TOKENIZER, batch_size: int = _BATCH_SIZE,
    shuffle: bool = _SHUFFLE, drop_last: bool = _DROP_LAST,
    eval_fraction: float = _EVAL_FRACTION, max_examples: int | None = _MAX_EXAMPLES,
    path: str | None = param(None, doc="a UTF-8 text file; default: the shipped "
                             "public-domain corpus (two Shakespeare plays, ~190 KB)"),
    seq_len: int = param(64, gt=1, doc="tokens per sequence (T)"),
    stride: int | None = param(None, gt=0, doc="tokens between sequence starts (default: "
                               "seq_len, no overlap)"),
    prompt_len: int = param(8, gt=0, doc="P: the first P tokens of each sequence are served "
                            "as prompts (prompt_ids) for samplers"),
    context: BuildContext,
) -> sequence_ports("{seq_len}", "{prompt_len}", "the sequence's first tokens"):
    """Plain text chunked into next-token sequences of ``seq_len`` tokens.

    The text (default: the shipped corpus) is tokenized once; the last ``eval_fraction`` of
    the tokens is held out. Sequence ``i`` covers tokens ``[i*stride, i*stride + seq_len]``:
    ``input_ids`` are its first ``seq_len`` tokens and ``targets`` the last ``seq_len``, so
    every position has a target (``loss_mask`` all ones). ``prompt_ids`` are the first
    ``prompt_len`` tokens, for sequence-level KD samplers.
    """
    import torch

    from dgraph.data import DataSource

    info: dict[str, object] = {"vocab_size": tokenizer.size, "seq_len": seq_len}
    loader = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    if context.meta:
        # Only shapes matter in a dry run; no text is read or tokenized.
        _check_inputs(path, tokenizer, context, "a UTF-8 text file")
        return DataSource(train=_meta_split(batch_size, seq_len, prompt_len),
                          eval=_meta_split(batch_size, seq_len, prompt_len), info=info,
                          **loader)
    file, text = _read_text(path, context, "shakespeare.txt", "a UTF-8 text file")
    cut = int(len(text) * (1.0 - eval_fraction))
    train_text, eval_text = text[:cut], text[cut:]
    tok = build_tokenizer(tokenizer, [train_text], context)
    pad_id, eos_id = special_ids(tok, tokenizer, context)
    info.update({"pad_token_id": pad_id, "eos_token_id": eos_id})
    train_ids = torch.tensor(_encode(tok, train_text), dtype=torch.long)
    windows = _chunks(train_ids, seq_len, stride or seq_len)
    if max_examples is not None:
        windows = windows[:max_examples]
    if len(windows) == 0:
        raise input_error(context, "path", f"{file} holds too little text for one sequence",
                          code="bad-data", expected=f"more than {seq_len} tokens of "
                          "training text", found=f"{int(train_ids.numel())} tokens",
                          hint="use a longer text, a smaller seq_len or a smaller "
                          "eval_fraction")
    evaluation = None
    if eval_fraction > 0:
        eval_ids = torch.tensor(_encode(tok, eval_text), dtype=torch.long)
        eval_windows = _chunks(eval_ids, seq_len, seq_len)
        if len(eval_windows):
            evaluation = _text_split(eval_windows, prompt_len)
    info.update({"path": str(file), "train_tokens": int(train_ids.numel()),
                 "train_sequences": int(len(windows))})
    return DataSource(train=_text_split(windows, prompt_len), eval=evaluation, info=info,
                      **loader)


@data("jsonl_pairs", check=_pairs_prompt_fits, sizes=_vocab_size)
def jsonl_pairs(
    *,
    tokenizer: TokenizerParams = _TOKENIZER, batch_size: int = _BATCH_SIZE,
    shuffle: bool = _SHUFFLE, drop_last: bool = _DROP_LAST,
    eval_fraction: float = _EVAL_FRACTION, max_examples: int | None = _MAX_EXAMPLES,
    path: str | None = param(None, doc="a JSONL file, one {prompt, response} object per "
                             "line; default: the shipped Shakespeare dialogue pairs"),
    prompt_key: str = param("prompt", doc="the prompt's key in each object"),
    response_key: str = param("response", doc="the response's key in each object"),
    max_len: int = param(128, gt=1, doc="T: tokens per sequence after truncation"),
    max_prompt_len: int = param(64, gt=0, doc="P: prompt tokens kept (the end of a longer "
                                "prompt; prompt_ids are left-padded to P)"),
    add_eos: bool = param(True, doc="append <eos> to the response (it is predicted)"),
    truncate: bool = param(False, doc="cut pairs longer than max_len + 1 tokens and prompts "
                           "longer than max_prompt_len (otherwise they are an error naming "
                           "the line)"),
    context: BuildContext,
) -> sequence_ports("{max_len}", "{max_prompt_len}", "prompts, left-padded"):
    """Prompt/response pairs from a JSONL file, for supervised fine-tuning and distillation.

    Each example is ``prompt + response (+ <eos>)`` in ``max_len + 1`` tokens. A longer one
    is a located error naming its line, unless ``truncate``: the prompt then keeps its last
    ``max_prompt_len`` tokens and the response is cut at the right. Sequences are
    right-padded with the tokenizer's pad token (``<pad>``, id 0, for byte and BPE).
    ``loss_mask`` is 1 exactly where the target is a response token (or the final ``<eos>``):
    prompt and padding positions are excluded from every token-level loss. ``prompt_ids``
    holds the prompt left-padded to ``max_prompt_len`` (``prompt_mask`` marks its real
    tokens), ready for generation.
    """
    from dgraph.data import DataSource

    info: dict[str, object] = {"vocab_size": tokenizer.size, "seq_len": max_len}
    loader = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    what = f"a JSONL file: one {{\"{prompt_key}\": ..., \"{response_key}\": ...}} per line"
    if context.meta:
        _check_inputs(path, tokenizer, context, what)
        return DataSource(train=_meta_split(batch_size, max_len, max_prompt_len),
                          eval=_meta_split(batch_size, max_len, max_prompt_len), info=info,
                          **loader)
    file, text = _read_text(path, context, "shakespeare_dialogue.jsonl", what)
    records, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            records.append((str(obj[prompt_key]), str(obj[response_key])))
            lines.append(number)
        except (ValueError, KeyError, TypeError) as exc:
            found = (f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyError)
                     else f"an object without the key {exc}")
            raise ValidationError([Problem(
                code="bad-data", location=Location(str(file), number, 1), node=context.node,
                message=f"params.path: line {number} of {file} is not a prompt/response "
                "pair", expected=f"a JSON object with '{prompt_key}' and "
                f"'{response_key}'", found=found,
                suggestion="fix the line, or set prompt_key / response_key to the file's "
                "keys")]) from None
    n_eval = int(len(records) * eval_fraction)
    train_records = records[: len(records) - n_eval]
    eval_records = records[len(records) - n_eval:]
    if max_examples is not None:
        train_records = train_records[:max_examples]
    if not train_records:
        raise input_error(context, "path", f"{file} leaves no training pairs", code="bad-data",
                          expected="at least one prompt/response pair for training",
                          found=f"{len(records)} pairs, {n_eval} held out by eval_fraction",
                          hint="add pairs or lower eval_fraction")
    tok = build_tokenizer(tokenizer, [a + b for a, b in train_records], context)
    pad_id, eos_id = special_ids(tok, tokenizer, context)
    encoded = [(_encode(tok, a), _encode(tok, b)) for a, b in records]
    if not truncate:
        _check_lengths(encoded, lines, file, max_len, max_prompt_len, add_eos, context)
    kept = len(records) - n_eval
    train_pairs = encoded[:kept][:max_examples] if max_examples is not None else encoded[:kept]

    def encode(pairs: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        return encode_pairs(pairs, max_len, max_prompt_len, add_eos=add_eos, pad_id=pad_id,
                            eos_id=eos_id)

    info.update({"path": str(file), "train_pairs": len(train_records),
                 "pad_token_id": pad_id, "eos_token_id": eos_id})
    return DataSource(train=encode(train_pairs),
                      eval=encode(encoded[kept:]) if eval_records else None, info=info,
                      **loader)


def _check_lengths(encoded: list[tuple[list[int], list[int]]], lines: list[int], file: Path,
                   max_len: int, max_prompt_len: int, add_eos: bool,
                   context: BuildContext) -> None:
    """A located error for the first pair that does not fit (nothing is cut silently)."""
    too_long = []
    for (prompt, response), line in zip(encoded, lines, strict=True):
        total = len(prompt) + len(response) + int(add_eos)
        if len(prompt) > max_prompt_len or total > max_len + 1:
            too_long.append((line, len(prompt), total))
    if not too_long:
        return
    line, prompt, total = too_long[0]
    longest = max(t for _, _, t in too_long)
    longest_prompt = max(p for _, p, _ in too_long)
    raise ValidationError([Problem(
        code="too-long", location=Location(str(file), line, 1), node=context.node,
        message=f"params.max_len: {len(too_long)} of {len(encoded)} pairs in {file} do not "
        f"fit without cutting (the first: line {line})",
        expected=f"prompt <= max_prompt_len ({max_prompt_len}) tokens and prompt + "
        f"response{' + <eos>' if add_eos else ''} <= max_len + 1 ({max_len + 1}) tokens",
        found=f"line {line}: a prompt of {prompt} tokens, {total} in all",
        suggestion=f"raise max_len to {longest - 1} and max_prompt_len to {longest_prompt}, "
        "or set truncate: true to cut them (the prompt keeps its end, the response its "
        "start)")])


# -- tokenizers ---------------------------------------------------------------------------------
def byte_tokenizer() -> Any:
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


def _train_bpe(texts: Sequence[str], vocab_size: int) -> Any:
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
                    context: BuildContext | None = None) -> Any:
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
    if p.save_to and context is not None and not context.meta:
        folder = run_dir_path(context, "tokenizer.save_to", p.save_to)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            tok.save(str(folder / "tokenizer.json"))
    return tok


_EOS_NAMES = ("<eos>", "</s>", "<|endoftext|>", "[SEP]")
_PAD_NAMES = ("<pad>", "[PAD]")


def _token_name(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def special_ids(tok: Any, p: TokenizerParams, context: BuildContext | None = None
                ) -> tuple[int, int]:
    """``(pad id, eos id)`` of the tokenizer: 0 and 1 for the byte and BPE tokenizers; for a
    saved one, the tokens ``pad_token``/``eos_token`` name, else those its
    ``tokenizer_config.json`` names, else the usual names. No pad token: the end token pads
    (with a warning); no end token: a located error."""
    if p.kind != "file":
        return PAD_ID, EOS_ID
    config: dict[str, Any] = {}
    path = Path(p.path or "")
    if context is not None:
        path = context.resolve_path(p.path or "")
    folder = path if path.is_dir() else path.parent
    try:
        loaded = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass  # no tokenizer_config.json: the usual names

    def fail(param: str, message: str, found: str, hint: str) -> Exception:
        if context is None:
            return SpecError(message, found=found, suggestion=hint)
        return input_error(context, f"tokenizer.{param}", message, code="bad-tokenizer",
                           expected="a token of the tokenizer's vocabulary", found=found,
                           hint=hint)

    def lookup(param: str, chosen: str | None, names: tuple[str, ...]) -> int | None:
        name = chosen or _token_name(config.get(param))
        if name is not None:
            found = tok.token_to_id(name)
            if found is None:
                raise fail(param, f"the tokenizer has no token '{name}'",
                           found=f"'{name}' ({'set in the spec' if chosen else 'named by '}"
                           f"{'' if chosen else 'tokenizer_config.json'})",
                           hint=f"set tokenizer.{param} to one of its special tokens")
            return int(found)
        for candidate in names:
            if (found := tok.token_to_id(candidate)) is not None:
                return int(found)
        return None

    eos = lookup("eos_token", p.eos_token, _EOS_NAMES)
    if eos is None:
        raise fail("eos_token", "the tokenizer has no end-of-sequence token",
                   found=f"no eos_token in tokenizer_config.json and none of "
                   f"{', '.join(_EOS_NAMES)}", hint="set tokenizer.eos_token to the token "
                   "that ends a sequence")
    pad = lookup("pad_token", p.pad_token, _PAD_NAMES)
    if pad is None:
        where = f"node '{context.node}': " if context is not None else ""
        warnings.warn(f"{where}the tokenizer in {folder} has no pad token; its end token "
                      f"(id {eos}) pads sequences (padding is masked out of every loss)",
                      stacklevel=2)
        pad = eos
    return pad, eos


def _tokenizer_path(p: TokenizerParams, context: BuildContext) -> Path:
    return tokenizer_json(context, "tokenizer.path", p.path or "")


def tokenizer_json(context: BuildContext, param: str, raw: str) -> Path:
    """The ``tokenizer.json`` that parameter ``param`` names (``raw``: a file, or a folder
    holding one whose ``tokenizer_config.json`` names no custom code); checked, not read."""
    what = "a tokenizer.json saved by the tokenizers library, or a folder holding one"
    path = model_path(context, param, raw, kind="file or folder", what=what)
    if path.is_dir():
        check_model_folder(context, param, path, what=what,
                           expected="a tokenizer folder whose tokenizer_config.json names "
                           "no custom code")
        if not (path / "tokenizer.json").is_file():
            raise input_error(context, param, f"{path} holds no tokenizer.json",
                              code="missing-file", expected=what,
                              found="a folder without tokenizer.json",
                              hint="save the tokenizer with tokenizer.save(...) or "
                              "save_pretrained into that folder")
        path = path / "tokenizer.json"
    return path


def _tokenizer_file(p: TokenizerParams, context: BuildContext | None) -> Any:
    """A saved ``tokenizer.json`` (or a folder holding one), read by ``tokenizers`` (which
    runs no code); a folder whose ``tokenizer_config.json`` names custom code is refused."""
    from tokenizers import Tokenizer

    if context is None:
        path = Path(p.path or "")
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise SpecError(f"tokenizer file {path} does not exist")
        return Tokenizer.from_file(str(path))
    return read_tokenizer_json(context, "tokenizer.path", _tokenizer_path(p, context))


def read_tokenizer_json(context: BuildContext, param: str, path: Path) -> Any:
    """``path`` read by ``tokenizers`` (which runs no code); an unreadable file is an input
    error at parameter ``param``."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
        raise input_error(context, param, f"{path} is not a readable tokenizer file",
                          expected="a tokenizer.json saved by the tokenizers library",
                          found=f"{type(exc).__name__}: {str(exc).strip()[:200]}",
                          hint="write it with tokenizers' Tokenizer.save") from None


def _encode(tok: Any, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


# -- reading and splitting ----------------------------------------------------------------------
def _check_inputs(path: str | None, tokenizer: TokenizerParams, context: BuildContext,
                  what: str) -> None:
    """The dry run reads no text, but the files the parameters name must be there."""
    if path is not None:
        existing_path(context, "path", path, kind="file", what=what)
    if tokenizer.kind == "file":
        _tokenizer_path(tokenizer, context)


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
    import torch

    if ids.numel() < seq_len + 1:
        return torch.empty((0, seq_len + 1), dtype=torch.long)
    return ids.unfold(0, seq_len + 1, stride).contiguous()


def _text_split(windows: torch.Tensor, prompt_len: int) -> dict[str, torch.Tensor]:
    import torch

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
    import torch

    def t(length: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty((n, length), dtype=dtype, device="meta")

    return {"input_ids": t(seq_len, torch.long), "targets": t(seq_len, torch.long),
            "attention_mask": t(seq_len, torch.bool), "loss_mask": t(seq_len, torch.bool),
            "prompt_ids": t(prompt_len, torch.long), "prompt_mask": t(prompt_len, torch.bool)}


def encode_pairs(pairs: Sequence[tuple[list[int], list[int]]], max_len: int,
                 max_prompt_len: int, *, add_eos: bool = True, pad_id: int = PAD_ID,
                 eos_id: int = EOS_ID) -> dict[str, torch.Tensor]:
    """Token-id pairs -> padded next-token tensors with prompt and padding masked out."""
    import torch

    n = len(pairs)
    input_ids = torch.full((n, max_len), pad_id, dtype=torch.long)
    targets = torch.full((n, max_len), pad_id, dtype=torch.long)
    attention = torch.zeros((n, max_len), dtype=torch.bool)
    loss_mask = torch.zeros((n, max_len), dtype=torch.bool)
    prompt_ids = torch.full((n, max_prompt_len), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, max_prompt_len), dtype=torch.bool)
    for i, (prompt, response) in enumerate(pairs):
        prompt = prompt[-max_prompt_len:] if max_prompt_len else []
        response = list(response) + ([eos_id] if add_eos else [])
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
