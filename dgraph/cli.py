"""The ``dgraph`` command: validate | viz | compile | plan | train | sweep | export | list | schema.

Exit codes: 0 success (a valid spec), 1 a problem with the spec or the run, 2 a usage error,
3 a bug in dgraph. A bad spec never prints a Python traceback; set ``DGRAPH_DEBUG=1`` to see
one for bugs. ``dgraph validate --json`` prints one JSON object on every path, failures too.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import traceback
import types
from collections.abc import Sequence
from typing import Any

from dgraph.errors import DgraphError, SpecError, ValidationError

__all__ = ["main"]


def _print_problems(problems, *, stream=None) -> None:
    # sys.stderr is looked up at call time, so that a replaced stream (pytest's capsys, a
    # caller's redirect_stderr) receives the problems too.
    for problem in problems:
        print(problem.render(), file=stream if stream is not None else sys.stderr)


def _load_and_validate(args: argparse.Namespace, *, dry_run: bool):
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    spec = load_spec(args.spec, getattr(args, "set", None) or [])
    graph, warnings = validate(spec)
    if dry_run:
        from dgraph.compiler.dryrun import dry_run as run_dry

        warnings = warnings + run_dry(graph)
    return spec, graph, warnings


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 valid, 1 not valid, 3 a bug in dgraph. With ``--json`` stdout is one JSON object
    on every path (``{"valid": ..., "problems": [...]}``), never a traceback."""
    from dgraph.errors import Problem

    problems: list[Problem] = []
    ok = True
    status = 1
    try:
        spec, graph, warnings = _load_and_validate(args, dry_run=not args.static)
        problems = list(warnings)
    except ValidationError as exc:
        ok = False
        problems = list(exc.problems)
    except SpecError as exc:
        ok = False
        problems = [exc.problem()]
    except DgraphError as exc:  # a plug-in, registry or other located failure
        if not args.json:
            raise
        ok = False
        problems = [_problem_of(exc)]
    except Exception as exc:  # a bug in dgraph; --json still answers in JSON
        if not args.json:
            raise
        if os.environ.get("DGRAPH_DEBUG"):
            traceback.print_exc()
        ok, status = False, 3
        problems = [_internal_problem(exc)]
    if args.json:
        _print_json(ok, problems)
        return 0 if ok else status
    if ok:
        _print_problems(problems)
        nodes = len(graph.nodes)
        mode = "static checks" if args.static else "static checks and meta-device dry run"
        print(f"{spec.display_name}: valid ({nodes} nodes, {len(graph.edges)} edges, {mode})")
        return 0
    _print_problems(problems)
    count = sum(p.severity == "error" for p in problems)
    print(f"{count} error{'s' if count != 1 else ''}: the spec is not valid", file=sys.stderr)
    return 1


def _print_json(ok: bool, problems) -> None:
    print(json.dumps({"valid": ok, "problems": [p.to_json() for p in problems]}, indent=2))


def _problem_of(exc: DgraphError):
    """A DgraphError that is not a spec problem, as a Problem (code from its class name)."""
    import re

    from dgraph.errors import Location, Problem

    location = getattr(exc, "location", None)
    location = location if isinstance(location, Location) else None
    message = str(exc)
    if location is not None:
        message = message.removeprefix(f"{location}: ")
    code = re.sub(r"(?<!^)(?=[A-Z])", "-", type(exc).__name__).lower()
    node, port = getattr(exc, "node", None), getattr(exc, "port", None)
    return Problem(code=code if code != "dgraph-error" else "error", message=message,
                   location=location, node=node if isinstance(node, str) else None,
                   port=port if isinstance(port, str) else None)


def _internal_problem(exc: BaseException):
    from dgraph.errors import Problem

    return Problem(code="internal-error", message=f"{type(exc).__name__}: {exc}",
                   suggestion="this is a bug in dgraph; rerun with DGRAPH_DEBUG=1 for a "
                   "traceback and report it")


def _json_validate(argv: Sequence[str]) -> bool:
    """Whether the command line asks for ``dgraph validate --json``."""
    return bool(argv) and argv[0] == "validate" and "--json" in argv


def _parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse, but ``validate --json`` also reports a usage error as JSON (exit 2)."""
    if not _json_validate(argv):
        return parser.parse_args(argv)
    import contextlib
    import io

    from dgraph.errors import Problem

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            lines = err.getvalue().strip().splitlines()
            message = lines[-1].split(": error: ", 1)[-1] if lines else "bad command line"
            _print_json(False, [Problem(code="usage", message=message,
                                        expected="dgraph validate SPEC [--json] [--static] "
                                        "[--set KEY=VALUE ...]",
                                        suggestion="`dgraph validate --help` describes the "
                                        "arguments")])
        raise
    finally:
        sys.stderr.write(err.getvalue())


def cmd_list(args: argparse.Namespace) -> int:
    from dgraph.registry import COMPONENTS, ROLES, load_plugins

    load_plugins()
    if args.kind is not None and args.kind not in ROLES:
        from dgraph.errors import did_you_mean

        hint = did_you_mean(args.kind, ROLES)
        print(f"dgraph list: unknown kind '{args.kind}'" + (f"; {hint}" if hint else "")
              + f" (kinds: {', '.join(ROLES)})", file=sys.stderr)
        return 2
    shown = 0
    for name, cls in COMPONENTS.items():
        if args.kind is not None and args.kind not in cls.roles:
            continue
        shown += 1
        print(f"{name}  [{', '.join(cls.roles)}]  ({COMPONENTS.origin(name)})")
        doc = cls.doc()
        if doc:
            for line in doc.splitlines():
                print(f"    {line}")
        if cls.inputs:
            print("  inputs:")
            for port, decl in cls.inputs.items():
                extra = " (optional)" if decl.optional else ""
                print(f"    {port}: {decl.type}[{decl.shape or '*'}]{extra}  {decl.doc}".rstrip())
        if cls.outputs:
            print("  outputs:")
            for port, decl in cls.outputs.items():
                print(f"    {port}: {decl.type}[{decl.shape or '*'}]  {decl.doc}".rstrip())
        fields = cls.Params.model_fields
        if fields:
            print("  params:")
            for pname, field in fields.items():
                if field.is_required():
                    default = "required"
                else:
                    value = field.get_default(call_default_factory=True)
                    default = f"default {json.dumps(value, default=str)}"
                desc = f"  {field.description}" if field.description else ""
                bounds = "".join(f", {_bound(m)}" for m in field.metadata if _bound(m))
                kind = ("list[node]" if _is_node_ref(field, listed=True) else "node"
                        if _is_node_ref(field) else _annotation(field.annotation))
                print(f"    {pname}: {kind} = {default}{bounds}{desc}")
        print()
    if shown == 0:
        print(f"no component types of kind '{args.kind}'")
    return 0


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=",
           "max_length": "length <=", "pattern": "matching"}


def _bound(constraint: Any) -> str:
    """``> 0`` for pydantic's ``Gt(gt=0)`` (and the other annotated-types bounds), else ''."""
    for attribute, symbol in _BOUNDS.items():
        value = getattr(constraint, attribute, None)
        if value is not None and attribute != "pattern":
            return f"{symbol} {value}"
    return ""


def _is_node_ref(field: Any, *, listed: bool = False) -> bool:
    """Whether a parameter names a node (``listed``: a list of nodes). The mark is on the
    field, or inside its annotation for an optional reference or a list."""
    import typing

    def marked(annotation: Any) -> bool:
        if typing.get_origin(annotation) is typing.Annotated:
            return any(isinstance(getattr(m, "json_schema_extra", None), dict)
                       and m.json_schema_extra.get("x-dgraph-node-ref")
                       for m in typing.get_args(annotation)[1:])
        return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
            marked(a) for a in typing.get_args(annotation))

    annotation = field.annotation
    if listed:
        return typing.get_origin(annotation) is list and marked(typing.get_args(annotation)[0])
    extra = field.json_schema_extra
    return (isinstance(extra, dict) and bool(extra.get("x-dgraph-node-ref"))) \
        or marked(annotation)


def _annotation(annotation: Any) -> str:
    """A parameter's type as a reader writes it: ``list[int]``, ``"a" | "b"``, ``int | None``."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _annotation(args[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_annotation(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        return f"{name}[{', '.join(_annotation(a) for a in args)}]" if args else name
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def cmd_schema(args: argparse.Namespace) -> int:
    from dgraph.schema import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    from dgraph.viz import render

    spec, graph, warnings = _load_and_validate(args, dry_run=not args.static)
    _print_problems(warnings)
    render(graph, args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from dgraph.compiler import compile_graph

    spec, graph, warnings = _load_and_validate(args, dry_run=False)
    _print_problems(warnings)
    program = compile_graph(graph)
    print(program.source())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Memory and compute per rank, measured on the meta device; exit 1 when the spec is not
    valid or, with ``--device-memory``, when a rank would not fit."""
    from dgraph.compiler.plan import plan_graph

    try:
        spec, graph, warnings = _load_and_validate(args, dry_run=True)
        plan = plan_graph(graph, nproc=args.nproc, strategy=args.strategy, dtype=args.dtype,
                          device=args.device, device_memory=args.device_memory)
    except (ValidationError, SpecError) as exc:
        if not args.json:
            raise
        problems = exc.problems if isinstance(exc, ValidationError) else [exc.problem()]
        print(json.dumps({"valid": False, "plan": None,
                          "problems": [p.to_json() for p in problems]}, indent=2))
        return 1
    fits = plan.device_memory is None or plan.totals()["peak"] <= plan.device_memory
    if args.json:
        print(json.dumps({"valid": True, "plan": plan.to_json(),
                          "problems": [p.to_json() for p in warnings]}, indent=2))
        return 0 if fits else 1
    _print_problems(warnings)
    _print_plan(plan)
    return 0 if fits else 1


def _print_plan(plan) -> None:
    from rich.console import Console
    from rich.table import Table

    from dgraph.compiler.plan import format_bytes, format_flops

    def size(n: int) -> str:
        return format_bytes(n) if n else "-"

    def flops(n: int) -> str:  # the unit's prefix only: the column says FLOPs
        return format_flops(n).removesuffix("FLOP").strip() if n else "-"

    console = Console()
    table = Table(title=f"{plan.spec}: one training step per rank ({plan.strategy}, "
                  f"{plan.nproc} rank{'s' if plan.nproc != 1 else ''}, {plan.dtype}, "
                  f"{plan.device})")
    def count(n: int) -> str:
        for unit, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
            if n >= scale:
                return f"{n / scale:.1f} {unit}"
        return str(n) if n else "-"

    for column in ("node", "kind", "", "params", "weights", "grads", "optimizer",
                   "activations", "FLOPs fwd", "FLOPs bwd"):
        table.add_column(column, justify="left" if column in ("node", "kind", "") else "right")
    for node in plan.nodes:
        share = node.per_rank(plan.nproc)
        state = ("trained" if node.trained else "frozen" if node.frozen and node.params
                 else "") + (
            "*" if node.sharded else "")
        table.add_row(node.name + (f" = {node.shares}" if node.shares else ""), node.kind,
                      state, count(node.params), size(share["weights"]),
                      size(share["gradients"]), size(share["optimizer"]),
                      size(share["activations"] + share["cache"]),
                      flops(node.flops_forward), flops(node.flops_backward))
    if any(node.sharded for node in plan.nodes):
        table.caption = "* sharded across the ranks (fsdp)"
    console.print(table)
    totals = plan.totals()
    parts = [f"weights {format_bytes(totals['weights'])}",
             f"gradients {format_bytes(totals['gradients'])}",
             f"optimizer state {format_bytes(totals['optimizer'])}",
             f"activations {format_bytes(totals['activations'])}"]
    parts += [f"{label} {format_bytes(totals[key])}" for key, label in
              (("cache", "caches"), ("data", "training data"), ("batch", "batch"),
               ("fsdp_gather", "fsdp gather"))
              if totals[key]]
    console.print("per rank: " + ", ".join(parts), highlight=False)
    console.print(f"peak per rank: {format_bytes(totals['peak'])} (held "
                  f"{format_bytes(totals['peak'] - totals['step_peak'])} + the step's "
                  f"{format_bytes(totals['step_peak'])} at its peak)", highlight=False)
    console.print(f"FLOPs per step: {format_flops(plan.flops_per_step())} per rank "
                  "(forward and backward)", highlight=False)
    largest = "; ".join(f"'{node}' {category} {format_bytes(value)}"
                        for node, category, value in plan.largest())
    console.print(f"largest: {largest}", highlight=False)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False)
    verdict = plan.verdict()
    if verdict is not None:
        console.print(verdict, style="bold green" if verdict.startswith("fits")
                      else "bold red", highlight=False)


def _memory(text: str) -> int:
    from dgraph.compiler.plan import parse_memory

    try:
        return parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args)
    if args.program:  # from before torch is imported until the training loop starts
        from dgraph.runtime import collector

        collector.pause()  # see dgraph.runtime.collector
    from dgraph.api import train
    from dgraph.runtime.logging import finite_json
    from dgraph.runtime.shutdown import TrainingInterrupted

    rank_of_a_job = "WORLD_SIZE" in os.environ
    if rank_of_a_job:
        faulthandler.enable()  # a rank that aborts in native code shows where it was
    try:
        summary = train(args.spec, overrides=args.set or [], out=args.out, resume=args.resume,
                        overwrite=args.overwrite, progress=not args.quiet)
    except TrainingInterrupted as exc:  # SIGINT/SIGTERM: a checkpoint was written
        _leave_process_group(together=False)
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except BaseException:
        _leave_process_group(together=False)
        raise
    # Every rank leaves together: a rank that tears its connections down while another is
    # still evaluating or saving made that one abort in gloo's threads at exit.
    _leave_process_group(together=True)
    if os.environ.get("RANK", "0") == "0":
        # Strict JSON, like summary.json: a non-finite metric is null (a warning named it).
        print(json.dumps(finite_json(summary)[0], indent=2, sort_keys=True, allow_nan=False))
    if rank_of_a_job:
        _end_rank()
    return 0


def _end_rank() -> None:
    """End a rank whose work is done and saved, without the interpreter's teardown.

    Every file the run wrote is closed and the process group is gone. Twice in about a
    hundred two-process runs (once on CI) a rank aborted with "terminate called without an
    active exception" and failed the job; 90 further local runs did not reproduce it, so the
    place is not known. An abort in the interpreter's teardown of torch's native state cannot
    happen after this exit, and one anywhere else shows its Python stack (faulthandler).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _process_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a number of processes (1 or more)")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def _launch(args: argparse.Namespace) -> int:
    """``dgraph train --nproc N``: the same command in N processes on this machine, started
    by torch's own launcher (torchrun's ``--standalone`` rendezvous); the ranks print their
    own errors, and a failed job ends with one line here instead of the launcher's trace."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    words = ["train", str(args.spec)]
    for item in args.set or []:
        words += ["--set", item]
    if args.out is not None:
        words += ["--out", str(args.out)]
    words += [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite),
                                    ("--quiet", args.quiet)) if on]
    launcher = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={args.nproc}", "-m", "dgraph.cli", *words])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(launcher)
    except ChildFailedError as exc:
        failed = sorted(exc.failures)
        print(f"error: dgraph train --nproc {args.nproc}: rank(s) "
              f"{', '.join(str(r) for r in failed)} of {args.nproc} failed (their messages are "
              "above); the job was stopped", file=sys.stderr)
        return 1
    return 0


def _leave_process_group(*, together: bool) -> None:
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if together:
                dist.barrier()
            dist.destroy_process_group()


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from dgraph.api import train
    from dgraph.runtime.shutdown import TrainingInterrupted

    console = Console()
    out = Path(args.out)
    rows = []
    # The students see 50 labels; the KD student also sees the other training images,
    # unlabelled, through the teacher (a transfer set): where distillation earns its keep.
    low_label = ["nodes.data.params.labelled=50"]
    runs: tuple[tuple[str, str, str, list[str]], ...] = (
        ("teacher_digits", "teacher (all labels)", "teacher", []),
        ("student_digits", "student from scratch (50 labels)", "student", low_label),
        ("kd", "student with Hinton KD (50 labels + teacher)", "student", low_label))
    for spec, role, node, extra in runs:
        overrides = [*extra, *(args.set or [])]
        shown = "".join(f" --set {o}" for o in overrides)
        console.print(f"[bold]dgraph train {spec} --out {out / spec}{shown}[/bold]")
        # --overwrite deletes only what an earlier demo run wrote (see dgraph.runtime.rundir).
        try:
            summary = train(spec, overrides=overrides, out=out / spec, overwrite=True,
                            progress=not args.quiet)
        except TrainingInterrupted as exc:
            print(str(exc), file=sys.stderr)
            return exc.exit_code
        rows.append((role, spec, summary[f"{node}/accuracy"]))
    table = Table(title="digits: accuracy on 360 held-out images")
    table.add_column("model")
    table.add_column("spec")
    table.add_column("accuracy", justify="right")
    for role, spec, accuracy in rows:
        table.add_row(role, spec, f"{accuracy:.4f}")
    console.print(table)
    console.print(f"TensorBoard: tensorboard --logdir {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``dgraph sweep``: a grid or an Optuna search over a spec's values (dgraph.search)."""
    from dgraph.search import sweep

    if (args.grid is None) == (args.search is None):
        args.sweep_parser.error("give either --grid KEY=V1,V2 (repeatable) or --search "
                                "SPACE.yaml --trials N")
    if args.search is not None and args.trials is None:
        args.sweep_parser.error("--search needs --trials N")
    if args.grid is not None and args.trials is not None:
        args.sweep_parser.error("--trials goes with --search; a grid runs every combination")
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("error: dgraph sweep needs Optuna: pip install 'dgraph[search]' (or optuna)",
              file=sys.stderr)
        return 1
    try:
        sweep(args.spec, objective=args.objective, grid=args.grid, space=args.search,
              trials=args.trials, direction=args.direction, jobs=args.jobs, out=args.out,
              overrides=args.set or [], seed=args.seed, resume=args.resume)
    except SpecError as exc:
        _print_problems([exc.problem()])
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dgraph.exporters.cli import run_check, run_export

    parser = args.export_parser
    if args.check is not None:
        extra = [flag for flag, given in (("RUN_DIR", args.run_dir), ("-o", args.output),
                                          ("--node", args.node), ("--opset", args.opset),
                                          ("--fp16", args.fp16), ("--no-check", args.no_check))
                 if given]
        if extra:
            parser.error(f"--check re-verifies an existing file and takes only --run and "
                         f"--provider, not {', '.join(extra)}")
        return run_check(args)
    if args.run is not None:
        parser.error("--run goes with --check FILE.onnx")
    if args.run_dir is None or args.output is None:
        parser.error("export needs RUN_DIR and -o FILE.onnx (or --check FILE.onnx)")
    from dgraph.exporters.tensor_set import export_tensor_set, is_tensor_node

    if is_tensor_node(args.run_dir, args.node):  # a learned set: safetensors + PNG grid
        extra = [flag for flag, given in (("--opset", args.opset), ("--fp16", args.fp16),
                                          ("--no-check", args.no_check)) if given]
        if extra:
            parser.error(f"a tensor node is exported as safetensors and a PNG grid; "
                         f"{', '.join(extra)} apply to ONNX export only")
        export_tensor_set(args.run_dir, args.output, node=args.node,
                          log=lambda line: print(line, flush=True))
        return 0
    return run_export(args)


def cmd_sample(args: argparse.Namespace) -> int:
    from dgraph.api import sample

    out = sample(args.run_dir, args.output, steps=args.steps, node=args.node, n=args.num,
                 seed=args.seed, device=args.device)
    print(f"wrote {out} ({args.num} samples at {args.steps} step"
          f"{'s' if args.steps != 1 else ''})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgraph",
        description="Distillation methods as specs: validate, draw, compile, train, export.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def spec_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("spec", help="a spec file (.yaml/.json) or a zoo name such as 'kd'")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a value, e.g. --set train.steps=100 (repeatable)")
        return p

    p = spec_command("validate", "check a spec; exit 0 when valid, 1 when not")
    p.add_argument("--json", action="store_true", help="print problems as JSON")
    p.add_argument("--static", action="store_true", help="skip the meta-device dry run")
    p.set_defaults(func=cmd_validate)

    p = spec_command("viz", "draw the graph (.svg, .dot, .mmd, .html)")
    p.add_argument("-o", "--output", required=True, help="output file; format from suffix")
    p.add_argument("--static", action="store_true", help="skip the dry run (no shapes)")
    p.set_defaults(func=cmd_viz)

    p = spec_command("compile", "print the step function generated for each update")
    p.set_defaults(func=cmd_compile)

    p = spec_command("plan", "memory and FLOPs of one training step per rank, measured on "
                     "the meta device before any weights are loaded")
    p.add_argument("--nproc", type=_process_count, default=1, metavar="N",
                   help="ranks the global batch is split among (default 1)")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default=None,
                   help="data-parallel strategy (default: train.distributed.strategy)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="weights, gradients and activations at this precision (default: "
                        "train.precision)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where the run would train (default: train.device; auto is cuda when "
                        "this machine has one)")
    p.add_argument("--device-memory", type=_memory, default=None, metavar="SIZE",
                   help="memory of one device, e.g. 80GB or 24GiB: say whether a rank fits "
                        "(exit 1 when it does not)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = spec_command("train", "train a spec; writes a run directory")
    p.add_argument("--out", help="run directory (default: train.out or runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=_process_count, default=1, metavar="N",
                   help="data-parallel over N processes on this machine (torchrun; batch "
                        "sizes are global); across machines, start `torchrun ... -m "
                        "dgraph.cli train SPEC` on each")
    p.set_defaults(func=cmd_train)

    p = spec_command("sweep", "search over a spec's values: every --grid combination, or "
                     "--trials N chosen by Optuna in a --search space; each trial a run")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="a --set path and its values, comma-separated (repeatable: every "
                        "combination runs)")
    p.add_argument("--search", metavar="SPACE.yaml",
                   help="a space file: --set paths to {low, high[, log][, step]} or "
                        "{choices: [...]} (Optuna's TPE sampler)")
    p.add_argument("--trials", type=_positive, metavar="N", help="trials of a --search")
    p.add_argument("--objective", required=True, metavar="NAME",
                   help="a metric of the trials' summary.json (e.g. student/accuracy), or "
                        "training_free: teacher-student relation similarity at "
                        "initialisation, no training (DisWOT-style)")
    p.add_argument("--direction", choices=["max", "min"], default="max",
                   help="maximise or minimise the objective (default max)")
    p.add_argument("--jobs", type=_positive, default=1, metavar="J",
                   help="trials run at a time, each in its own process (default 1)")
    p.add_argument("--out", metavar="DIR",
                   help="the sweep's folder (default runs/sweep_<name>)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampler (default 0); training seeds come from the spec")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep in --out")
    p.set_defaults(func=cmd_sweep, sweep_parser=p)

    p = sub.add_parser("demo", help="the main job: teacher, scratch student and KD student on "
                       "digits, with a table of their test accuracies")
    p.add_argument("--out", default="runs/demo", help="folder for the three runs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override applied to all three specs (e.g. train.device=cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "export", help="export a trained node to ONNX and verify it (a learned set: "
                       "safetensors and a PNG grid)",
        usage="dgraph export RUN_DIR -o FILE.onnx [options]\n"
              "       dgraph export --check FILE.onnx [--run RUN_DIR] [--provider P]")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="a run directory written by `dgraph train`")
    p.add_argument("--node", help="node to export (default: the spec's export node/student)")
    p.add_argument("-o", "--output", metavar="FILE.onnx",
                   help="the .onnx file to write; replaced only once the new one is verified "
                        "(a tensor node, a learned set: FILE.safetensors, plus FILE.png)")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-check", action="store_true", help="skip onnxruntime verification")
    p.add_argument("--check", metavar="FILE.onnx",
                   help="re-verify an exported file: weights hash, metadata and, with its run "
                        "directory, onnxruntime against torch")
    p.add_argument("--run", metavar="RUN_DIR",
                   help="with --check: the run to compare against (default: the one recorded "
                        "in the file, if it still exists)")
    p.set_defaults(func=cmd_export, export_parser=p)

    p = sub.add_parser("sample", help="draw samples of a trained generative model to a PNG "
                       "(a grid of images, or 2-D points over held-out data)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `dgraph "
                   "train` whose spec has a sampling metric (diffusion_samples)")
    p.add_argument("--steps", type=_positive, required=True, metavar="K",
                   help="sampler steps")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png")
    p.add_argument("--node", help="the sampling metric node (default: the spec's only one)")
    p.add_argument("-n", "--num", type=_positive, default=64, metavar="N",
                   help="samples drawn (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("list", help="list component types, their ports and params")
    p.add_argument("kind", nargs="?", help="only types usable as this kind (e.g. loss)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("schema", help="print the JSON Schema of the spec language")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None, *, as_program: bool = False) -> int:
    """Run one command; returns its exit status. ``as_program``: the process is the command
    (:func:`program`), so ``train`` may pause the garbage collector during its start-up."""
    return _run(argv, program=as_program)


def program() -> None:
    """The ``dgraph`` command (its console script, and ``python -m dgraph``): one command, then
    the process ends without the interpreter's teardown of the modules it imported (see
    :func:`_end_process`). Under a profiler, a coverage tool or a debugger (``python -m
    cProfile -m dgraph ...``), which have work of their own to finish after the command, the
    process ends as usual."""
    code = main(as_program=True)
    if sys.gettrace() is None and sys.getprofile() is None:
        _end_process(code)
    sys.exit(code)


def _end_process(code: int) -> None:
    """End the process with status ``code`` as the interpreter would, less its teardown.

    What an exit does for the program still happens, in the interpreter's order: threads
    that are not daemons are waited for, ``atexit`` handlers run (a ``multiprocessing``
    pool's, a coverage tool's, a plug-in's) and the standard streams are flushed. Clearing
    the imported modules one by one and destroying torch's native state is skipped: about
    0.35 CPU s with torch and ``torch._dynamo`` loaded, a tenth of a one-step run, for
    nothing once every file the command wrote is closed (they all are: each is written in
    a ``with`` block). If a stream cannot be flushed (a closed pipe), the ordinary exit
    follows and reports it.
    """
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the interpreter says so
        return
    os._exit(code)


def _run(argv: Sequence[str] | None, *, program: bool = False) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(_parser(), argv)
    args.program = program
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        _print_problems(exc.problems)
        count = sum(p.severity == "error" for p in exc.problems)
        print(f"{count} error{'s' if count != 1 else ''}: the spec is not valid", file=sys.stderr)
        return 1
    except DgraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if _json_validate(argv):
            from dgraph.errors import Problem

            _print_json(False, [Problem(code="interrupted", message="interrupted")])
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``dgraph list | head``): stop quietly, as Unix tools do, and
        # point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in dgraph, not in the user's spec
        if os.environ.get("DGRAPH_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in dgraph; rerun with DGRAPH_DEBUG=1 for a traceback and report it.",
              file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
