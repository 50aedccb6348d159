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
imports neither torch nor tokenizers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = [
    "BYTE_VOCAB_SIZE",
    "CORPUS_DIR",
    "JsonlPairs",
    "JsonlPairsParams",
    "TextLM",
    "TextLMParams",
    "TokenizerParams",
]

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SPECIAL_TOKENS = ("<pad>", "<eos>")  # ids 0 and 1
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
        return self

    @property
    def size(self) -> int:
        return BYTE_VOCAB_SIZE if self.kind == "byte" else int(self.vocab_size or 0)


class _TextCommon(Params):
    tokenizer: TokenizerParams = Field(default_factory=TokenizerParams,
                                       description="{kind: byte|bpe|file, vocab_size, ...}")
    batch_size: int = Field(32, gt=0, description="sequences per batch")
    shuffle: bool = Field(True, description="reshuffle the training set every epoch")
    drop_last: bool = Field(True, description="skip the last incomplete training batch")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                 description="held-out share (the end of the text / file)")
    max_examples: int | None = Field(None, gt=0, description="cap on training sequences")


class TextLMParams(_TextCommon):
    """Parameters of :class:`TextLM`."""

    path: str | None = Field(None, description="a UTF-8 text file; default: the shipped "
                             "public-domain corpus (two Shakespeare plays, ~190 KB)")
    seq_len: int = Field(64, gt=1, description="tokens per sequence (T)")
    stride: int | None = Field(None, gt=0, description="tokens between sequence starts "
                               "(default: seq_len, no overlap)")
    prompt_len: int = Field(8, gt=0, description="P: the first P tokens of each sequence "
                            "are served as prompts (prompt_ids) for samplers")

    @model_validator(mode="after")
    def _prompt_fits(self) -> TextLMParams:
        if self.prompt_len >= self.seq_len:
            raise ValueError(f"prompt_len ({self.prompt_len}) must be < seq_len "
                             f"({self.seq_len})")
        return self


_TOKEN_PORTS = {
    "input_ids": Port("Tokens", "B, {seq_len}", "token ids fed to the model (int64)"),
    "targets": Port("Tokens", "B, {seq_len}", "the next token of each position (int64)"),
    "attention_mask": Port("Mask", "B, {seq_len}", "1 = real input token, 0 = padding"),
    "loss_mask": Port("Mask", "B, {seq_len}", "1 = this position's prediction counts "
                      "(not padding, not prompt)"),
}


class _TokenizedSource(Component):
    """What both text sources share: the vocabulary size comes from the tokenizer params."""

    def port_params(self) -> dict[str, Any]:
        values = self.params.model_dump()
        values["vocab_size"] = self.params.tokenizer.size
        return values

    @property
    def vocab_size(self) -> int:
        return self.params.tokenizer.size


@component("text_lm", roles=("data",))
class TextLM(_TokenizedSource):
    """Plain text chunked into next-token sequences of ``seq_len`` tokens.

    The text (default: the shipped corpus) is tokenized once; the last ``eval_fraction`` of
    the tokens is held out. Sequence ``i`` covers tokens ``[i*stride, i*stride + seq_len]``:
    ``input_ids`` are its first ``seq_len`` tokens and ``targets`` the last ``seq_len``, so
    every position has a target (``loss_mask`` all ones). ``prompt_ids`` are the first
    ``prompt_len`` tokens, for sequence-level KD samplers.
    """

    Params = TextLMParams
    inputs: dict[str, Port] = {}
    outputs = {
        **_TOKEN_PORTS,
        "prompt_ids": Port("Tokens", "B, {prompt_len}", "the sequence's first tokens"),
        "prompt_mask": Port("Mask", "B, {prompt_len}", "1 = real prompt token"),
    }

    def build(self, context: BuildContext):
        from dgraph.components.data._torch_text import build_text_lm

        return build_text_lm(self.params, context)


class JsonlPairsParams(_TextCommon):
    """Parameters of :class:`JsonlPairs`."""

    path: str | None = Field(None, description="a JSONL file, one {prompt, response} object "
                             "per line; default: the shipped Shakespeare dialogue pairs")
    prompt_key: str = Field("prompt", description="the prompt's key in each object")
    response_key: str = Field("response", description="the response's key in each object")
    max_len: int = Field(128, gt=1, description="T: tokens per sequence after truncation")
    max_prompt_len: int = Field(64, gt=0, description="P: prompt tokens kept (the end of a "
                                "longer prompt; prompt_ids are left-padded to P)")
    add_eos: bool = Field(True, description="append <eos> to the response (it is predicted)")

    @model_validator(mode="after")
    def _prompt_fits(self) -> JsonlPairsParams:
        if self.max_prompt_len >= self.max_len:
            raise ValueError(f"max_prompt_len ({self.max_prompt_len}) must be < max_len "
                             f"({self.max_len})")
        return self

    @property
    def seq_len(self) -> int:
        return self.max_len


@component("jsonl_pairs", roles=("data",))
class JsonlPairs(_TokenizedSource):
    """Prompt/response pairs from a JSONL file, for supervised fine-tuning and distillation.

    Each example is ``prompt + response (+ <eos>)``, truncated to ``max_len + 1`` tokens: the
    prompt keeps at most its last ``max_prompt_len`` tokens, then the response is cut at the
    right. Sequences are right-padded with ``<pad>`` (id 0). ``loss_mask`` is 1 exactly where
    the target is a response token (or the final ``<eos>``): prompt and padding positions are
    excluded from every token-level loss. ``prompt_ids`` holds the prompt left-padded to
    ``max_prompt_len`` (``prompt_mask`` marks its real tokens), ready for generation.
    """

    Params = JsonlPairsParams
    inputs: dict[str, Port] = {}
    outputs = {
        **{name: Port(p.type, p.shape.replace("seq_len", "max_len"), p.doc)  # type: ignore
           for name, p in _TOKEN_PORTS.items()},
        "prompt_ids": Port("Tokens", "B, {max_prompt_len}", "prompts, left-padded"),
        "prompt_mask": Port("Mask", "B, {max_prompt_len}", "1 = real prompt token"),
    }

    def build(self, context: BuildContext):
        from dgraph.components.data._torch_text import build_jsonl_pairs

        return build_jsonl_pairs(self.params, context)
