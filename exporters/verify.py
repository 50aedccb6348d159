"""Checking an exported file: ``onnx.checker``, then onnxruntime against the torch module.

Inputs are drawn at two batch sizes, and two lengths of every other dynamic dimension (the
sequence length), both at random (per the ports' semantic types: token ids below the vocabulary
size, right-padded masks, diffusion steps, normal floats) and from the spec's data source.

For each case and output the report gives ``max abs = max |ort - torch|`` and
``max rel = max abs / max |torch|`` (relative to the output's scale). A case passes when either
is within the tolerance and no value is NaN.

Non-finite outputs: a NaN on either side fails the case (NaN never equals anything, and the
check must not pass a model that computes NaN). An infinity agrees only with the same infinity
at the same place on the other side (a masked vocabulary's ``-inf`` logits are legitimate);
an infinity on one side only fails. Differences are measured over the values finite on both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgraph.errors import ExportError

__all__ = ["Case", "Verification", "check_onnx", "compare", "onnxruntime_session",
           "require_onnxruntime", "sizes_to_check"]

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
BATCHES = (1, 5)
DEFAULT_LENGTHS = (5, 12)
MAX_CHECKED_LENGTH = 32
DIFFUSION_STEPS = 1000


def require_onnxruntime(provider: str = "cpu") -> Any:
    """The onnxruntime module, with the execution provider ``provider`` available."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "onnxruntime is not installed, so the export cannot be checked against torch. "
            'Install it with pip install "dgraph[cpu]" (or "dgraph[gpu]" for CUDA), or pass '
            "--no-check to export without verification"
        ) from None
    wanted = PROVIDERS.get(provider)
    if wanted is None:
        raise ExportError(f"unknown provider '{provider}'; choose one of {', '.join(PROVIDERS)}")
    available = list(onnxruntime.get_available_providers())
    if wanted not in available:
        hint = ('install onnxruntime-gpu in place of onnxruntime: pip uninstall onnxruntime '
                '&& pip install "dgraph[gpu]"; it also needs the CUDA and cuDNN libraries '
                'of its release' if provider == "cuda" else "reinstall onnxruntime")
        raise ExportError(
            f"--provider {provider}: onnxruntime {onnxruntime.__version__} has no {wanted} "
            f"(available: {', '.join(available) or 'none'}); {hint}"
        )
    return onnxruntime


def onnxruntime_session(path: Path, provider: str = "cpu", *, shown: Path | None = None) -> Any:
    """An onnxruntime session of ``path`` (``shown`` is the name used in messages)."""
    ort = require_onnxruntime(provider)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers: list[Any] = [PROVIDERS[provider]]
    if provider == "cuda":
        # TF32 matmuls would differ from torch's fp32 by ~1e-3: compare true fp32.
        providers = [(PROVIDERS["cuda"], {"use_tf32": 0}), PROVIDERS["cpu"]]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load {shown or path}: {type(exc).__name__}: "
                          f"{exc}") from None
    if PROVIDERS[provider] not in session.get_providers():
        raise ExportError(
            f"--provider {provider}: onnxruntime could not start {PROVIDERS[provider]} (it "
            f"fell back to {', '.join(session.get_providers())}); check that the CUDA and "
            "cuDNN libraries onnxruntime-gpu needs are installed and a GPU is visible"
        )
    return session


def check_onnx(path: Path, *, shown: Path | None = None) -> None:
    """``onnx.checker`` with full shape inference; raises :class:`ExportError`."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejects {shown or path}: {type(exc).__name__}: "
                          f"{exc}") from None


@dataclass
class Case:
    """One comparison: an input set at given sizes, worst output and its differences."""

    inputs: str
    sizes: dict[str, int]
    max_abs: float = 0.0
    max_rel: float = 0.0
    output: str = ""
    passed: bool = True
    per_output: dict[str, tuple[float, float]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # output -> what is non-finite

    def where(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"{self.inputs} inputs" + (f" ({sizes})" if sizes else "")


@dataclass
class Verification:
    """Every case, the tolerance it was held to, and what was skipped."""

    cases: list[Case]
    tolerance: float
    precision: str
    provider: str
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(case.passed for case in self.cases)

    @property
    def worst(self) -> Case | None:
        failing = [c for c in self.cases if not c.passed] or self.cases
        return max(failing, key=lambda c: min(c.max_abs, c.max_rel), default=None)

    def table(self) -> str:
        symbols = list(dict.fromkeys(k for c in self.cases for k in c.sizes))
        head = ["inputs", *symbols, "output", "max abs", "max rel", "result"]
        rows = [head]
        for case in self.cases:
            result = "pass" if case.passed else "FAIL"
            if case.problems:
                result += " (" + "; ".join(f"{k}: {v}" for k, v in case.problems.items()) + ")"
            rows.append([case.inputs, *[str(case.sizes.get(s, "-")) for s in symbols],
                         case.output, f"{case.max_abs:.2e}", f"{case.max_rel:.2e}", result])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                 for row in rows]
        return "\n".join("  " + line.rstrip() for line in lines)


def sizes_to_check(symbols: list[str], real_lengths: dict[str, int]) -> list[dict[str, int]]:
    """Two batch sizes times two lengths of each other dynamic symbol."""
    choices: list[tuple[int, ...]] = []
    for symbol in symbols:
        if symbol == "B":
            choices.append(BATCHES)
            continue
        full = real_lengths.get(symbol)
        if full is None:
            choices.append(DEFAULT_LENGTHS)
            continue
        longest = min(full, MAX_CHECKED_LENGTH)
        choices.append(tuple(sorted({max(1, longest // 2), longest})))
    return [dict(zip(symbols, combo, strict=False)) for combo in itertools.product(*choices)]


def random_input(info, sizes: dict[str, int], generator: torch.Generator,
                 params: dict[str, Any], real: torch.Tensor | None) -> torch.Tensor:
    """A random tensor for an input port, valid for its semantic type."""
    shape = [sizes[d] if isinstance(d, str) else d for d in info.dims]
    dtype = info.dtype
    kind = info.port.type
    if kind == "Mask":
        mask = torch.zeros(shape, dtype=torch.int64)
        if len(shape) >= 2 and shape[-1] > 0:
            lengths = torch.randint(1, shape[-1] + 1, shape[:-1], generator=generator)
            lengths.view(-1)[0] = shape[-1]  # one full row
            mask = (torch.arange(shape[-1]) < lengths.unsqueeze(-1)).to(torch.int64)
        else:
            mask = torch.ones(shape, dtype=torch.int64)
        return mask.to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator) < 0.5
    if not dtype.is_floating_point or kind in ("Timesteps", "Tokens", "Labels"):
        if kind == "Tokens":
            high = params.get("vocab_size")
        elif kind == "Timesteps":
            high = params.get("num_train_timesteps") or DIFFUSION_STEPS
        elif kind == "Labels":
            high = params.get("num_classes")
        else:
            high = None
        if not isinstance(high, int) or high <= 0:
            high = int(real.max()) + 1 if real is not None and real.numel() else 2
        values = torch.randint(0, high, shape, generator=generator)
        return values.to(dtype)
    if kind == "Images":
        return torch.rand(shape, generator=generator).to(dtype)
    return torch.randn(shape, generator=generator).to(dtype)


def _slice(tensor: torch.Tensor, dims: list[int | str], sizes: dict[str, int]) -> torch.Tensor:
    for axis, dim in enumerate(dims):
        if isinstance(dim, str) and dim != "B" and dim in sizes:
            tensor = tensor.narrow(axis, 0, min(sizes[dim], tensor.shape[axis]))
    return tensor


def _numpy(tensor: torch.Tensor, fp16: bool) -> np.ndarray:
    if fp16 and tensor.is_floating_point():
        tensor = tensor.to(torch.float16)
    return tensor.detach().cpu().numpy()


def _count(mask: torch.Tensor) -> int:
    return int(mask.sum())


def _difference(ort_out: np.ndarray, ref: torch.Tensor) -> tuple[float, float, str | None]:
    """(max abs, max rel, what is non-finite or mismatched, if anything) of one output."""
    got = torch.from_numpy(np.asarray(ort_out)).to(torch.float64)
    want = ref.detach().cpu().to(torch.float64)
    if got.shape != want.shape:
        return (math.inf, math.inf, f"shape {list(got.shape)} from onnxruntime, "
                f"{list(want.shape)} from torch")
    if got.numel() == 0:
        return 0.0, 0.0, None
    problem = None
    nan_got, nan_want = torch.isnan(got), torch.isnan(want)
    inf_got, inf_want = torch.isinf(got), torch.isinf(want)
    if bool(nan_got.any() or nan_want.any()):
        problem = (f"NaN in {_count(nan_want)} torch and {_count(nan_got)} onnxruntime values "
                   f"of {got.numel()}")
    else:
        unmatched = (inf_got | inf_want) & (got != want)
        if bool(unmatched.any()):
            problem = (f"{_count(unmatched)} of {got.numel()} values are infinite on one side "
                       f"only or with opposite signs (torch: {_count(inf_want)} infinite, "
                       f"onnxruntime: {_count(inf_got)})")
    if problem is not None:
        return math.inf, math.inf, problem
    finite = ~(inf_got | inf_want)  # same infinities at the same places agree
    if not bool(finite.any()):
        return 0.0, 0.0, None
    diff = (got[finite] - want[finite]).abs()
    max_abs = float(diff.max())
    scale = float(want[finite].abs().max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return max_abs, max_rel, None


def compare(subject, session: Any, reference: Callable[..., tuple[torch.Tensor, ...]],
            output_names: list[str], *, tolerance: float, fp16: bool, provider: str,
            seed: int = 0) -> Verification:
    """Run the torch ``reference`` and the onnxruntime ``session`` on the same inputs."""
    generator = torch.Generator().manual_seed(seed)
    params = subject.params()
    symbols = subject.symbols
    skipped: list[str] = []
    real_full = subject.real_inputs(subject.real_examples() or 1)
    real_lengths: dict[str, int] = {}
    if real_full is not None:
        for info in subject.inputs:
            for axis, symbol in info.dynamic.items():
                if symbol != "B":
                    size = int(real_full[info.name].shape[axis])
                    real_lengths[symbol] = min(real_lengths.get(symbol, size), size)
    elif subject.data_problem:
        skipped.append(f"real inputs: {subject.data_problem}")
    else:
        skipped.append("real inputs: the node is fed by no data source")
    grid = sizes_to_check(symbols, real_lengths)
    sets: list[tuple[str, dict[str, int], dict[str, torch.Tensor]]] = []
    for sizes in grid:
        real_examples = None
        if real_full is not None:
            real_examples = {k: v for k, v in real_full.items()}
        inputs = {}
        for info in subject.inputs:
            sample = real_examples.get(info.name) if real_examples else None
            inputs[info.name] = random_input(info, sizes, generator, params, sample)
        sets.append(("random", sizes, inputs))
    if real_full is not None:
        available = subject.real_examples()
        for sizes in grid:
            batch = sizes.get("B")
            if batch is not None and batch > available:
                skipped.append(f"real inputs at B={batch}: only {available} examples")
                continue
            inputs = {}
            for info in subject.inputs:
                tensor = real_full[info.name]
                if batch is not None:
                    tensor = tensor[:batch]
                inputs[info.name] = _slice(tensor, info.dims, sizes)
            sets.append(("real", sizes, inputs))

    cases: list[Case] = []
    names = [i.name for i in subject.inputs]
    for label, sizes, inputs in sets:
        feed = {name: _numpy(inputs[name], fp16) for name in names}
        # The reference sees exactly the values onnxruntime sees (fp16-rounded when fp16).
        ref_inputs = [torch.from_numpy(feed[name]).to(inputs[name].dtype) for name in names]
        with torch.no_grad():
            expected = reference(*ref_inputs)
        got = session.run(output_names, feed)
        case = Case(label, dict(sizes))
        for name, ort_out, ref in zip(output_names, got, expected, strict=True):
            max_abs, max_rel, problem = _difference(ort_out, ref)
            case.per_output[name] = (max_abs, max_rel)
            if problem is not None:
                case.problems[name] = problem
            if not case.output or min(max_abs, max_rel) > min(case.max_abs, case.max_rel):
                case.max_abs, case.max_rel, case.output = max_abs, max_rel, name
        case.passed = not case.problems and all(
            min(a, r) <= tolerance for a, r in case.per_output.values())
        cases.append(case)
    return Verification(cases, tolerance, "fp16" if fp16 else "fp32", provider, skipped)
