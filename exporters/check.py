"""``dgraph export --check FILE.onnx [--run RUN_DIR]``: re-verify a file that was shipped.

In order: the file loads as ONNX; the metadata ``dgraph export`` writes is all there and parses
(see :mod:`dgraph.exporters.metadata`) and agrees with the graph (input and output names, the
opset); ``dgraph.weights_sha256`` recomputed from the file equals the stored one, and no stored
weight is NaN or infinite; ``onnx.checker`` accepts it. Then, when a run directory is at hand
(``--run``, or the ``dgraph.run_dir`` recorded at export when it still exists), the node is
rebuilt from that run and onnxruntime is compared with torch exactly as at export. Without a
run directory the parity check is skipped, and the summary says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgraph.exporters import metadata as _metadata
from dgraph.exporters import verify

from dgraph.errors import ExportError

__all__ = ["CheckResult", "check_file"]


@dataclass
class CheckResult:
    """What ``check_file`` verified; ``summary`` is the line ``dgraph export --check`` prints."""

    path: Path
    node: str
    node_type: str
    weights_sha256: str
    tensors: int
    run_dir: Path | None = None
    verification: verify.Verification | None = None
    parity_skipped: str | None = None

    def summary(self) -> str:
        head = (f"verified {self.path}: node '{self.node}' ({self.node_type}), weights "
                f"sha256 {self.weights_sha256[:16]} over {self.tensors} tensors, metadata ok")
        if self.verification is not None:
            worst = max((c.max_abs for c in self.verification.cases), default=0.0)
            return (f"{head}, onnxruntime matches torch of run {self.run_dir} on "
                    f"{len(self.verification.cases)} cases (max abs diff {worst:.2e}, "
                    f"tolerance {self.verification.tolerance:g})")
        return f"{head}; parity not checked: {self.parity_skipped}"


def _load(path: Path) -> Any:
    import onnx

    if not path.exists():
        raise ExportError(f"--check {path}: no such file")
    if not path.is_file():
        raise ExportError(f"--check {path}: not a regular file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(
            f"--check {path}: not a readable ONNX file ({type(exc).__name__}: {exc}). hint: "
            "the file is truncated or is not an .onnx file written by `dgraph export`"
        ) from None


def _agrees_with_graph(model: Any, meta: dict[str, Any], path: Path) -> None:
    graph_inputs = sorted(i.name for i in model.graph.input)
    graph_outputs = sorted(o.name for o in model.graph.output)
    for key, found in (("dgraph.inputs", graph_inputs), ("dgraph.outputs", graph_outputs)):
        declared = sorted(meta[key])
        if declared != found:
            raise ExportError(
                f"{path}: metadata '{key}' names {declared}, the graph has {found}. hint: the "
                "graph or the metadata was changed after export; export it again"
            )
    opset = {o.domain: o.version for o in model.opset_import}.get("")
    if opset is not None and opset != meta["dgraph.opset"]:
        raise ExportError(f"{path}: metadata 'dgraph.opset' is {meta['dgraph.opset']}, the "
                          f"graph imports opset {opset}; export it again")


def _run_dir(meta: dict[str, Any], run_dir: str | Path | None) -> tuple[Path | None, str | None]:
    """The run to compare against, or why there is none."""
    if run_dir is not None:
        return Path(run_dir), None
    recorded = meta.get(_metadata.RUN_DIR_KEY)
    if not recorded:
        return None, "the file records no run directory; pass --run RUN_DIR"
    if not Path(recorded).is_dir():
        return None, (f"the run directory recorded in the file ({recorded}) no longer exists; "
                      "pass --run RUN_DIR")
    return Path(recorded), None


def check_file(path: str | Path, *, run_dir: str | Path | None = None, provider: str = "cpu"
               ) -> CheckResult:
    """Re-verify an exported file; raises :class:`~dgraph.errors.ExportError` on any mismatch."""
    path = Path(path)
    model = _load(path)
    props = {p.key: p.value for p in model.metadata_props}
    meta = _metadata.parse_metadata(props, path)
    _agrees_with_graph(model, meta, path)
    _metadata.check_external_data(model, path)
    digest = _metadata.weights_digest(model, path.parent)
    stored = meta[_metadata.WEIGHTS_KEY]
    if digest.sha256 != stored:
        raise ExportError(
            f"{path}: the weights do not match the hash stored at export: "
            f"dgraph.weights_sha256 is {stored}, the {digest.tensors} tensors in the file hash "
            f"to {digest.sha256}. hint: the file was modified or damaged after export; export "
            "it again from its run directory"
        )
    if digest.nonfinite is not None:
        key, count, total = digest.nonfinite
        raise ExportError(f"{path}: weight '{key}' holds {count} NaN or infinite values of "
                          f"{total}. hint: the run diverged; export a run whose weights are "
                          "finite")
    verify.check_onnx(path)
    result = CheckResult(path=path, node=meta["dgraph.node"], node_type=meta["dgraph.node.type"],
                         weights_sha256=digest.sha256, tensors=digest.tensors)
    run, skipped = _run_dir(meta, run_dir)
    if run is None:
        result.parity_skipped = skipped
        return result
    result.run_dir = run
    result.verification = _parity(path, model, meta, run, provider)
    return result


def _parity(path: Path, model: Any, meta: dict[str, Any], run: Path, provider: str
            ) -> verify.Verification:
    from dgraph.exporters.api import FP16_TOLERANCE, _verification_error
    from dgraph.exporters.onnx_export import PortModule
    from dgraph.exporters.source import load_subject

    verify.require_onnxruntime(provider)
    node = meta["dgraph.node"]
    subject = load_subject(run, node)
    if subject.spec_hash != meta["dgraph.spec.sha256"]:
        raise ExportError(
            f"{path} was exported from a run whose spec.resolved.yaml has sha256 "
            f"{meta['dgraph.spec.sha256']}, but {run / 'spec.resolved.yaml'} has "
            f"{subject.spec_hash}. hint: pass --run with the run directory the file was "
            "exported from"
        )
    if subject.node.spec.type != meta["dgraph.node.type"]:
        raise ExportError(f"{path} holds node '{node}' of type '{meta['dgraph.node.type']}', "
                          f"but run {run} builds a '{subject.node.spec.type}'")
    names = [i.name for i in subject.inputs]
    if sorted(names) != sorted(i.name for i in model.graph.input):
        raise ExportError(f"{path} has inputs {sorted(i.name for i in model.graph.input)}, but "
                          f"node '{node}' of run {run} takes {sorted(names)}")
    outputs = [o.name for o in model.graph.output]
    reference = PortModule(subject.module, names, outputs).eval()
    fp16 = meta["dgraph.precision"] == "fp16"
    tolerance = subject.spec.export.tolerance
    if fp16:
        tolerance = max(tolerance, FP16_TOLERANCE)
    session = verify.onnxruntime_session(path, provider)
    report = verify.compare(subject, session, reference, outputs, tolerance=tolerance,
                            fp16=fp16, provider=provider)
    if not report.passed:
        raise _verification_error(
            report, meta["dgraph.precision"], tolerance,
            "hint: the run's final weights changed after the export (retrained?), or the "
            "file comes from another run; pass --run with the run directory it came from",
            model=f"node '{node}' of run {run} in torch")
    return report
