"""Latency of exported students: onnxruntime (CPU) against torch eager, at batch 1 and 64.

    python benchmarks/onnx_latency.py [--threads N] [--seconds S]

Two students, each trained briefly (latency does not depend on the weights), exported with
``dgraph.exporters.export_run`` (which verifies the file) and timed on the same inputs:

* the digits student (``student_digits``: MLP 64 -> 24 -> 10),
* a small transformer (GPT-2 config, 2 layers, width 32, vocabulary 100), sequence length 32.

Both runtimes get the same number of intra-op threads (1 unless ``--threads``). Each
measurement is the median of repeated calls after a warm-up. ``ratio`` = onnxruntime
latency / torch latency (below 1: onnxruntime is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from dgraph.exporters.api import export_run
from dgraph.exporters.source import load_subject

from dgraph.api import train

SEQ = 32
GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 100,
        "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}
LM_SPEC = """
dgraph: 1
name: small_transformer
nodes:
  data:
    kind: data
    type: tensor_file
    params:
      path: {tokens}
      batch_size: 16
      keys:
        input_ids: {{key: input_ids, type: Tokens, shape: "B, {seq}"}}
        attention_mask: {{key: attention_mask, type: Mask, shape: "B, {seq}"}}
  teacher:
    kind: teacher
    type: hf_causal_lm
    params: {{config: {config}}}
    inputs: {{input_ids: data.input_ids, attention_mask: data.attention_mask}}
  student:
    kind: student
    type: hf_causal_lm
    params: {{config: {config}}}
    inputs: {{input_ids: data.input_ids, attention_mask: data.attention_mask}}
  distill:
    kind: loss
    type: mse
    inputs: {{prediction: student.logits, target: teacher.logits}}
updates:
  main:
    optimizer: {{type: adam, lr: 0.001}}
    params: [student]
    objective: {{distill: 1.0}}
train: {{steps: 5, device: cpu, log_every: 5}}
"""


def _median_ms(fn: Callable[[], object], seconds: float) -> float:
    for _ in range(5):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 20 or (time.perf_counter() < deadline and len(times) < 10_000):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _digits_run(folder: Path) -> Path:
    run = folder / "student_digits"
    train("student_digits", out=run, overrides=["train.steps=50", "train.device=cpu"],
          progress=False, log=lambda _m: None)
    return run


def _transformer_run(folder: Path) -> Path:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, GPT2["vocab_size"], (64, SEQ), generator=generator)
    save_file({"input_ids": ids, "attention_mask": torch.ones(64, SEQ, dtype=torch.int64)},
              str(folder / "tokens.safetensors"))
    spec = folder / "small_transformer.yaml"
    spec.write_text(LM_SPEC.format(tokens=json.dumps(str(folder / "tokens.safetensors")),
                                   seq=SEQ, config=json.dumps(GPT2)))
    run = folder / "small_transformer"
    train(spec, out=run, progress=False, log=lambda _m: None)
    return run


def _inputs(name: str, batch: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    if name == "digits student":
        return {"x": torch.rand(batch, 64, generator=generator)}
    return {"input_ids": torch.randint(0, GPT2["vocab_size"], (batch, SEQ), generator=generator),
            "attention_mask": torch.ones(batch, SEQ, dtype=torch.bool)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for both runtimes (default 1: on a busy or "
                        "small machine, more threads measure contention, not the runtimes)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="time spent measuring each (model, batch, runtime)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = {"digits student": _digits_run(folder),
                "small transformer": _transformer_run(folder)}
        for name, run in runs.items():
            path = folder / f"{run.name}.onnx"
            result = export_run(run, path)
            assert result.verification is not None and result.verification.passed
            module = load_subject(run).module
            output_names = [o.name for o in result.outputs]
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), sess_options=options,
                                           providers=["CPUExecutionProvider"])
            feeds_types = {i.name: i.type for i in session.get_inputs()}
            for batch in (1, 64):
                inputs = _inputs(name, batch)
                feed = {k: v.numpy() for k, v in inputs.items()}
                if feeds_types.get("attention_mask") not in (None, "tensor(bool)"):
                    feed["attention_mask"] = feed["attention_mask"].astype(np.int64)

                def run_torch(module=module, inputs=inputs):
                    with torch.inference_mode():
                        return module(**inputs)

                def run_ort(session=session, names=output_names, feed=feed):
                    return session.run(names, feed)

                torch_ms = _median_ms(run_torch, args.seconds)
                ort_ms = _median_ms(run_ort, args.seconds)
                rows.append((name, result.exporter, batch, torch_ms, ort_ms))

    print(f"onnxruntime {ort.__version__} (CPUExecutionProvider) vs torch {torch.__version__} "
          f"eager, {args.threads} thread(s), median latency per call")
    header = ("model", "exporter", "batch", "torch ms", "onnxruntime ms", "ratio ort/torch",
              "speed-up")
    table = [header] + [(n, e, str(b), f"{t:.3f}", f"{o:.3f}", f"{o / t:.2f}", f"{t / o:.2f}x")
                        for n, e, b, t, o in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
