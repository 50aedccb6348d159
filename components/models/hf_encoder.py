"""Hugging Face ``transformers`` encoders (BERT family, ``AutoModel``) with pooling: token
states and a sentence embedding, for sentence-embedding distillation.

The declaration imports neither torch nor transformers. The width of the outputs comes from
the ``config`` parameter or from ``config.json`` in an absolute ``path`` folder (read as JSON);
otherwise the dry run finds it. Building imports transformers with ``trust_remote_code=False``
and ``local_files_only=True``: nothing is ever downloaded, and a folder whose config names
custom code (``auto_map``) is refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from dgraph.components.models.hf import (
    ConfigDict,
    _static_config,
    enable_checkpointing,
    meta_safe_call,
    model_folder,
)

from dgraph.declare import Features, Mask, Module, NodeRef, Outputs, Tokens, model, param
from dgraph.errors import DgraphError
from dgraph.registry import BuildContext

__all__ = ["HFEncoder", "load_encoder", "pool"]

_WIDTH_KEYS = ("hidden_size", "dim", "d_model", "n_embd")


def _hidden_size(config: dict[str, Any] | None) -> int | None:
    for key in _WIDTH_KEYS:
        value = (config or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _width(p: Any) -> dict[str, Any]:
    if p.path is not None:
        return {"hidden_size": _hidden_size(_static_config(p.path))}
    if p.config is not None:
        return {"hidden_size": _hidden_size(p.config)}
    return {"hidden_size": None}  # derived from another node: the dry run finds it


def _sources(p: Any) -> None:
    if p.derive_from is not None and (p.path is not None or p.config is not None):
        raise ValueError("derive_from builds the config from another node: give neither "
                         "'path' nor 'config' with it")
    if p.derive_from is None and p.path is None and p.config is None:
        raise ValueError("give 'path' (a saved model folder), 'config' (a transformers "
                         "config dict) or 'derive_from' (another hf_encoder node)")
    if p.config is not None and not isinstance(p.config.get("model_type"), str):
        raise ValueError("config needs a 'model_type' string, e.g. model_type: bert")
    if p.num_layers is not None and p.derive_from is None:
        raise ValueError("num_layers only applies with derive_from")


def pool(states: Any, mask: Any, pooling: str) -> Any:
    """Sentence embedding ``[B, H]`` of token states ``[B, T, H]``.

    ``cls``: ``states[:, 0]``; ``mean``: the mean over all ``T`` positions (padding included);
    ``masked_mean``: ``sum_t m_t h_t / max(sum_t m_t, 1)`` over the real tokens (``m`` = the
    attention mask; without a mask, the plain mean)."""
    if pooling == "cls":
        return states[:, 0]
    if pooling == "mean" or mask is None:
        return states.mean(dim=1)
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


@model("hf_encoder", roles=("teacher", "student", "model"), check=_sources, sizes=_width)
class HFEncoder(Module):
    """A transformers encoder (``AutoModel``: BERT, RoBERTa, DistilBERT, ...) with pooling.

    Loaded with ``from_pretrained`` from a local ``path`` (a folder written by
    ``save_pretrained``, e.g. a sentence-transformers model's folder), or built from a
    ``config`` dict with random weights; ``path`` wins when both are given, so a spec whose
    default is a ``config`` runs on a real folder with ``--set nodes.X.params.path=FOLDER``.
    ``derive_from`` names another ``hf_encoder`` node: this one copies its config (vocabulary,
    width) with ``num_layers`` layers (a DistilBERT-style smaller student).

    Outputs ``token_states`` (the last hidden states ``[B, T, H]``) and
    ``sentence_embedding`` (``[B, H]``, pooled as ``pooling`` says; see :func:`pool`),
    L2-normalised when ``normalize``. ``attention_mask`` is 1 for real tokens, 0 for
    padding. The folder the weights came from is ``module.folder`` (a data node's tokenizer
    can read it).
    """

    def __init__(
        self, *,
        path: str | None = param(
            None, doc="local folder written by save_pretrained (config.json + weights), "
            "relative to the spec's folder; loaded with local_files_only, never downloaded. "
            "Takes precedence over config"),
        config: ConfigDict = param(
            None, doc="a transformers config dict with 'model_type', e.g. {model_type: bert, "
            "num_hidden_layers: 2, hidden_size: 64, ...}: random weights; used when no path"),
        derive_from: NodeRef | None = param(
            None, doc="another hf_encoder node whose config (vocabulary, width) this one "
            "copies, with num_layers layers"),
        num_layers: int | None = param(None, gt=0, doc="derive_from: number of layers"),
        pooling: Literal["mean", "cls", "masked_mean"] = param(
            "masked_mean", doc="sentence embedding: masked_mean (real tokens), mean (all "
            "positions) or cls (the first token)"),
        normalize: bool = param(False, doc="L2-normalise the sentence embedding"),
        gradient_checkpointing: bool = param(
            False, doc="recompute each layer's activations in backward instead of keeping "
            "them: less memory for a large student, about one more forward of compute"),
        context: BuildContext,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.normalize = normalize
        self.folder: Path | None = None
        weights = context.weights and not context.meta
        if path is not None:
            self.folder = model_folder(context, "path", path)
            try:
                self.model = load_encoder(path=self.folder, load_weights=weights,
                                          meta=context.meta)
            except (OSError, ValueError) as exc:
                raise _load_error(context, self.folder, exc) from None
        elif derive_from is not None:
            source = getattr(derive_from, "model", None)
            if source is None or not hasattr(source, "config"):
                raise DgraphError(f"node '{context.node}': derive_from must name an "
                                  "hf_encoder node")
            hf = copy.deepcopy(source.config)
            if num_layers is not None:
                hf.num_hidden_layers = num_layers
            self.model = load_encoder(hf_config=hf, meta=context.meta)
        else:
            assert config is not None
            self.model = load_encoder(config=dict(config), meta=context.meta)
        if gradient_checkpointing:
            enable_checkpointing(self.model, context)

    def forward(self, input_ids: Tokens("B, T", "token ids (int64)"),
                attention_mask: Mask("B, T", "1 for real tokens, 0 for padding") = None,
                ) -> Outputs(token_states=Features("B, T, {hidden_size}", "last hidden states"),
                             sentence_embedding=Features("B, {hidden_size}",
                                                         "pooled sentence embedding")):
        import torch

        limit = _positions(self.model.config)
        if limit is not None and input_ids.shape[1] > limit:
            raise ValueError(f"{input_ids.shape[1]} tokens per sequence, but the model has "
                             f"{limit} positions (max_position_embeddings); lower the data's "
                             f"max_length to at most {limit}")
        mask = attention_mask
        if mask is not None and mask.dtype != torch.long:
            mask = mask.to(torch.long)
        states = meta_safe_call(self.model, input_ids, mask).last_hidden_state
        embedding = pool(states, mask, self.pooling)
        if self.normalize:
            embedding = torch.nn.functional.normalize(embedding, dim=-1)
        return {"token_states": states, "sentence_embedding": embedding}


def _positions(config: Any) -> int | None:
    """How many tokens the model's position embeddings cover (None: not limited)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or getattr(config, "position_embedding_type",
                                             "absolute") != "absolute":
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= (config.pad_token_id or 0) + 1  # positions start after the pad id
    return limit


def _load_error(context: BuildContext, folder: Path, exc: Exception) -> Exception:
    from dgraph.components._inputs import input_error

    return input_error(
        context, "path", f"transformers cannot load the encoder in {folder}",
        expected="a folder written by save_pretrained (config.json and the weights, e.g. "
        "model.safetensors)", found=f"{type(exc).__name__}: "
        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
        hint="re-write the folder with save_pretrained; models are never downloaded")


def load_encoder(*, path: Path | None = None, config: dict[str, Any] | None = None,
                 hf_config: Any = None, load_weights: bool = True, meta: bool = False) -> Any:
    """A transformers ``AutoModel`` from a saved folder, a config dict or a config object;
    ``load_weights=False`` builds the architecture only. Never runs code from a folder
    (``trust_remote_code=False``) and never downloads (``local_files_only``)."""
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError:
        raise DgraphError("component 'hf_encoder' needs transformers: "
                          'pip install "dgraph[hf]"') from None
    extra: dict[str, Any] = {"trust_remote_code": False}
    if meta:
        extra["attn_implementation"] = "eager"
    if path is not None:
        hf = AutoConfig.from_pretrained(str(path), local_files_only=True,
                                        trust_remote_code=False)
    elif hf_config is not None:
        hf = hf_config
    else:
        assert config is not None
        settings = dict(config)
        model_type = settings.pop("model_type")
        try:
            hf = AutoConfig.for_model(model_type, **settings)
        except (ValueError, KeyError) as exc:
            raise DgraphError(f"hf_encoder: bad config for model_type '{model_type}': "
                              f"{exc}") from None
    if hf.model_type in _POOLER_TYPES:
        # The model's own pooler is unused (pooling is this component's) and
        # sentence-transformers folders lack its weights: left out, loaded or not alike.
        extra["add_pooling_layer"] = False
    if path is not None and load_weights:
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True, **extra)
    else:
        encoder = AutoModel.from_config(hf, **extra)
    return encoder.float()


# Model types whose AutoModel takes ``add_pooling_layer``.
_POOLER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "ernie")
