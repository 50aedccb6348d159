"""Writing and reading the top-k teacher cache (imported only when a graph is built)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from dgraph.errors import SpecError
from dgraph.registry import BuildContext
from dgraph.runtime.data import DataSource

from .topk_cache import LMTopKCacheParams, TopKTeacher

__all__ = ["build_topk_cache", "cache_path", "read_topk_cache", "write_topk_cache"]

_TEXT_PORTS = ("input_ids", "targets", "attention_mask", "loss_mask", "prompt_ids",
               "prompt_mask")


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
    path = Path(p.path).expanduser()
    if path.is_absolute():
        return path
    if context.run_dir is not None:
        return context.run_dir.parent / path
    return context.resolve_path(p.path)


def _teacher_module(t: TopKTeacher, context: BuildContext) -> nn.Module:
    from dgraph.components.models.hf import HFCausalLM, HFCausalLMParams

    params = HFCausalLMParams(path=t.path, config=t.config)
    module = HFCausalLM(params, "teacher").build(
        BuildContext(node="teacher", spec_dir=context.spec_dir, run_dir=context.run_dir))
    if t.config is None:
        return module
    from dgraph.runtime.checkpoint import load_weights

    if t.weights is not None:
        weights = context.resolve_path(t.weights)
    else:
        from dgraph.runtime.train import train
        from dgraph.spec import zoo_names

        base = context.run_dir.parent if context.run_dir is not None else Path("runs")
        candidates = [Path(t.run or ""), base / (t.run or ""), Path("runs") / (t.run or "")]
        found = [c / "final" / f"{t.node}.safetensors" for c in candidates
                 if (c / "final" / f"{t.node}.safetensors").exists()]
        if not found and t.run in zoo_names():
            train(t.run, out=base / t.run, progress=False)
            found = [base / t.run / "final" / f"{t.node}.safetensors"]
        if not found:
            raise SpecError(f"lm_topk_cache: no weights for the teacher in run '{t.run}'")
        weights = found[0]
    module.load_state_dict(load_weights(weights))
    return module


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
            raise SpecError(f"lm_topk_cache: {path} does not exist; write it with "
                            "dgraph.components.data._torch_topk.write_topk_cache, or give "
                            "the node a 'teacher' to write it on the first run")
        from ._torch_text import build_jsonl_pairs, build_text_lm

        source = build_text_lm(data, context) if p.text is not None else \
            build_jsonl_pairs(data, context)  # type: ignore[arg-type]
        write_topk_cache(path, _teacher_module(p.teacher, context), source, p.k,
                         dtype=getattr(torch, p.dtype))
    train, evaluation, metadata = read_topk_cache(path)
    got_k = train["topk_logprobs"].shape[-1]
    got_len = train["input_ids"].shape[1]
    if got_k != p.k or got_len != data.seq_len:
        raise SpecError(f"lm_topk_cache: {path} holds k={got_k}, sequences of {got_len} "
                        f"tokens; the spec says k={p.k}, {data.seq_len} tokens (delete the "
                        "file to rewrite it)")
    vocab = int(metadata.get("vocab_size", "0") or 0)
    if vocab and vocab != data.tokenizer.size:
        raise SpecError(f"lm_topk_cache: the cache was written by a teacher with vocabulary "
                        f"{vocab}, but the tokenizer has {data.tokenizer.size} ids")
    return DataSource(train=train, eval=evaluation, batch_size=batch_size,
                      shuffle=data.shuffle, drop_last=data.drop_last,
                      info={"cache": str(path), "k": p.k, **json.loads(
                          metadata.get("sizes", "{}"))})
