"""The handler of ``dgraph export``: export, verify, report; or ``--check`` a shipped file."""

from __future__ import annotations

import argparse

__all__ = ["run_check", "run_export"]


def run_export(args: argparse.Namespace) -> int:
    """Export and verify; returns 0, or raises :class:`~dgraph.errors.ExportError` (the CLI
    prints it and exits 1), including when the file does not match the model."""
    from dgraph.exporters.api import export_run

    export_run(args.run_dir, args.output, node=args.node, opset=args.opset, fp16=args.fp16,
               provider=args.provider, check=not args.no_check,
               log=lambda line: print(line, flush=True))
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Re-verify ``args.check``; prints one ``verified ...`` line and returns 0, or raises
    :class:`~dgraph.errors.ExportError` (exit 1)."""
    from dgraph.exporters.check import check_file

    result = check_file(args.check, run_dir=args.run, provider=args.provider)
    print(result.summary(), flush=True)
    return 0
