"""Hugging Face ``transformers`` causal language models as teacher, student or any model.

The declaration imports neither torch nor transformers: the vocabulary size that the ``logits``
port's shape needs comes from the ``config`` parameter, or from ``config.json`` in the ``path``
folder (read as JSON, no weights loaded; a relative folder, which means the spec's folder, is
read when the node is built, in the dry run). Building imports transformers, with
``trust_remote_code=False``: a folder whose config names custom code (``auto_map``) is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from dgraph.components._inputs import (
    check_config_dict,
    check_model_folder,
    input_error,
    model_path,
)
from pydantic import AfterValidator, Field, ValidationInfo

from dgraph.declare import Logits, Mask, Module, Outputs, Tokens, model, param
from dgraph.errors import DgraphError
from dgraph.registry import BuildContext

__all__ = ["HFCausalLM", "derived_config", "hf_config", "init_from_teacher_layers",
           "load_causal_lm", "meta_safe_call", "read_hf_config", "save_pretrained_from_weights"]

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
            current = config["num_key_value_heads"]
            # A malformed teacher value is transformers' to report when the model is built.
            config["num_key_value_heads"] = (min(num_heads, current) if isinstance(current, int)
                                             and current > 0 else num_heads)
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


def _student_config(teacher: dict[str, Any], *, num_layers: int | None,
                    hidden_size: int | None, num_heads: int | None,
                    intermediate_size: int | None, overrides: dict[str, Any] | None,
                    init_layers: list[int] | None) -> dict[str, Any]:
    """``derive_from``: the teacher's config changed by the student's parameters."""
    if num_layers is None and init_layers is not None:
        num_layers = len(init_layers)
    return derived_config(teacher, num_layers=num_layers, hidden_size=hidden_size,
                          num_heads=num_heads, intermediate_size=intermediate_size,
                          overrides=overrides)


def hf_config(p: Any) -> dict[str, Any] | None:
    """The config of an ``hf_causal_lm`` node as plain data, from its parameters ``p``: the
    ``config``, ``path/config.json``, or the teacher's config changed as ``derive_from`` says
    (None when only the built node can know it: a relative folder)."""
    if p.config is not None:
        return dict(p.config)
    if p.derive_from is not None:
        teacher = dict(p.derive_from) if isinstance(p.derive_from, dict) \
            else _static_config(p.derive_from)
        if teacher is None:
            return None
        return _student_config(teacher, num_layers=p.num_layers, hidden_size=p.hidden_size,
                               num_heads=p.num_heads, intermediate_size=p.intermediate_size,
                               overrides=p.overrides, init_layers=p.init_layers)
    return _static_config(p.path or "")


def _plain_config(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, dict):
        check_config_dict(value, info.field_name or "config")
    return value


# Checked whole (not inside a union) so that a bad dict is one error at the parameter.
ConfigDict = Annotated[dict[str, Any] | None, AfterValidator(_plain_config)]
FolderOrConfig = Annotated[str | dict[str, Any] | None, AfterValidator(_plain_config)]


def _one_source(p: Any) -> None:
    sources = [x is not None for x in (p.path, p.config, p.derive_from)]
    if sum(sources) != 1:
        raise ValueError("give exactly one of 'path' (a saved model folder), 'config' "
                         "(a transformers config dict) and 'derive_from' (a teacher's "
                         "folder or config, for a smaller student)")
    if p.config is not None and not isinstance(p.config.get("model_type"), str):
        raise ValueError("config needs a 'model_type' string, e.g. model_type: gpt2")
    if isinstance(p.derive_from, dict) and not isinstance(p.derive_from.get("model_type"), str):
        raise ValueError("derive_from config needs a 'model_type' string")
    derived = (p.num_layers, p.hidden_size, p.num_heads, p.intermediate_size, p.overrides,
               p.init_layers)
    if p.derive_from is None and any(v is not None for v in derived):
        raise ValueError("num_layers, hidden_size, num_heads, intermediate_size, "
                         "overrides and init_layers only apply with derive_from")
    if p.init_layers is not None:
        if not isinstance(p.derive_from, str):
            raise ValueError("init_layers copies weights: derive_from must be a saved "
                             "model folder")
        if p.num_layers is not None and len(p.init_layers) != p.num_layers:
            raise ValueError(f"init_layers names {len(p.init_layers)} teacher layers "
                             f"but num_layers is {p.num_layers}")


def _vocabulary(p: Any) -> dict[str, Any]:
    return {"vocab_size": _vocab_size(hf_config(p))}


@model("hf_causal_lm", roles=("teacher", "student", "model"), check=_one_source,
       sizes=_vocabulary)
class HFCausalLM(Module):
    """A transformers causal LM (``AutoModelForCausalLM``): token ids in, next-token logits out.

    Built from a small ``config`` dict (random weights) or loaded with ``from_pretrained`` from
    a local ``path``, or derived from a teacher (``derive_from``: its folder or config) with
    fewer layers / a narrower width, optionally starting from chosen teacher layers
    (``init_layers: [0, 2]``: student layer 0 <- teacher layer 0, 1 <- 2).
    ``attention_mask`` (1 = real token, 0 = padding) is optional. The forward
    runs without a key/value cache and returns ``{"logits": [B, T, vocab_size]}``. Submodules
    (e.g. ``model.transformer.h.0``) can be tapped.
    """

    def __init__(
        self, *,
        path: str | None = param(
            None, doc="local folder written by save_pretrained (config.json + weights); "
            "relative to the spec's folder. Loaded with local_files_only, never downloaded"),
        config: ConfigDict = param(
            None, doc="a transformers config as a dict with 'model_type', e.g. "
            "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, vocab_size: 100}; "
            "the model starts from random weights"),
        attn_implementation: Literal["eager", "sdpa", "flex_attention", "flash_attention_2",
                                     "flash_attention_3"] | None = param(
            None, doc="transformers attention implementation ('eager', 'sdpa', ...); "
            "None: the library's default. Kernels from the Hub are not accepted"),
        derive_from: FolderOrConfig = param(
            None, doc="build a student from a teacher's config: a saved model folder "
            "(its config.json, and its weights for init_layers) or a config dict; changed by "
            "num_layers / hidden_size / num_heads / intermediate_size / overrides"),
        num_layers: int | None = param(None, gt=0, doc="derive_from: number of layers"),
        hidden_size: int | None = param(None, gt=0, doc="derive_from: hidden width"),
        num_heads: int | None = param(None, gt=0, doc="derive_from: attention heads"),
        intermediate_size: int | None = param(None, gt=0, doc="derive_from: MLP width"),
        overrides: ConfigDict = param(
            None, doc="derive_from: any other config keys to change"),
        init_layers: list[Annotated[int, Field(ge=0)]] | None = param(
            None, doc="derive_from a folder: initialise student layer i from teacher "
            "layer init_layers[i] (and the embeddings, final norm and head from the teacher), "
            "DistilBERT-style; needs the teacher's width"),
        gradient_checkpointing: bool = param(
            False, doc="recompute each layer's activations in backward instead of keeping "
            "them (transformers' gradient checkpointing): less memory for a large student, "
            "about one more forward of compute"),
        fused_gelu: bool = param(
            True, doc="run the GPT-2 family's gelu_new as torch's fused tanh GELU: the same "
            "formula in one kernel instead of eight (outputs agree to float rounding, ~1e-6; "
            "about a fifth of a small model's CPU step); false keeps transformers' module"),
        context: BuildContext,
    ) -> None:
        super().__init__()
        self._register_state_dict_hook(_untie_state_dict)
        folder = None if path is None else model_folder(context, "path", path)
        # The exporter loads the trained weights right after building: it asks for the
        # architecture only, like the meta-device dry run.
        weights = context.weights and not context.meta
        teacher_path = None
        teacher = derive_from
        if isinstance(derive_from, str):
            teacher_path = model_folder(context, "derive_from", derive_from)
            teacher = read_hf_config(teacher_path)
            if teacher is None:
                raise input_error(
                    context, "derive_from", f"{teacher_path / 'config.json'} is not a "
                    "JSON object", expected="a folder written by save_pretrained",
                    found="config.json that does not hold a JSON object",
                    hint="re-write the folder with save_pretrained")
        if teacher is not None:
            config = _student_config(dict(teacher), num_layers=num_layers,
                                     hidden_size=hidden_size, num_heads=num_heads,
                                     intermediate_size=intermediate_size, overrides=overrides,
                                     init_layers=init_layers)
        try:
            self.model = load_causal_lm(path=folder, config=config,
                                        attn_implementation=attn_implementation,
                                        load_weights=weights, meta=context.meta,
                                        fused_gelu=fused_gelu)
            if init_layers is not None and weights and teacher_path is not None:
                init_from_teacher_layers(self, teacher_path, init_layers)
            if gradient_checkpointing:
                enable_checkpointing(self.model, context)
        except (OSError, ValueError) as exc:
            if folder is None and teacher_path is None:
                raise
            name, where = ("path", folder) if folder is not None else ("derive_from",
                                                                       teacher_path)
            raise input_error(
                context, name, f"transformers cannot load the model in {where}",
                expected="a folder written by save_pretrained (config.json and the "
                "weights, e.g. model.safetensors)",
                found=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
                hint="re-write the folder with save_pretrained; models are never "
                "downloaded") from None

    def forward(self, input_ids: Tokens("B, T", "token ids (int64)"),
                attention_mask: Mask("B, T", "1 for real tokens, 0 for padding") = None,
                ) -> Outputs(logits=Logits("B, T, {vocab_size}", "next-token scores")):
        import torch

        if attention_mask is not None and attention_mask.dtype != torch.long:
            attention_mask = attention_mask.to(torch.long)
        out = meta_safe_call(self.model, input_ids, attention_mask, use_cache=False)
        return {"logits": out.logits}


def enable_checkpointing(model: Any, context: BuildContext) -> None:
    """Turn on transformers' gradient checkpointing (non-reentrant: it works with frozen
    inputs and several calls per step), or say that this architecture has none."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise input_error(context, "gradient_checkpointing", f"{type(model).__name__} does not "
                          "support gradient checkpointing in transformers",
                          code="bad-param", expected="a model type with gradient "
                          "checkpointing (gpt2, llama, bert, ...)",
                          found=f"{type(model).__name__}", hint="set gradient_checkpointing: "
                          "false")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def meta_safe_call(model: Any, input_ids: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """``model(input_ids=..., attention_mask=..., **kwargs)``, also in the meta dry run.

    transformers makes data-dependent checks (``.item()``) that meta tensors cannot answer:
    on a given mask (``mask.all()``: BERT-family and sdpa models), or on the mask it infers
    from the pad token when none is given (GPT-2-style models). The dry run therefore tries
    an all-ones mask, then no mask; neither changes a shape."""
    import torch

    if not input_ids.is_meta:
        return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    try:
        return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    except RuntimeError as exc:
        if "meta tensors" not in str(exc):
            raise
    return model(input_ids=input_ids, attention_mask=None, **kwargs)


def _untie_state_dict(module: Any, state_dict: dict[str, Any], prefix: str,
                      local_metadata: Any) -> None:
    """Give tied parameters (input embedding = output head) their own storage.

    safetensors refuses tensors that share memory; the copies load back into the tied
    parameter twice with the same values, so a strict ``load_state_dict`` still works.
    """
    import torch
    from torch.distributed.tensor import DTensor

    seen: set[int] = set()
    for key, value in list(state_dict.items()):
        if not key.startswith(prefix) or not torch.is_tensor(value) or \
                value.device.type == "meta" or isinstance(value, DTensor):
            continue  # a sharded (FSDP) value is gathered into a tensor of its own
        pointer = value.untyped_storage().data_ptr()
        if pointer in seen and value.numel():
            state_dict[key] = value.detach().clone()
        else:
            seen.add(pointer)


def load_causal_lm(*, path: Path | None, config: dict[str, Any] | None,
                   attn_implementation: str | None = None,
                   load_weights: bool = True, meta: bool = False,
                   fused_gelu: bool = False) -> Any:
    """A transformers causal LM from a saved folder (``path``) or a config dict;
    ``load_weights=False`` builds the architecture only (random weights). ``meta`` is the dry
    run: shapes only, with the eager attention path, which has no data-dependent checks on the
    mask.

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
            lm = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **extra)
        else:
            hf = AutoConfig.from_pretrained(str(path), local_files_only=True,
                                            trust_remote_code=False)
            lm = AutoModelForCausalLM.from_config(hf, **extra)
    else:
        assert config is not None
        settings = dict(config)
        model_type = settings.pop("model_type")
        try:
            hf = AutoConfig.for_model(model_type, **settings)
        except (ValueError, KeyError) as exc:
            raise DgraphError(f"hf_causal_lm: bad config for model_type '{model_type}': "
                              f"{exc}") from None
        lm = AutoModelForCausalLM.from_config(hf, **extra)
    if fused_gelu:
        fuse_tanh_gelu(lm)
    return lm.float()


_FUSED_GELU: Any = None


def fuse_tanh_gelu(model: Any) -> int:
    """Run ``gelu_new`` (GPT-2, GPT-Neo, GPT-J, ...) as torch's fused tanh GELU; how many.

    transformers' ``NewGELUActivation`` writes ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715
    x^3)))`` as eight tensor operations, each keeping its input for backward: on the llm_*
    specs (CPU, one thread) about a fifth of a KD step. ``F.gelu(x, approximate="tanh")`` is
    the same formula in one kernel (values agree to float rounding, ~1e-6 on the logits). The
    config is left as it is: a saved model still says ``gelu_new``.
    """
    global _FUSED_GELU
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover - an older transformers
        return 0
    if _FUSED_GELU is None:
        import torch

        class FusedTanhGELU(torch.nn.Module):
            """``gelu_new`` as one kernel: ``F.gelu(x, approximate="tanh")``."""

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.gelu(x, approximate="tanh")

        _FUSED_GELU = FusedTanhGELU
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, _FUSED_GELU())
                swapped += 1
    return swapped


_LAYER_KEY = re.compile(r"^(?P<head>.*?\.(?:h|layers|layer|blocks|block))\.(?P<index>\d+)\."
                        r"(?P<tail>.*)$")


def _layer_keys(state: dict[str, Any]) -> tuple[dict[int, dict[str, str]], list[str]]:
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


def init_from_teacher_layers(student: Any, teacher_path: Path, init_layers: list[int]) -> None:
    """Copy teacher layer ``init_layers[i]`` into student layer ``i`` of a built
    ``hf_causal_lm``, and every non-layer weight (embeddings, final norm, head) whose shape
    matches (DistilBERT-style init)."""
    import torch

    teacher = load_causal_lm(path=teacher_path, config=None)
    with torch.no_grad():
        t_state = {f"model.{k}": v for k, v in teacher.state_dict().items()}
        s_state = student.state_dict()
        t_layers, t_others = _layer_keys(t_state)
        s_layers, s_others = _layer_keys(s_state)
        if len(init_layers) != len(s_layers):
            raise DgraphError(f"init_layers names {len(init_layers)} teacher layers but the "
                              f"student has {len(s_layers)}")
        bad = [j for j in init_layers if j not in t_layers]
        if bad:
            raise DgraphError(f"init_layers: the teacher has layers 0..{len(t_layers) - 1}, "
                              f"not {bad}")
        updates: dict[str, Any] = {}
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

    module = HFCausalLM.create(config=config)
    module.load_state_dict(load_weights(Path(weights)))
    out = Path(out_dir)
    module.model.save_pretrained(str(out))
    return out


def model_folder(context: BuildContext, param: str, raw: str) -> Path:
    """A saved transformers model folder named by the spec: it exists, holds a config.json,
    and names no custom code (transformers would offer to run it)."""
    what = "a folder written by save_pretrained (config.json and weights)"
    folder = model_path(context, param, raw, kind="folder", what=what)
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
