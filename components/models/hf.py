"""Hugging Face ``transformers`` causal language models as teacher, student or any model.

The declaration imports neither torch nor transformers: the vocabulary size that the ``logits``
port's shape needs comes from the ``config`` parameter, or from ``config.json`` in the ``path``
folder (read as JSON, no weights loaded). ``build`` imports transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["HFCausalLM", "HFCausalLMParams", "read_hf_config"]


def read_hf_config(path: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a saved transformers model as a dict, or None if unreadable."""
    try:
        data = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _vocab_size(config: dict[str, Any] | None) -> int | None:
    if not config:
        return None
    for holder in (config, config.get("text_config") or {}):
        value = holder.get("vocab_size") if isinstance(holder, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class HFCausalLMParams(Params):
    """Parameters of :class:`HFCausalLM`: exactly one of ``path`` and ``config``."""

    path: str | None = Field(
        None, description="local folder written by save_pretrained (config.json + weights); "
        "relative to the spec's folder. Loaded with local_files_only, never downloaded"
    )
    config: dict[str, Any] | None = Field(
        None, description="a transformers config as a dict with 'model_type', e.g. "
        "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, vocab_size: 100}; "
        "the model starts from random weights"
    )
    attn_implementation: str | None = Field(
        None, description="transformers attention implementation ('eager', 'sdpa'); "
        "None: the library's default"
    )

    @model_validator(mode="after")
    def _one_source(self) -> HFCausalLMParams:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of 'path' (a saved model folder) and 'config' "
                             "(a transformers config dict)")
        if self.config is not None and not isinstance(self.config.get("model_type"), str):
            raise ValueError("config needs a 'model_type' string, e.g. model_type: gpt2")
        return self


@component("hf_causal_lm", roles=("teacher", "student", "model"))
class HFCausalLM(Component):
    """A transformers causal LM (``AutoModelForCausalLM``): token ids in, next-token logits out.

    Built from a small ``config`` dict (random weights) or loaded with ``from_pretrained`` from
    a local ``path``. ``attention_mask`` (1 = real token, 0 = padding) is optional. The forward
    runs without a key/value cache and returns ``{"logits": [B, T, vocab_size]}``. Submodules
    (e.g. ``model.transformer.h.0``) can be tapped.
    """

    Params = HFCausalLMParams
    inputs = {
        "input_ids": Port("Tokens", "B, T", "token ids (int64)"),
        "attention_mask": Port("Mask", "B, T", "1 for real tokens, 0 for padding",
                               optional=True),
    }
    outputs = {"logits": Port("Logits", "B, T, {vocab_size}", "next-token scores")}
    tappable = True

    def hf_config(self) -> dict[str, Any] | None:
        """The model's config as plain data (from ``config`` or ``path/config.json``)."""
        if self.params.config is not None:
            return dict(self.params.config)
        return read_hf_config(self.params.path or "")

    def port_params(self) -> dict[str, Any]:
        values = self.params.model_dump()
        values["vocab_size"] = _vocab_size(self.hf_config())
        return values

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_hf import build_causal_lm

        p = self.params
        path = None if p.path is None else context.resolve_path(p.path)
        # The exporter loads the trained weights right after building: it asks for the
        # architecture only, like the meta-device dry run.
        weights = not (context.meta or context.extras.get("architecture_only", False))
        return build_causal_lm(path=path, config=p.config,
                               attn_implementation=p.attn_implementation, load_weights=weights,
                               meta=context.meta)
