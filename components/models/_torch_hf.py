"""The torch module behind ``hf_causal_lm`` (imported only when a graph is built)."""

from __future__ import annotations

import re
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
    the eager attention path, which has no data-dependent checks on the mask.

    Never runs code from a model folder or the Hub: every transformers call gets
    ``trust_remote_code=False`` (so it cannot ask on stdin) and ``local_files_only``."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise DgraphError("component 'hf_causal_lm' needs transformers: "
                          'pip install "dgraph[hf]"') from None
    extra: dict[str, Any] = {"trust_remote_code": False}
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
            hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True,
                                                   trust_remote_code=False)
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


_LAYER_KEY = re.compile(r"^(?P<head>.*?\.(?:h|layers|layer|blocks|block))\.(?P<index>\d+)\."
                        r"(?P<tail>.*)$")


def _layer_keys(state: dict[str, torch.Tensor]) -> tuple[dict[int, dict[str, str]], list[str]]:
    """Layer index -> {key with the index replaced by '{}': key}, and the non-layer keys."""
    layers: dict[int, dict[str, str]] = {}
    others = []
    for key in state:
        match = _LAYER_KEY.match(key)
        if match is None:
            others.append(key)
            continue
        pattern = f"{match['head']}.{{}}.{match['tail']}"
        layers.setdefault(int(match["index"]), {})[pattern] = key
    return layers, others


@torch.no_grad()
def init_from_teacher_layers(student: CausalLMModule, teacher_path: Path,
                             init_layers: list[int]) -> None:
    """Copy teacher layer ``init_layers[i]`` into student layer ``i``, and every non-layer
    weight (embeddings, final norm, head) whose shape matches (DistilBERT-style init)."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_path), local_files_only=True,
                                                   trust_remote_code=False)
    t_state = {f"model.{k}": v for k, v in teacher.state_dict().items()}
    s_state = student.state_dict()
    t_layers, t_others = _layer_keys(t_state)
    s_layers, s_others = _layer_keys(s_state)
    if len(init_layers) != len(s_layers):
        raise DgraphError(f"init_layers names {len(init_layers)} teacher layers but the "
                          f"student has {len(s_layers)}")
    bad = [j for j in init_layers if j not in t_layers]
    if bad:
        raise DgraphError(f"init_layers: the teacher has layers 0..{len(t_layers) - 1}, not "
                          f"{bad}")
    updates: dict[str, torch.Tensor] = {}
    for i, j in enumerate(init_layers):
        for pattern, s_key in s_layers[i].items():
            t_key = t_layers[j].get(pattern)
            if t_key is None or t_state[t_key].shape != s_state[s_key].shape:
                raise DgraphError(
                    f"init_layers: student '{s_key}' {list(s_state[s_key].shape)} has no "
                    f"teacher counterpart of the same shape in layer {j}; copying layers "
                    "needs the teacher's width (leave hidden_size/num_heads unchanged)")
            updates[s_key] = t_state[t_key]
    for key in s_others:
        if key in t_state and t_state[key].shape == s_state[key].shape:
            updates[key] = t_state[key]
    student.load_state_dict(updates, strict=False)


def save_pretrained_from_weights(config: dict[str, Any], weights: Path | str,
                                 out_dir: Path | str) -> Path:
    """Write a dgraph ``final/<node>.safetensors`` of an ``hf_causal_lm`` built from
    ``config`` as a transformers folder (``save_pretrained``), loadable with ``path:``."""
    from dgraph.runtime.checkpoint import load_weights

    module = build_causal_lm(path=None, config=config)
    module.load_state_dict(load_weights(Path(weights)))
    out = Path(out_dir)
    module.model.save_pretrained(str(out))
    return out
