"""``export_run``: a trained node of a run directory -> a verified ONNX file.

The file is written into a staging folder that dgraph creates next to ``-o`` and moved into
place (``os.replace``, with any external-data file) only once it is verified; on any failure
the staging folder is removed and a file already at ``-o`` is left as it was.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from dgraph.exporters import metadata as _metadata
from dgraph.exporters import onnx_export, verify
from dgraph.exporters.source import ExportSubject, PortInfo, load_subject

from dgraph.errors import ExportError

__all__ = ["FP16_TOLERANCE", "ExportResult", "export_run"]

FP16_TOLERANCE = 1e-2  # fp16 keeps ~3 significant digits
_EXAMPLE_BATCHES = (3, 5, 7, 2, 9, 11, 13)
_EXAMPLE_LENGTHS = (7, 11, 13, 6, 9)


@dataclass
class ExportResult:
    """What ``export_run`` did: the file, the exporter used, and the verification."""

    path: Path
    node: str
    exporter: str
    fallback_reason: str | None
    opset: int
    precision: str
    inputs: list[PortInfo]
    outputs: list[PortInfo]
    metadata: dict[str, str]
    verification: verify.Verification | None = None
    notes: list[str] = field(default_factory=list)


def _example_sizes(subject: ExportSubject) -> dict[str, int]:
    """Sizes of the dynamic symbols for tracing: distinct from each other and from every
    static dimension (equal sizes could be merged by the tracer), never 0 or 1."""
    taken = {d for info in subject.inputs for d in (info.dims or []) if isinstance(d, int)}
    real = subject.real_inputs(subject.real_examples() or 1)
    sizes: dict[str, int] = {}
    for symbol in subject.symbols:
        limit = None
        if real is not None and symbol != "B":
            for info in subject.inputs:
                for axis, s in info.dynamic.items():
                    if s == symbol:
                        size = int(real[info.name].shape[axis])
                        limit = size if limit is None else min(limit, size)
        pool = _EXAMPLE_BATCHES if symbol == "B" else _EXAMPLE_LENGTHS
        if limit is not None:
            pool = tuple(p for p in pool if p <= limit) or (limit,)
        choice = next((p for p in pool if p not in taken), pool[0])
        sizes[symbol] = choice
        taken.add(choice)
    return sizes


def _example_inputs(subject: ExportSubject, sizes: dict[str, int]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    real = subject.real_inputs(subject.real_examples() or 1)
    params = subject.params()
    return [verify.random_input(info, sizes, generator, params,
                                real.get(info.name) if real else None)
            for info in subject.inputs]


def _as_half(info: PortInfo) -> PortInfo:
    if info.dtype is not None and info.dtype.is_floating_point:
        return replace(info, dtype=torch.float16)
    return info


def _output_dims(subject: ExportSubject, values: tuple[torch.Tensor, ...],
                 names: list[str], sizes: dict[str, int]) -> list[PortInfo]:
    """Output ports with their exported dims: input symbols where declared, sizes elsewhere."""
    declared = {o.name: o for o in subject.outputs}
    symbols = set(sizes)
    out = []
    for name, value in zip(names, values, strict=False):
        info = declared[name]
        dims: list[int | str] = [int(s) for s in value.shape]
        if info.dims is not None and len(info.dims) == len(dims):
            dims = [d if isinstance(d, str) and d in symbols else dims[i]
                    for i, d in enumerate(info.dims)]
        elif dims and "B" in symbols:
            dims[0] = "B"
        out.append(PortInfo(name, info.port, dims, value.dtype))
    return out


def _check_destination(output: Path) -> None:
    """Refuse an ``-o`` dgraph cannot or must not replace, before the (long) export."""
    parent = output.parent
    if output.is_symlink():
        raise ExportError(
            f"-o {output} is a symbolic link; dgraph replaces the file at -o as a whole and "
            f"would replace the link itself: pass the path it points to "
            f"({os.path.realpath(output)}) or another path"
        )
    if output.is_dir():
        raise ExportError(f"-o {output} is a directory; name the .onnx file to write, e.g. "
                          f"-o {output / 'model.onnx'}")
    if output.exists() and not output.is_file():
        raise ExportError(f"-o {output} exists and is not a regular file; choose another path")
    if not parent.exists():
        raise ExportError(f"-o {output}: the folder {parent} does not exist; create it first "
                          f"(mkdir -p {parent}) or choose another path")
    if not parent.is_dir():
        raise ExportError(f"-o {output}: {parent} is not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"-o {output}: the folder {parent} is not writable (no permission, "
                          "or a read-only file system); choose -o in a writable folder")


@contextlib.contextmanager
def _staging(output: Path) -> Iterator[Path]:
    """A path named like ``output`` in a fresh folder next to it, removed on the way out."""
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".dgraph-export",
                                       dir=output.parent))
    except OSError as exc:
        raise ExportError(f"cannot write {output}: {exc.strerror or exc} in "
                          f"{output.parent}; choose -o in a writable folder") from None
    try:
        yield folder / output.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # only ever the folder made above


def _external_files(path: Path) -> list[str]:
    """The external-data files ``path`` refers to (relative to its folder)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    _metadata.check_external_data(model, path)
    found: list[str] = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in found:
                    found.append(entry.value)
    return found


def _publish(staged: Path, output: Path) -> None:
    """Move the verified file (external data first) from the staging folder to ``output``."""
    try:
        for name in _external_files(staged):
            os.replace(staged.parent / name, output.parent / name)
        os.replace(staged, output)
    except OSError as exc:
        raise ExportError(f"cannot move the verified file into place at {output}: "
                          f"{exc.strerror or exc}") from None


def _verification_error(report: verify.Verification, precision: str, tolerance: float,
                        note: str, model: str = "the torch model") -> ExportError:
    """The located error of a failed parity check (shared with ``dgraph export --check``)."""
    worst = report.worst
    assert worst is not None
    failing = [c for c in report.cases if not c.passed]
    if worst.problems:
        name, problem = next(iter(worst.problems.items()))
        found = f"worst on output '{name}' with {worst.where()}: {problem}"
        if problem.startswith("NaN"):
            hint = ("hint: an output holding NaN is never verified (NaN equals nothing); "
                    "find why the model computes NaN on these inputs")
        elif problem.startswith("shape"):
            hint = "hint: the exported graph computes another shape than the module"
        else:
            hint = ("hint: an infinity matches only the same infinity at the same place; "
                    "an overflow (fp16 holds magnitudes up to 65504) or a changed mask "
                    "gives infinities on one side")
    else:
        found = (f"worst on output '{worst.output}' with {worst.where()}: max abs diff "
                 f"{worst.max_abs:.3g}, max rel diff {worst.max_rel:.3g}, above the "
                 f"{precision} tolerance {tolerance:g}")
        hint = None
    text = (f"verification failed: the ONNX file differs from {model} on {len(failing)} of "
            f"{len(report.cases)} cases, {found}. ")
    if hint:
        text += f"{hint}. "
    return ExportError(text + note)


def _output_note(output: Path, *, unverified: bool = True) -> str:
    note = f"{output} was not written (a file already there is unchanged)"
    if unverified:
        note += "; --no-check writes the unverified file for inspection"
    return note


def export_run(run_dir: str | Path, output: str | Path, *, node: str | None = None,
               opset: int | None = None, fp16: bool = False, provider: str = "cpu",
               check: bool = True, log: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``node`` (default: the spec's export node or student) of the run ``run_dir``
    to ``output`` and, unless ``check`` is False, verify it with onnx.checker and
    onnxruntime. Raises :class:`~dgraph.errors.ExportError` on any failure, including a
    verification above tolerance or non-finite weights or outputs; ``output`` is replaced
    only by a file that passed (or, with ``check=False``, by a complete file)."""
    say = log or (lambda _message: None)
    if check:
        verify.require_onnxruntime(provider)  # fail before a long export, not after
    output = Path(output)
    _check_destination(output)
    subject = load_subject(run_dir, node)
    opset = opset or subject.spec.export.opset
    tolerance = subject.spec.export.tolerance
    if fp16:
        tolerance = max(tolerance, FP16_TOLERANCE)
    precision = "fp16" if fp16 else "fp32"
    node_desc = f"node '{subject.name}' ({subject.node.kind} '{subject.node.spec.type}')"
    say(f"exporting {node_desc} of run {subject.run_dir} to {output} (opset {opset}, "
        f"{precision})")

    sizes = _example_sizes(subject)
    example = _example_inputs(subject, sizes)
    names = [i.name for i in subject.inputs]
    declared_outputs = [o.name for o in subject.outputs]
    try:
        with torch.no_grad():
            probe = subject.module(**dict(zip(names, example, strict=False)))
    except Exception as exc:
        shapes = ", ".join(f"{n}: {list(t.shape)}" for n, t in zip(names, example, strict=True))
        raise ExportError(f"{node_desc} fails on example inputs ({shapes}): "
                          f"{type(exc).__name__}: {exc}") from None
    if not isinstance(probe, dict):
        raise ExportError(f"{node_desc} returned {type(probe).__name__}, not a dict of ports")
    output_names = [n for n in declared_outputs if torch.is_tensor(probe.get(n))]
    notes = [f"output '{n}' is declared but not returned by the module; not exported"
             for n in declared_outputs if n not in output_names]
    if not output_names:
        raise ExportError(f"{node_desc} returns none of its declared outputs "
                          f"({', '.join(declared_outputs)})")
    fp32 = onnx_export.PortModule(subject.module, names, output_names).eval()
    outputs = _output_dims(subject, tuple(probe[n] for n in output_names), output_names, sizes)

    if fp16:
        half = copy.deepcopy(subject.module).half().eval()
        exported = onnx_export.PortModule(half, names, output_names).eval()
        example = [t.half() if t.is_floating_point() else t for t in example]
        inputs = [_as_half(i) for i in subject.inputs]
        outputs = [_as_half(o) for o in outputs]
    else:
        exported = fp32
        inputs = list(subject.inputs)
    dynamic = [i.dynamic for i in subject.inputs]
    output_dynamic = [o.dynamic for o in outputs]
    with _staging(output) as staged:
        result = onnx_export.export_module(exported, tuple(example), staged, opset=opset,
                                           dynamic=dynamic, output_dynamic=output_dynamic,
                                           what=node_desc)
        if result.exporter == onnx_export.DYNAMO:
            say(f"exporter: {result.description}")
        else:
            say(f"exporter: {result.description}; the current exporter failed: "
                f"{result.fallback_reason}")
        folded = onnx_export.fold_weight_quantization(staged)
        if folded:
            say(f"  {folded} quantised weights stored as integers (QuantizeLinear folded)")
        for info in inputs:
            axes = ", ".join(info.dynamic.values())
            say(f"  input   {info.describe()}" + (f"  dynamic: {axes}" if axes else ""))
        for info in outputs:
            say(f"  output  {info.describe()}")
        for note in notes:
            say(f"  note: {note}")

        digest = _weights_digest(staged, output)
        if digest.nonfinite is not None:
            key, count, total = digest.nonfinite
            raise ExportError(
                f"cannot export {node_desc}: the exported {precision} weights are not finite: "
                f"'{key}' holds {count} NaN or infinite values of {total}"
                + (" (float16 holds magnitudes up to 65504; export in fp32)" if fp16 else "")
                + f". {_output_note(output, unverified=False)}"
            )
        props = _metadata.build_metadata(subject, inputs, outputs, exporter=result.exporter,
                                         opset=opset, precision=precision,
                                         weights_sha256=digest.sha256)
        docs = {i.name: i.port.doc for i in (*inputs, *outputs) if i.port.doc}
        try:
            _metadata.write_metadata(staged, props, docs,
                                     doc_string=f"dgraph {node_desc} of spec "
                                                f"'{subject.spec.display_name}'")
        except OSError as exc:
            raise ExportError(f"cannot write {output}: {exc.strerror or exc}") from None
        outcome = ExportResult(path=output, node=subject.name, exporter=result.exporter,
                               fallback_reason=result.fallback_reason, opset=opset,
                               precision=precision, inputs=inputs, outputs=outputs,
                               metadata=props, notes=notes)
        if not check:
            _publish(staged, output)
            say(f"wrote {output} (not verified: --no-check)")
            return outcome

        verify.check_onnx(staged, shown=output)
        say("onnx.checker: ok")
        session = verify.onnxruntime_session(staged, provider, shown=output)
        ort = verify.require_onnxruntime(provider)
        outcome.verification = verify.compare(subject, session, fp32, output_names,
                                              tolerance=tolerance, fp16=fp16,
                                              provider=provider)
        del session
        report = outcome.verification
        say(f"onnxruntime {ort.__version__} ({verify.PROVIDERS[provider]}) vs torch "
            f"{torch.__version__} eager, {precision}, tolerance {tolerance:g} on max abs or "
            "max rel (= max abs / max |torch|):")
        say(report.table())
        for skipped in report.skipped:
            say(f"  skipped {skipped}")
        if not report.passed:
            raise _verification_error(report, precision, tolerance, _output_note(output))
        _publish(staged, output)
    say(f"wrote {output}: verified on {len(report.cases)} cases")
    return outcome


def _weights_digest(staged: Path, output: Path) -> _metadata.WeightsDigest:
    import onnx

    try:
        model = onnx.load(str(staged), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"the exporter wrote an unreadable file for {output}: "
                          f"{type(exc).__name__}: {exc}") from None
    return _metadata.weights_digest(model, staged.parent)
