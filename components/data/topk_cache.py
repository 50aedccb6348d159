"""``lm_topk_cache``: text sequences served with the teacher's cached top-k log-probabilities.

Offline KD for teachers too large to run during training: one pass of the teacher over the
data writes, per token, its k largest log-probabilities and their token ids to a
``.safetensors`` file (:func:`write_topk_cache`, or automatically on the first build when
``teacher`` is given); training then reads them, and the teacher is not in the graph at all.
Pair it with the ``token_topk_kl`` loss (its ``missing_mass`` option chooses how the
probability outside the top k is treated).

Memory: full fp32 logits cost ``4 V`` bytes per token; the cache costs ``k (2 + 2)`` bytes with
fp16 log-probabilities and int16 ids (int32 ids when ``V > 32767``): ``V / k`` times less.
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.components._inputs import check_config_dict
from pydantic import Field, field_validator, model_validator

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

from .text import JsonlPairsParams, TextLMParams

__all__ = ["LMTopKCache", "LMTopKCacheParams", "TopKTeacher"]


class TopKTeacher(Params):
    """The teacher that writes the cache when the file is missing (an hf_causal_lm)."""

    path: str | None = Field(None, description="a save_pretrained folder (relative to the "
                             "spec's folder)")
    config: dict[str, Any] | None = Field(None, description="a transformers config dict")
    weights: str | None = Field(None, description="a .safetensors state dict for config "
                                "(relative to the spec's folder)")
    run: str | None = Field(None, description="a run (a directory relative to the spec's "
                            "folder, a sibling of the run directory, or a zoo spec name) whose "
                            "final/<node>.safetensors holds the weights; a zoo spec's run is "
                            "trained inside this run's directory if missing")
    node: str = Field("teacher", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                      description="the node inside that run")

    @field_validator("config")
    @classmethod
    def _plain_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            check_config_dict(value, "config")
        return value

    @model_validator(mode="after")
    def _one(self) -> TopKTeacher:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of path and config for the teacher")
        if self.config is not None and self.weights is None and self.run is None:
            raise ValueError("a teacher given by config needs weights or run")
        return self


class LMTopKCacheParams(Params):
    """Parameters of :class:`LMTopKCache`."""

    path: str = Field(description="the cache file (.safetensors), relative to the spec's "
                      "folder. When it is missing and 'teacher' is given, the run writes it "
                      "inside its run directory (cache/<file name>) and reads it from there")
    k: int = Field(16, gt=0, description="teacher log-probabilities kept per token")
    # Plain dicts, checked against text_lm's / jsonl_pairs' parameter models: the JSON Schema
    # then describes them as objects (nested parameter models two levels deep are not
    # expressible in the generated schema's $defs).
    text: dict[str, Any] | None = Field(None, description="text_lm parameters of the data")
    pairs: dict[str, Any] | None = Field(None, description="jsonl_pairs parameters")
    teacher: TopKTeacher | None = Field(None, description="writes the cache if it is missing")
    dtype: Literal["float16", "float32"] = Field("float16",
                                                 description="stored log-probability type")
    batch_size: int | None = Field(None, gt=0, description="default: the data's batch_size")

    @model_validator(mode="after")
    def _one_source(self) -> LMTopKCacheParams:
        if (self.text is None) == (self.pairs is None):
            raise ValueError("give exactly one of text (text_lm params) and pairs "
                             "(jsonl_pairs params)")
        if not self.path.endswith(".safetensors"):
            raise ValueError("the cache path must end with .safetensors")
        self.data  # noqa: B018 - validates the text / pairs parameters now
        return self

    @property
    def data(self) -> TextLMParams | JsonlPairsParams:
        if self.text is not None:
            return TextLMParams.model_validate(self.text)
        return JsonlPairsParams.model_validate(self.pairs)


@component("lm_topk_cache", roles=("data",))
class LMTopKCache(Component):
    """Text sequences (as ``text_lm`` / ``jsonl_pairs``) plus the teacher's top-k per token.

    Outputs the text ports (``input_ids``, ``targets``, ``attention_mask``, ``loss_mask``,
    ``prompt_ids``, ``prompt_mask``) and ``topk_logprobs`` ``[B, T, k]`` (float32 when served)
    with ``topk_indices`` ``[B, T, k]`` (int64). The file is checked against the parameters
    (k, sequence length) when read; it is written by :func:`write_topk_cache` or, when
    ``teacher`` is given and the file is missing, on the first build.
    """

    Params = LMTopKCacheParams
    inputs: dict[str, Port] = {}

    def port_params(self) -> dict[str, Any]:
        data = self.params.data
        return {"seq_len": data.seq_len, "k": self.params.k,
                "prompt_len": getattr(data, "prompt_len", getattr(data, "max_prompt_len", 0)),
                "vocab_size": data.tokenizer.size}

    def resolved_outputs(self, peers) -> dict[str, Port]:
        return {
            "input_ids": Port("Tokens", "B, {seq_len}", "token ids"),
            "targets": Port("Tokens", "B, {seq_len}", "next tokens"),
            "attention_mask": Port("Mask", "B, {seq_len}", "1 = real token"),
            "loss_mask": Port("Mask", "B, {seq_len}", "1 = the position counts"),
            "prompt_ids": Port("Tokens", "B, {prompt_len}", "prompts"),
            "prompt_mask": Port("Mask", "B, {prompt_len}", "1 = real prompt token"),
            "topk_logprobs": Port("LogProbs", "B, {seq_len}, {k}", "teacher top-k log-probs"),
            "topk_indices": Port("Tokens", "B, {seq_len}, {k}", "their token ids"),
        }

    def build(self, context: BuildContext):
        from dgraph.components.data._torch_topk import build_topk_cache

        return build_topk_cache(self.params, context)
