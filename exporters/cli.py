"""The handler of ``dgraph export RUN_DIR -o model.onnx``: export, verify, report."""

from __future__ import annotations

import argparse

from dgraph.exporters.api import export_run

__all__ = ["run_export"]


def run_export(args: argparse.Namespace) -> int:
    """Export and verify; returns 0, or raises :class:`~dgraph.errors.ExportError` (the CLI
    prints it and exits 1), including when the file does not match the model."""
    export_run(args.run_dir, args.output, node=args.node, opset=args.opset, fp16=args.fp16,
               provider=args.provider, check=not args.no_check,
               log=lambda line: print(line, flush=True))
    return 0
