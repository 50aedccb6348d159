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

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dgraph.components._inputs import check_config_dict, existing_path, input_error
from pydantic import Field, field_validator, model_validator

from dgraph.declare import LogProbs, Mask, Outputs, Tokens, data, param
from dgraph.errors import SpecError
from dgraph.registry import BuildContext, Params

from .text import jsonl_pairs, text_lm

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dgraph.data import DataSource
    from dgraph.runtime.distributed import World

__all__ = ["TopKTeacher", "cache_path", "lm_topk_cache", "read_topk_cache",
           "write_topk_cache"]

_TEXT_PORTS = ("input_ids", "targets", "attention_mask", "loss_mask", "prompt_ids",
               "prompt_mask")
_CACHE = "a top-k cache (.safetensors) written by write_topk_cache"


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


def _text_source(text: dict[str, Any] | None, pairs: dict[str, Any] | None
                 ) -> tuple[type, Params]:
    """The text source's component type and its validated parameters."""
    kind = text_lm.component if text is not None else jsonl_pairs.component
    return kind, kind.Params.model_validate(text if text is not None else pairs)


def _lengths(text: Params) -> tuple[int, int]:
    """(sequence length T, prompt length P) of text_lm or jsonl_pairs parameters."""
    if hasattr(text, "seq_len"):
        return text.seq_len, text.prompt_len
    return text.max_len, text.max_prompt_len


def _one_source(p) -> None:  # noqa: ANN001 - the generated parameter model
    if (p.text is None) == (p.pairs is None):
        raise ValueError("give exactly one of text (text_lm params) and pairs "
                         "(jsonl_pairs params)")
    if not p.path.endswith(".safetensors"):
        raise ValueError("the cache path must end with .safetensors")
    _text_source(p.text, p.pairs)  # validates the text / pairs parameters now


def _sizes(p) -> dict[str, int]:  # noqa: ANN001 - the generated parameter model
    _, text = _text_source(p.text, p.pairs)
    seq_len, prompt_len = _lengths(text)
    return {"seq_len": seq_len, "k": p.k, "prompt_len": prompt_len,
            "vocab_size": text.tokenizer.size}


@data("lm_topk_cache", check=_one_source, sizes=_sizes)
def lm_topk_cache(
    *,
    path: str = param(doc="the cache file (.safetensors), relative to the spec's folder. When "
                      "it is missing and 'teacher' is given, the run writes it inside its run "
                      "directory (cache/<file name>) and reads it from there"),
    k: int = param(16, gt=0, doc="teacher log-probabilities kept per token"),
    # Plain dicts, checked against text_lm's / jsonl_pairs' parameter models: the JSON Schema
    # then describes them as objects (nested parameter models two levels deep are not
    # expressible in the generated schema's $defs).
    text: dict[str, Any] | None = param(None, doc="text_lm parameters of the data"),
    pairs: dict[str, Any] | None = param(None, doc="jsonl_pairs parameters"),
    teacher: TopKTeacher | None = param(None, doc="writes the cache if it is missing"),
    dtype: Literal["float16", "float32"] = param("float16", doc="stored log-probability type"),
    batch_size: int | None = param(None, gt=0, doc="default: the data's batch_size"),
    context: BuildContext,
) -> Outputs(
    input_ids=Tokens("B, {seq_len}", "token ids"),
    targets=Tokens("B, {seq_len}", "next tokens"),
    attention_mask=Mask("B, {seq_len}", "1 = real token"),
    loss_mask=Mask("B, {seq_len}", "1 = the position counts"),
    prompt_ids=Tokens("B, {prompt_len}", "prompts"),
    prompt_mask=Mask("B, {prompt_len}", "1 = real prompt token"),
    topk_logprobs=LogProbs("B, {seq_len}, {k}", "teacher top-k log-probs"),
    topk_indices=Tokens("B, {seq_len}, {k}", "their token ids"),
):
    """Text sequences (as ``text_lm`` / ``jsonl_pairs``) plus the teacher's top-k per token.

    Outputs the text ports (``input_ids``, ``targets``, ``attention_mask``, ``loss_mask``,
    ``prompt_ids``, ``prompt_mask``) and ``topk_logprobs`` ``[B, T, k]`` (float32 when served)
    with ``topk_indices`` ``[B, T, k]`` (int64). The file is checked against the parameters
    (k, sequence length) when read; it is written by :func:`write_topk_cache` or, when
    ``teacher`` is given and the file is missing, on the first build.
    """
    import torch

    from dgraph.data import DataSource

    kind, text_params = _text_source(text, pairs)
    seq_len, prompt_len = _lengths(text_params)
    loader = {"batch_size": batch_size or text_params.batch_size,
              "shuffle": text_params.shuffle, "drop_last": text_params.drop_last}
    if context.meta:
        def split() -> dict[str, torch.Tensor]:
            def t(*shape: int, dtype: torch.dtype) -> torch.Tensor:
                return torch.empty(shape, dtype=dtype, device="meta")

            n = loader["batch_size"]
            return {"input_ids": t(n, seq_len, dtype=torch.long),
                    "targets": t(n, seq_len, dtype=torch.long),
                    "attention_mask": t(n, seq_len, dtype=torch.bool),
                    "loss_mask": t(n, seq_len, dtype=torch.bool),
                    "prompt_ids": t(n, prompt_len, dtype=torch.long),
                    "prompt_mask": t(n, prompt_len, dtype=torch.bool),
                    "topk_logprobs": t(n, seq_len, k, dtype=torch.float32),
                    "topk_indices": t(n, seq_len, k, dtype=torch.long)}

        return DataSource(train=split(), eval=split(), **loader)
    file = cache_path(path, context)
    if not file.exists():
        if teacher is None:
            raise input_error(context, "path", f"{file} does not exist", code="missing-file",
                              expected=_CACHE, found=f"'{path}': no such file",
                              hint="relative paths are relative to the spec's folder; write "
                              "the cache with dgraph.components.data.topk_cache."
                              "write_topk_cache, or give the node a 'teacher' to write it on "
                              "the first run")
        if context.run_dir is None:
            raise input_error(context, "path", f"{file} does not exist and there is no run "
                              "directory to write it into", code="missing-file",
                              expected=_CACHE, found=f"'{path}': no such file",
                              hint="train the spec (the run writes the cache in its "
                              "directory), or write it with write_topk_cache")
        from dgraph.runtime.distributed import current_world

        source = kind(text_params, context.node).build(context)
        # In a job of several ranks, every rank runs the teacher on its share of the
        # sequences; rank 0 writes the file, which every rank then reads.
        write_topk_cache(file, _teacher_module(teacher, context), source, k,
                         dtype=getattr(torch, dtype), world=current_world())
    file = existing_path(context, "path", str(file), kind="file", what=_CACHE)
    try:
        train, evaluation, metadata = read_topk_cache(file)
        got_k = train["topk_logprobs"].shape[-1]
        got_len = train["input_ids"].shape[1]
    except Exception as exc:  # not safetensors, or not a cache (missing tensors)
        found = (f"no tensor {exc}" if isinstance(exc, KeyError)
                 else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        raise input_error(context, "path", f"{file} is not a top-k cache", expected=_CACHE,
                          found=found, hint="write it with write_topk_cache, or give the "
                          "node a 'teacher' and a new path") from None
    if got_k != k or got_len != seq_len:
        raise input_error(context, "path", f"{file} was written for other parameters",
                          code="bad-data", expected=f"k={k}, sequences of {seq_len} "
                          "tokens (as the spec says)", found=f"k={got_k}, sequences of "
                          f"{got_len} tokens", hint="point path at a new file to write "
                          "the cache again")
    vocab = int(metadata.get("vocab_size", "0") or 0)
    if vocab and vocab != text_params.tokenizer.size:
        raise input_error(context, "path", f"{file} was written by a teacher with another "
                          "vocabulary", code="bad-data",
                          expected=f"a teacher vocabulary of {text_params.tokenizer.size} ids "
                          "(the tokenizer's)", found=f"vocab_size {vocab}",
                          hint="use the tokenizer the teacher was trained with")
    return DataSource(train=train, eval=evaluation, **loader,
                      info={"cache": str(file), "k": k, **json.loads(
                          metadata.get("sizes", "{}"))})


def cache_path(path: str, context: BuildContext) -> Path:
    """Where the cache is read: ``path`` (relative to the spec's folder) when it exists, else
    this run's own copy ``<run dir>/cache/<file name>``, which a ``teacher`` writes: a
    component writes only inside the run directory."""
    given = context.resolve_path(path)
    if given.exists() or context.run_dir is None:
        return given
    return context.run_dir / "cache" / Path(path).name


def write_topk_cache(path: str | Path, teacher: nn.Module, source: DataSource, k: int, *,
                     batch_size: int = 64, dtype: torch.dtype | None = None,
                     device: str | torch.device = "cpu", world: World | None = None
                     ) -> dict[str, float]:
    """Run ``teacher`` (a module returning ``{"logits"}``) once over both splits of ``source``
    and write the text tensors plus top-k log-probs/ids to ``path``. ``dtype`` (default
    float16) is the stored log-probability type. Returns sizes: ``cache_bytes_per_token``,
    ``full_logits_bytes_per_token`` and their ``memory_ratio``.

    With a ``world`` of several ranks (every rank calls it) each rank runs the teacher on its
    contiguous share of each split, the shares are all-gathered, rank 0 writes the file and
    all ranks wait until it is there."""
    import torch
    from safetensors.torch import save_file

    from dgraph.runtime.distributed import World, gather_rows, share

    world = world or World()
    dtype = torch.float16 if dtype is None else dtype
    teacher = teacher.to(device).eval()
    tensors: dict[str, torch.Tensor] = {}
    vocab = None
    for split, tensors_of in (("train", source.train), ("eval", source.eval)):
        if not tensors_of:
            continue
        n = next(iter(tensors_of.values())).shape[0]
        split_up = world.distributed and n >= world.size
        first, last = share(n, world) if split_up else (0, n)
        values, indices = [], []
        for start in range(first, last, batch_size):
            ids = tensors_of["input_ids"][start:min(start + batch_size, last)].to(device)
            mask = tensors_of["attention_mask"][start:min(start + batch_size, last)].to(device)
            with torch.no_grad():
                logits = teacher(input_ids=ids, attention_mask=mask)["logits"].float()
            vocab = logits.shape[-1]
            if k > vocab:
                raise SpecError(f"top-k cache: k = {k} exceeds the teacher's vocabulary "
                                f"({vocab})")
            top = torch.log_softmax(logits, -1).topk(k, dim=-1)
            values.append(top.values.to(dtype).cpu())
            indices.append(top.indices.cpu())
        if split_up:
            values = [gather_rows(torch.cat(values), world)]
            indices = [gather_rows(torch.cat(indices), world)]
        index_dtype = torch.int16 if (vocab or 0) <= 32767 else torch.int32
        for port in _TEXT_PORTS:
            if port in tensors_of:
                tensors[f"{split}.{port}"] = tensors_of[port].contiguous()
        tensors[f"{split}.topk_logprobs"] = torch.cat(values).contiguous()
        tensors[f"{split}.topk_indices"] = torch.cat(indices).to(index_dtype).contiguous()
    per_token = k * (torch.finfo(dtype).bits // 8 + (2 if (vocab or 0) <= 32767 else 4))
    sizes = {"cache_bytes_per_token": float(per_token),
             "full_logits_bytes_per_token": float(4 * (vocab or 0)),
             "memory_ratio": 4.0 * (vocab or 0) / per_token}
    path = Path(path)
    if world.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"k": str(k), "vocab_size": str(vocab),
                                               "sizes": json.dumps(sizes)})
        tmp.replace(path)
    world.barrier()  # the file is there for every rank
    return sizes


def read_topk_cache(path: str | Path) -> tuple[dict, dict | None, dict[str, str]]:
    """(train tensors, eval tensors or None, metadata) from a cache file, served types."""
    from safetensors import safe_open

    splits: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():
            split, _, port = key.partition(".")
            tensor = f.get_tensor(key)
            if port in ("topk_indices", "input_ids", "targets", "prompt_ids"):
                tensor = tensor.long()
            elif port == "topk_logprobs":
                tensor = tensor.float()
            elif port.endswith("mask"):
                tensor = tensor.bool()
            splits.setdefault(split, {})[port] = tensor
    return splits["train"], splits["eval"] or None, metadata


def _teacher_module(t: TopKTeacher, context: BuildContext) -> nn.Module:
    from dgraph.errors import CheckpointError
    from dgraph.registry import COMPONENTS
    from dgraph.runtime.checkpoint import load_weights

    causal_lm = COMPONENTS.get("hf_causal_lm")
    # Built as part of this node: its errors point at params.teacher.* of the data node.
    inner = BuildContext(node=context.node, spec_dir=context.spec_dir, run_dir=context.run_dir,
                         source=context.source, param_prefix="teacher.")
    module = causal_lm(causal_lm.Params(path=t.path, config=t.config), context.node).build(inner)
    if t.config is None:
        return module
    if t.weights is not None:
        weights = existing_path(context, "teacher.weights", t.weights, kind="file",
                                what="a state dict (.safetensors) for the teacher's config")
        param_name = "teacher.weights"
    else:
        weights = _teacher_run_weights(t, context)
        param_name = "teacher.run"
    try:
        module.load_state_dict(load_weights(weights))
    except (CheckpointError, RuntimeError) as exc:
        raise input_error(context, param_name, f"{weights} does not fit the teacher's config",
                          expected="the state dict of an hf_causal_lm with teacher.config",
                          found=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                          hint="point it at the weights trained with that config") from None
    return module


def _teacher_run_weights(t: TopKTeacher, context: BuildContext) -> Path:
    """``final/<node>.safetensors`` of the teacher's run: a run directory relative to the
    spec's folder or next to this run's; a zoo spec's run is trained inside this run's
    directory when it is found nowhere (a component writes only there)."""
    from dgraph.api import train
    from dgraph.spec import zoo_names

    run = t.run or ""
    candidates = [context.resolve_path(run)]
    if context.run_dir is not None:
        candidates.append(context.run_dir.parent / run)
    found = [c / "final" / f"{t.node}.safetensors" for c in candidates
             if (c / "final" / f"{t.node}.safetensors").is_file()]
    if found:
        return found[0]
    if run in zoo_names() and context.run_dir is not None:
        out = context.run_dir / "teacher_runs" / run
        train(run, out=out, progress=False)
        return out / "final" / f"{t.node}.safetensors"
    raise input_error(context, "teacher.run", f"no weights for the teacher in run '{run}'",
                      code="missing-file",
                      expected=f"a run directory holding final/{t.node}.safetensors",
                      found="looked in " + ", ".join(str(c / "final") for c in candidates),
                      hint=f"train it first (dgraph train <spec> --out {candidates[-1]}), or "
                      "give teacher.weights")
