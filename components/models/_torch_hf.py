"""The torch module behind ``hf_causal_lm`` (imported only when a graph is built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgraph.errors import DgraphError

__all__ = ["CausalLMModule", "build_causal_lm"]


def _untie_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                      local_metadata: Any) -> None:
    """Give tied parameters (input embedding = output head) their own storage.

    safetensors refuses tensors that share memory; the copies load back into the tied
    parameter twice with the same values, so a strict ``load_state_dict`` still works.
    """
    seen: set[int] = set()
    for key, value in list(state_dict.items()):
        if not key.startswith(prefix) or not torch.is_tensor(value) or value.device.type == "meta":
            continue
        pointer = value.untyped_storage().data_ptr()
        if pointer in seen and value.numel():
            state_dict[key] = value.detach().clone()
        else:
            seen.add(pointer)


class CausalLMModule(nn.Module):
    """``{"logits": model(input_ids, attention_mask).logits}`` without a key/value cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._register_state_dict_hook(_untie_state_dict)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if attention_mask is None and input_ids.is_meta:
            # The dry run: transformers inspects the mask it would infer (a data-dependent
            # check meta tensors cannot answer); an explicit all-ones mask skips that check.
            attention_mask = torch.ones_like(input_ids)
        if attention_mask is not None and attention_mask.dtype != torch.long:
            attention_mask = attention_mask.to(torch.long)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return {"logits": out.logits}


def build_causal_lm(*, path: Path | None, config: dict[str, Any] | None,
                    attn_implementation: str | None = None,
                    load_weights: bool = True, meta: bool = False) -> CausalLMModule:
    """A causal LM from a saved folder (``path``) or a config dict; ``load_weights=False``
    builds the architecture only (random weights). ``meta`` is the dry run: shapes only, with
    the eager attention path, which has no data-dependent checks on the mask."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise DgraphError("component 'hf_causal_lm' needs transformers: "
                          'pip install "dgraph[hf]"') from None
    extra: dict[str, Any] = {}
    if meta:
        extra["attn_implementation"] = "eager"
    elif attn_implementation is not None:
        extra["attn_implementation"] = attn_implementation
    if path is not None:
        if not (path / "config.json").is_file():
            raise DgraphError(f"hf_causal_lm: {path} holds no config.json; 'path' must be a "
                              "folder written by save_pretrained (models are never downloaded)")
        if load_weights:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                         **extra)
        else:
            hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForCausalLM.from_config(hf_config, **extra)
    else:
        assert config is not None
        settings = dict(config)
        model_type = settings.pop("model_type")
        try:
            hf_config = AutoConfig.for_model(model_type, **settings)
        except (ValueError, KeyError) as exc:
            raise DgraphError(f"hf_causal_lm: bad config for model_type '{model_type}': "
                              f"{exc}") from None
        model = AutoModelForCausalLM.from_config(hf_config, **extra)
    model.float()
    return CausalLMModule(model)
