"""Writing and reading the top-k teacher cache (imported only when a graph is built)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from dgraph.components._inputs import existing_path, input_error
from torch import nn

from dgraph.errors import SpecError
from dgraph.registry import BuildContext
from dgraph.runtime.data import DataSource

from .topk_cache import LMTopKCacheParams, TopKTeacher

__all__ = ["build_topk_cache", "cache_path", "read_topk_cache", "write_topk_cache"]

_TEXT_PORTS = ("input_ids", "targets", "attention_mask", "loss_mask", "prompt_ids",
               "prompt_mask")
_DTYPES = {"float16": torch.float16, "float32": torch.float32}  # the params' closed set
_CACHE = "a top-k cache (.safetensors) written by write_topk_cache"


@torch.no_grad()
def write_topk_cache(path: str | Path, teacher: nn.Module, source: DataSource, k: int, *,
                     batch_size: int = 64, dtype: torch.dtype = torch.float16,
                     device: str | torch.device = "cpu") -> dict[str, float]:
    """Run ``teacher`` (a module returning ``{"logits"}``) once over both splits of ``source``
    and write the text tensors plus top-k log-probs/ids to ``path``. Returns sizes:
    ``cache_bytes_per_token``, ``full_logits_bytes_per_token`` and their ``memory_ratio``."""
    from safetensors.torch import save_file

    teacher = teacher.to(device).eval()
    tensors: dict[str, torch.Tensor] = {}
    vocab = None
    for split, data in (("train", source.train), ("eval", source.eval)):
        if not data:
            continue
        n = next(iter(data.values())).shape[0]
        values, indices = [], []
        for start in range(0, n, batch_size):
            ids = data["input_ids"][start:start + batch_size].to(device)
            mask = data["attention_mask"][start:start + batch_size].to(device)
            logits = teacher(input_ids=ids, attention_mask=mask)["logits"].float()
            vocab = logits.shape[-1]
            if k > vocab:
                raise SpecError(f"top-k cache: k = {k} exceeds the teacher's vocabulary "
                                f"({vocab})")
            top = torch.log_softmax(logits, -1).topk(k, dim=-1)
            values.append(top.values.to(dtype).cpu())
            indices.append(top.indices.cpu())
        index_dtype = torch.int16 if (vocab or 0) <= 32767 else torch.int32
        for port in _TEXT_PORTS:
            if port in data:
                tensors[f"{split}.{port}"] = data[port].contiguous()
        tensors[f"{split}.topk_logprobs"] = torch.cat(values).contiguous()
        tensors[f"{split}.topk_indices"] = torch.cat(indices).to(index_dtype).contiguous()
    per_token = k * (torch.finfo(dtype).bits // 8 + (2 if (vocab or 0) <= 32767 else 4))
    sizes = {"cache_bytes_per_token": float(per_token),
             "full_logits_bytes_per_token": float(4 * (vocab or 0)),
             "memory_ratio": 4.0 * (vocab or 0) / per_token}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"k": str(k), "vocab_size": str(vocab),
                                           "sizes": json.dumps(sizes)})
    tmp.replace(path)
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


def cache_path(p: LMTopKCacheParams, context: BuildContext) -> Path:
    """Where the cache is read: ``params.path`` (relative to the spec's folder) when it
    exists, else this run's own copy ``<run dir>/cache/<file name>``, which a ``teacher``
    writes: a component writes only inside the run directory."""
    given = context.resolve_path(p.path)
    if given.exists() or context.run_dir is None:
        return given
    return context.run_dir / "cache" / Path(p.path).name


def _teacher_module(t: TopKTeacher, context: BuildContext) -> nn.Module:
    from dgraph.components.models.hf import HFCausalLM, HFCausalLMParams

    params = HFCausalLMParams(path=t.path, config=t.config)
    # Built as part of this node: its errors point at params.teacher.* of the data node.
    inner = BuildContext(node=context.node, spec_dir=context.spec_dir, run_dir=context.run_dir,
                         extras={"spec_source": context.extras.get("spec_source"),
                                 "param_prefix": "teacher."})
    module = HFCausalLM(params, context.node).build(inner)
    if t.config is None:
        return module
    from dgraph.errors import CheckpointError
    from dgraph.runtime.checkpoint import load_weights

    if t.weights is not None:
        weights = existing_path(context, "teacher.weights", t.weights, kind="file",
                                what="a state dict (.safetensors) for the teacher's config")
        param = "teacher.weights"
    else:
        weights = _teacher_run_weights(t, context)
        param = "teacher.run"
    try:
        module.load_state_dict(load_weights(weights))
    except (CheckpointError, RuntimeError) as exc:
        raise input_error(context, param, f"{weights} does not fit the teacher's config",
                          expected="the state dict of an hf_causal_lm with teacher.config",
                          found=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                          hint="point it at the weights trained with that config") from None
    return module


def _teacher_run_weights(t: TopKTeacher, context: BuildContext) -> Path:
    """``final/<node>.safetensors`` of the teacher's run: a run directory relative to the
    spec's folder or next to this run's; a zoo spec's run is trained inside this run's
    directory when it is found nowhere (a component writes only there)."""
    from dgraph.runtime.train import train
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


def build_topk_cache(p: LMTopKCacheParams, context: BuildContext) -> DataSource:
    data = p.data
    batch_size = p.batch_size or data.batch_size
    prompt_len = getattr(data, "prompt_len", getattr(data, "max_prompt_len", 0))
    if context.meta:
        def split() -> dict[str, torch.Tensor]:
            def t(*shape: int, dtype: torch.dtype) -> torch.Tensor:
                return torch.empty(shape, dtype=dtype, device="meta")

            n, length = batch_size, data.seq_len
            return {"input_ids": t(n, length, dtype=torch.long),
                    "targets": t(n, length, dtype=torch.long),
                    "attention_mask": t(n, length, dtype=torch.bool),
                    "loss_mask": t(n, length, dtype=torch.bool),
                    "prompt_ids": t(n, prompt_len, dtype=torch.long),
                    "prompt_mask": t(n, prompt_len, dtype=torch.bool),
                    "topk_logprobs": t(n, length, p.k, dtype=torch.float32),
                    "topk_indices": t(n, length, p.k, dtype=torch.long)}

        return DataSource(train=split(), eval=split(), batch_size=batch_size,
                          shuffle=data.shuffle, drop_last=data.drop_last)
    path = cache_path(p, context)
    if not path.exists():
        if p.teacher is None:
            raise input_error(context, "path", f"{path} does not exist", code="missing-file",
                              expected=_CACHE, found=f"'{p.path}': no such file",
                              hint="relative paths are relative to the spec's folder; write "
                              "the cache with dgraph.components.data._torch_topk."
                              "write_topk_cache, or give the node a 'teacher' to write it on "
                              "the first run")
        if context.run_dir is None:
            raise input_error(context, "path", f"{path} does not exist and there is no run "
                              "directory to write it into", code="missing-file",
                              expected=_CACHE, found=f"'{p.path}': no such file",
                              hint="train the spec (the run writes the cache in its "
                              "directory), or write it with write_topk_cache")
        from ._torch_text import build_jsonl_pairs, build_text_lm

        source = build_text_lm(data, context) if p.text is not None else \
            build_jsonl_pairs(data, context)  # type: ignore[arg-type]
        write_topk_cache(path, _teacher_module(p.teacher, context), source, p.k,
                         dtype=_DTYPES[p.dtype])
    path = existing_path(context, "path", str(path), kind="file", what=_CACHE)
    try:
        train, evaluation, metadata = read_topk_cache(path)
        got_k = train["topk_logprobs"].shape[-1]
        got_len = train["input_ids"].shape[1]
    except Exception as exc:  # not safetensors, or not a cache (missing tensors)
        found = (f"no tensor {exc}" if isinstance(exc, KeyError)
                 else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        raise input_error(context, "path", f"{path} is not a top-k cache", expected=_CACHE,
                          found=found, hint="write it with write_topk_cache, or give the "
                          "node a 'teacher' and a new path") from None
    if got_k != p.k or got_len != data.seq_len:
        raise input_error(context, "path", f"{path} was written for other parameters",
                          code="bad-data", expected=f"k={p.k}, sequences of {data.seq_len} "
                          "tokens (as the spec says)", found=f"k={got_k}, sequences of "
                          f"{got_len} tokens", hint="point path at a new file to write "
                          "the cache again")
    vocab = int(metadata.get("vocab_size", "0") or 0)
    if vocab and vocab != data.tokenizer.size:
        raise input_error(context, "path", f"{path} was written by a teacher with another "
                          "vocabulary", code="bad-data",
                          expected=f"a teacher vocabulary of {data.tokenizer.size} ids (the "
                          "tokenizer's)", found=f"vocab_size {vocab}",
                          hint="use the tokenizer the teacher was trained with")
    return DataSource(train=train, eval=evaluation, batch_size=batch_size,
                      shuffle=data.shuffle, drop_last=data.drop_last,
                      info={"cache": str(path), "k": p.k, **json.loads(
                          metadata.get("sizes", "{}"))})
