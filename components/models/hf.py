"""Hugging Face ``transformers`` causal language models as teacher, student or any model.

The declaration imports neither torch nor transformers: the vocabulary size that the ``logits``
port's shape needs comes from the ``config`` parameter, or from ``config.json`` in the ``path``
folder (read as JSON, no weights loaded; a relative folder, which means the spec's folder, is
read when the node is built, in the dry run). ``build`` imports transformers, with
``trust_remote_code=False``: a folder whose config names custom code (``auto_map``) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from dgraph.components._inputs import (
    check_config_dict,
    check_model_folder,
    existing_path,
    input_error,
)
from pydantic import Field, field_validator, model_validator

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["HFCausalLM", "HFCausalLMParams", "derived_config", "read_hf_config"]

# Config keys that mean the same thing across model types (transformers' attribute_map names
# them on the config object; the static side has only the dict).
_ALIASES = {
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim"),
}


def _set_alias(config: dict[str, Any], canonical: str, value: Any) -> None:
    """Set ``canonical`` under whichever of its alias names the config already uses."""
    for name in _ALIASES[canonical]:
        if name in config:
            config[name] = value
            return
    config[canonical] = value


def derived_config(teacher: dict[str, Any], *, num_layers: int | None = None,
                   hidden_size: int | None = None, num_heads: int | None = None,
                   intermediate_size: int | None = None,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A student config: the teacher's, with fewer layers / a narrower width (plain dicts)."""
    config = {k: v for k, v in teacher.items()
              if k not in ("architectures", "_name_or_path", "transformers_version",
                           "torch_dtype", "dtype")}
    if num_layers is not None:
        _set_alias(config, "num_hidden_layers", num_layers)
    if hidden_size is not None:
        _set_alias(config, "hidden_size", hidden_size)
    if num_heads is not None:
        _set_alias(config, "num_attention_heads", num_heads)
        if "num_key_value_heads" in config:
            config["num_key_value_heads"] = min(num_heads, config["num_key_value_heads"]
                                                or num_heads)
    if intermediate_size is not None:
        _set_alias(config, "intermediate_size", intermediate_size)
    if "head_dim" in config and (hidden_size is not None or num_heads is not None):
        config.pop("head_dim")  # recomputed from hidden_size / num_attention_heads
    config.update(overrides or {})
    return config


def read_hf_config(path: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a saved transformers model as a dict, or None if unreadable."""
    try:
        data = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _static_config(raw: str) -> dict[str, Any] | None:
    """A folder's config.json read without a spec folder (static validation): only for an
    absolute path, since a relative one means the spec's folder, known when the node is
    built (the dry run then finds the sizes)."""
    folder = Path(raw).expanduser()
    return read_hf_config(folder) if folder.is_absolute() else None


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
    attn_implementation: Literal["eager", "sdpa", "flex_attention", "flash_attention_2",
                                 "flash_attention_3"] | None = Field(
        None, description="transformers attention implementation ('eager', 'sdpa', ...); "
        "None: the library's default. Kernels from the Hub are not accepted"
    )
    derive_from: str | dict[str, Any] | None = Field(
        None, description="build a student from a teacher's config: a saved model folder "
        "(its config.json, and its weights for init_layers) or a config dict; changed by "
        "num_layers / hidden_size / num_heads / intermediate_size / overrides"
    )
    num_layers: int | None = Field(None, gt=0, description="derive_from: number of layers")
    hidden_size: int | None = Field(None, gt=0, description="derive_from: hidden width")
    num_heads: int | None = Field(None, gt=0, description="derive_from: attention heads")
    intermediate_size: int | None = Field(None, gt=0, description="derive_from: MLP width")
    overrides: dict[str, Any] | None = Field(
        None, description="derive_from: any other config keys to change")
    init_layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="derive_from a folder: initialise student layer i from teacher "
        "layer init_layers[i] (and the embeddings, final norm and head from the teacher), "
        "DistilBERT-style; needs the teacher's width"
    )

    @field_validator("config", "overrides")
    @classmethod
    def _plain_config(cls, value: dict[str, Any] | None, info) -> dict[str, Any] | None:
        if value is not None:
            check_config_dict(value, info.field_name)
        return value

    @field_validator("derive_from")
    @classmethod
    def _plain_teacher(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, dict):
            check_config_dict(value, "derive_from")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> HFCausalLMParams:
        sources = [x is not None for x in (self.path, self.config, self.derive_from)]
        if sum(sources) != 1:
            raise ValueError("give exactly one of 'path' (a saved model folder), 'config' "
                             "(a transformers config dict) and 'derive_from' (a teacher's "
                             "folder or config, for a smaller student)")
        if self.config is not None and not isinstance(self.config.get("model_type"), str):
            raise ValueError("config needs a 'model_type' string, e.g. model_type: gpt2")
        if isinstance(self.derive_from, dict) and \
                not isinstance(self.derive_from.get("model_type"), str):
            raise ValueError("derive_from config needs a 'model_type' string")
        derived = (self.num_layers, self.hidden_size, self.num_heads, self.intermediate_size,
                   self.overrides, self.init_layers)
        if self.derive_from is None and any(v is not None for v in derived):
            raise ValueError("num_layers, hidden_size, num_heads, intermediate_size, "
                             "overrides and init_layers only apply with derive_from")
        if self.init_layers is not None:
            if not isinstance(self.derive_from, str):
                raise ValueError("init_layers copies weights: derive_from must be a saved "
                                 "model folder")
            if self.num_layers is not None and len(self.init_layers) != self.num_layers:
                raise ValueError(f"init_layers names {len(self.init_layers)} teacher layers "
                                 f"but num_layers is {self.num_layers}")
        return self


@component("hf_causal_lm", roles=("teacher", "student", "model"))
class HFCausalLM(Component):
    """A transformers causal LM (``AutoModelForCausalLM``): token ids in, next-token logits out.

    Built from a small ``config`` dict (random weights) or loaded with ``from_pretrained`` from
    a local ``path``, or derived from a teacher (``derive_from``: its folder or config) with
    fewer layers / a narrower width, optionally starting from chosen teacher layers
    (``init_layers: [0, 2]``: student layer 0 <- teacher layer 0, 1 <- 2).
    ``attention_mask`` (1 = real token, 0 = padding) is optional. The forward
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
        """The model's config as plain data (from ``config``, ``path/config.json`` or the
        teacher's config changed as ``derive_from`` says)."""
        p = self.params
        if p.config is not None:
            return dict(p.config)
        if p.derive_from is not None:
            teacher = dict(p.derive_from) if isinstance(p.derive_from, dict) \
                else _static_config(p.derive_from)
            if teacher is None:
                return None
            num_layers = p.num_layers if p.num_layers is not None else (
                len(p.init_layers) if p.init_layers is not None else None)
            return derived_config(teacher, num_layers=num_layers, hidden_size=p.hidden_size,
                                  num_heads=p.num_heads,
                                  intermediate_size=p.intermediate_size, overrides=p.overrides)
        return _static_config(p.path or "")

    def port_params(self) -> dict[str, Any]:
        values = self.params.model_dump()
        values["vocab_size"] = _vocab_size(self.hf_config())
        return values

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_hf import build_causal_lm

        p = self.params
        path = None if p.path is None else model_folder(context, "path", p.path)
        # The exporter loads the trained weights right after building: it asks for the
        # architecture only, like the meta-device dry run.
        weights = not (context.meta or context.extras.get("architecture_only", False))
        config = p.config
        teacher_path = None
        if p.derive_from is not None:
            if isinstance(p.derive_from, str):
                teacher_path = model_folder(context, "derive_from", p.derive_from)
                teacher = read_hf_config(teacher_path)
                if teacher is None:
                    raise input_error(
                        context, "derive_from", f"{teacher_path / 'config.json'} is not a "
                        "JSON object", expected="a folder written by save_pretrained",
                        found="config.json that does not hold a JSON object",
                        hint="re-write the folder with save_pretrained")
                self_params = self.params.model_copy(update={"derive_from": teacher})
                config = HFCausalLM(self_params, self.node).hf_config()
            else:
                config = self.hf_config()
        try:
            module = build_causal_lm(path=path, config=config,
                                     attn_implementation=p.attn_implementation,
                                     load_weights=weights, meta=context.meta)
            if p.init_layers is not None and weights and teacher_path is not None:
                from dgraph.components.models._torch_hf import init_from_teacher_layers

                init_from_teacher_layers(module, teacher_path, p.init_layers)
        except (OSError, ValueError) as exc:
            if path is None and teacher_path is None:
                raise
            param, folder = ("path", path) if path is not None else ("derive_from",
                                                                     teacher_path)
            raise input_error(
                context, param, f"transformers cannot load the model in {folder}",
                expected="a folder written by save_pretrained (config.json and the "
                "weights, e.g. model.safetensors)",
                found=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
                hint="re-write the folder with save_pretrained; models are never "
                "downloaded") from None
        return module


def model_folder(context: BuildContext, param: str, raw: str) -> Path:
    """A saved transformers model folder named by the spec: it exists, holds a config.json,
    and names no custom code (transformers would offer to run it)."""
    what = "a folder written by save_pretrained (config.json and weights)"
    folder = existing_path(context, param, raw, kind="folder", what=what)
    if not (folder / "config.json").is_file():
        raise input_error(context, param, f"{folder} holds no config.json",
                          code="missing-file", expected=what,
                          found=f"a folder without config.json ({_listing(folder)})",
                          hint="point it at the folder save_pretrained wrote; models are "
                          "never downloaded")
    check_model_folder(context, param, folder, what=what)
    return folder


def _listing(folder: Path, limit: int = 5) -> str:
    names = sorted(child.name for child in folder.iterdir())
    if not names:
        return "it is empty"
    return "it holds " + ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
