"""Exporters: trained nodes of a run directory to ONNX, verified with onnxruntime.

``dgraph export RUN_DIR -o model.onnx`` (see :mod:`dgraph.exporters.cli`) and, from Python,
:func:`export_run`; ``dgraph export --check model.onnx`` and :func:`check_file` re-verify a
shipped file. Modules: ``source`` (rebuild the node from the run), ``onnx_export`` (the
exporters and their fallback), ``verify`` (onnx.checker and onnxruntime against torch),
``metadata`` (what the file says about itself, and its weights hash), ``check`` (``--check``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CheckResult", "ExportResult", "check_file", "export_run", "read_metadata"]


def __getattr__(name: str) -> Any:  # torch and onnx are imported only when used
    if name in ("ExportResult", "export_run"):
        from dgraph.exporters import api

        return getattr(api, name)
    if name in ("CheckResult", "check_file"):
        from dgraph.exporters import check

        return getattr(check, name)
    if name == "read_metadata":
        from dgraph.exporters.metadata import read_metadata

        return read_metadata
    raise AttributeError(f"module 'dgraph.exporters' has no attribute '{name}'")
