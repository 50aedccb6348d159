"""quant_kd on digits (CPU): int8 / 4-bit quantisation-aware KD students against the float kd
student — test accuracy over seeds, ONNX file size, onnxruntime latency per batch.

For each seed the digits teacher (`teacher_digits`) is trained once, then on the same data,
schedule and seed:

* ``float kd``: the `kd` spec (MLP 64 -> 24 -> 10, fp32);
* ``PTQ int8`` / ``PTQ 4-bit``: that float student's weights in a ``quant_mlp`` whose ranges are
  observed over one pass of the training split, no training (post-training quantisation);
* ``QAT int8 fixed``: `quant_kd` with the scales not learnt (weights' max, observed ranges);
* ``QAT int8 LSQ``: `quant_kd` as shipped (scales learnt after the calibration window);
* ``QAT 4-bit fixed`` / ``QAT 4-bit LSQ``: the same at 4 bits (weights and activations);
* ``... from float kd``: the same, started from the float kd student's weights
  (``init: {run: kd, node: student}``: 600 float steps, then 600 quantised), against
  ``float kd, 600 more steps`` (the float student trained 600 more steps the same way);
* ``ORT static int8``: the float student's ONNX file quantised by onnxruntime's
  ``quantize_static`` (QOperator, calibrated on the training split), for reference.

Exports go through ``dgraph.exporters.export_run`` (verified with onnxruntime against the torch
model). Latency: one onnxruntime session per file, 1 intra-op thread, all graph optimisations,
median over repeated calls of a batch of 64 (and of 1) held-out images after a warm-up.

    python benchmarks/quant_kd.py                 # 3 seeds, the zoo's 600 steps
    python benchmarks/quant_kd.py --quick         # 1 seed, 60 steps (smoke test)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dgraph.components.models.quant import QuantMLP
from dgraph.exporters.api import export_run

from dgraph.api import train
from dgraph.registry import COMPONENTS, BuildContext

FIXED = ["nodes.student.params.learn_scales=false", "updates.main.params=[student]"]
FOUR = ["nodes.student.params.bits=4", "nodes.student.params.act_bits=4"]
FROM_KD = ["nodes.student.init={run: kd, node: student}"]
QAT = {"QAT int8 fixed": FIXED, "QAT int8 LSQ": [], "QAT 4-bit fixed": FOUR + FIXED,
       "QAT 4-bit LSQ": FOUR, "QAT int8 LSQ from float kd": FROM_KD,
       "QAT 4-bit LSQ from float kd": FOUR + FROM_KD}
STUDENT = {"in_features": 64, "hidden": [24], "num_classes": 10}


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _digits():
    declared = COMPONENTS.get("digits")
    return declared(declared.Params.model_validate({"batch_size": 64}), "data").build(
        BuildContext(node="data"))


def _accuracy(logits: torch.Tensor | np.ndarray, y: torch.Tensor) -> float:
    predicted = torch.as_tensor(np.asarray(logits)).argmax(-1)
    return float((predicted == y).float().mean())


def _ptq(float_run: Path, bits: int, data) -> float:
    """The float student's weights, quantised after training: ranges from one training pass."""
    from safetensors.torch import load_file

    model = QuantMLP.create(**STUDENT, bits=bits, act_bits=bits)
    model.load_state_dict(load_file(str(float_run / "final" / "student.safetensors")))
    model.train()
    model.set_step(0)
    with torch.no_grad():
        for start in range(0, len(data.train["x"]), 64):
            model(x=data.train["x"][start:start + 64])
        model.eval()
        return _accuracy(model(x=data.eval["x"])["logits"], data.eval["y"])


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def _latency_ms(session, x: np.ndarray, repeats: int) -> float:
    feed = {session.get_inputs()[0].name: x}
    for _ in range(20):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _ort_static(float_onnx: Path, out: Path, data) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            x = data.train["x"].numpy()
            self.batches = iter([{"x": x[i:i + 64]} for i in range(0, len(x), 64)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(float_onnx), str(out), Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per latency")
    parser.add_argument("--out", default=None, help="keep the runs here (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 steps")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    steps = args.steps
    if args.quick:
        seeds, steps = seeds[:1], steps or 60
    torch.set_num_threads(1)
    tmp = None if args.out else tempfile.TemporaryDirectory()
    root = Path(args.out or tmp.name)
    data = _digits()
    accuracy: dict[str, list[float]] = {}
    files: dict[str, Path] = {}
    quiet = {"progress": False, "log": lambda _m: None, "overwrite": True}

    for seed in seeds:
        base = root / f"seed{seed}"
        common = [f"train.seed={seed}"] + ([f"train.steps={steps}"] if steps else [])
        if steps:
            common.append(f"nodes.student.params.calibrate_steps={max(1, steps // 6)}")
        start = time.perf_counter()
        teacher = train("teacher_digits", out=base / "teacher_digits",
                        overrides=common[:2], **quiet)
        accuracy.setdefault("teacher (MLP 256-256)", []).append(teacher["teacher/accuracy"])
        kd_over = [o for o in common if "calibrate" not in o]
        summary = train("kd", out=base / "kd", overrides=kd_over, **quiet)
        accuracy.setdefault("float kd", []).append(summary["student/accuracy"])
        for bits in (8, 4):
            label = f"PTQ {'int8' if bits == 8 else '4-bit'} (no QAT)"
            accuracy.setdefault(label, []).append(_ptq(base / "kd", bits, data))
        summary = train("kd", out=base / "kd_more", overrides=kd_over + FROM_KD, **quiet)
        accuracy.setdefault("float kd, 600 more steps", []).append(summary["student/accuracy"])
        for label, extra in QAT.items():
            summary = train("quant_kd", out=base / label.replace(" ", "_"),
                            overrides=common + extra, **quiet)
            accuracy.setdefault(label, []).append(summary["student/accuracy"])
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in accuracy.items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)

    # Sizes and latency: the last seed's runs (they do not depend on the weights' values).
    base = root / f"seed{seeds[-1]}"
    exports = root / "onnx"
    exports.mkdir(exist_ok=True)
    tolerance = {}
    for label, run in (("float kd", base / "kd"), ("QAT int8 LSQ", base / "QAT_int8_LSQ"),
                       ("QAT 4-bit LSQ", base / "QAT_4-bit_LSQ")):
        path = exports / (label.replace(" ", "_") + ".onnx")
        result = export_run(run, path)
        assert result.verification is not None
        worst = result.verification.worst
        tolerance[label] = (worst.max_abs, worst.max_rel, result.verification.tolerance)
        files[label] = path
    files["ORT static int8"] = exports / "ort_static.onnx"
    _ort_static(files["float kd"], files["ORT static int8"], data)
    x_eval = data.eval["x"].numpy()
    accuracy["ORT static int8"] = [_accuracy(
        _session(files["ORT static int8"]).run(None, {"x": x_eval})[0], data.eval["y"])]
    # The QDQ file computes what the fake-quantised torch model does, on the held-out split too.
    qdq_acc = _accuracy(_session(files["QAT int8 LSQ"]).run(["logits"], {"x": x_eval})[0],
                        data.eval["y"])

    print()
    print(f"digits, held-out accuracy, mean ± std over seeds {seeds}"
          + (f", train.steps={steps}" if steps else ", 600 steps"))
    print()
    print("| student | accuracy |")
    print("| --- | --- |")
    for label, values in accuracy.items():
        print(f"| {label} | {_fmt(values)} |")
    print()
    print(f"onnxruntime on the QAT int8 LSQ QDQ file (seed {seeds[-1]}): accuracy {qdq_acc:.3f}")
    for label, (max_abs, max_rel, tol) in tolerance.items():
        print(f"export check {label}: worst max abs {max_abs:.2e}, max rel {max_rel:.2e} "
              f"(tolerance {tol:g})")
    print()
    print("| file | bytes | ratio to float | latency B=64 (ms) | latency B=1 (ms) |")
    print("| --- | --- | --- | --- | --- |")
    float_size = files["float kd"].stat().st_size
    for label, path in files.items():
        session = _session(path)
        batch = _latency_ms(session, x_eval[:64], args.repeats)
        single = _latency_ms(session, x_eval[:1], args.repeats)
        size = path.stat().st_size
        print(f"| {label} | {size} | {size / float_size:.2f} | {batch:.4f} | {single:.4f} |")
    print(f"\n(onnxruntime {__import__('onnxruntime').__version__}, 1 thread, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')})")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
