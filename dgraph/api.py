"""The Python entry point of ``dgraph train``: :func:`train` a spec into a run directory.

It sits above the runtime, beside the CLI: it validates the spec, claims and locks the run
directory, trains the zoo runs that nodes start from when they are missing (saying so), draws
the graph (``dgraph.viz``) for the run directory and TensorBoard, then sets up and runs a
:class:`~dgraph.runtime.train.Trainer`.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from dgraph.errors import DgraphError
from dgraph.graph import Graph, validate
from dgraph.runtime.distributed import World, init_world
from dgraph.runtime.logging import GraphPictures
from dgraph.runtime.rundir import open_run_dir, spec_run_dir
from dgraph.runtime.setup import missing_runs, resolve_device
from dgraph.runtime.train import Trainer
from dgraph.spec import Spec, load_spec, zoo_names
from dgraph.spec.source import read_spec_text

__all__ = ["graph_pictures", "sample", "train"]

Say = Callable[[str], Any]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def graph_pictures(graph: Graph) -> GraphPictures:
    """The drawings a run keeps of its graph: SVG, Mermaid and TensorBoard's image."""
    from dgraph.viz import run_drawings

    svg, mermaid, image = run_drawings(graph)
    return GraphPictures(svg=svg, mermaid=mermaid, image=image)


def _train_missing_runs(graph: Graph, run_dir: Path, *, progress: bool, say: Say) -> None:
    """Train the zoo runs that nodes start from (``init: {run: <zoo spec>}``) and that are
    not found, beside ``run_dir``. A missing run that is not a zoo spec is left to the
    Trainer, which reports it where the spec names it."""
    trained: set[str] = set()
    for node, run_ref, target in missing_runs(graph, run_dir):
        if run_ref not in zoo_names() or run_ref in trained:
            continue
        say(f"node '{node}' needs the run of zoo spec '{run_ref}', which is missing: training "
            f"it first into {target} (dgraph train {run_ref} --out {target})")
        # One process trains it, also inside a data-parallel job (rank 0 does, the others wait).
        train(run_ref, out=target, progress=progress, log=say,
              overrides=[f"train.device={graph.spec.train.device}"], _world=World())
        trained.add(run_ref)


def _resume_command(spec_ref: str | Path | Spec, spec: Spec, run_dir: Path,
                    overrides: Iterable[str]) -> str:
    """The shell command that continues this run."""
    if isinstance(spec_ref, Spec):
        spec_ref = spec.path if spec.path is not None else "SPEC"
    words = ["dgraph", "train", str(spec_ref), "--out", str(run_dir)]
    for item in overrides:
        words += ["--set", item]
    return shlex.join([*words, "--resume"])


def train(spec_ref: str | Path | Spec, *, overrides: Iterable[str] = (),
          out: str | Path | None = None, resume: bool = False, overwrite: bool = False,
          progress: bool = True, log: Say | None = None,
          _world: World | None = None) -> dict[str, float]:
    """Validate, compile and run a spec; returns the final evaluation metrics.

    Args:
        spec_ref: a spec file, a zoo name (``"kd"``) or a loaded :class:`Spec`.
        overrides: ``KEY=VALUE`` overrides, as ``--set`` gives them.
        out: the run directory (default: the spec's ``train.out``, else ``runs/<name>``).
        resume: continue from the run's last checkpoint.
        overwrite: replace a previous run in ``out`` (only dgraph's own files are deleted).
        progress: show a progress bar on a terminal.
        log: receives messages for the user (default: standard error).

    The run directory is locked for the whole job (see :mod:`dgraph.runtime.rundir`). A node
    that starts from the run of a zoo spec that is not found (``init: {run: teacher_digits}``)
    has that spec trained first, beside the run directory, with a message saying so.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM stopped the run after writing a checkpoint.
    """
    say: Say = log or _stderr
    overrides = list(overrides)
    spec = spec_ref if isinstance(spec_ref, Spec) else load_spec(spec_ref, overrides)
    graph, warnings = validate(spec)
    for warning in warnings:
        say(warning.render())
    run_dir = Path(out) if out is not None else spec_run_dir(spec)
    world = _world or init_world(resolve_device(spec.train.device))
    # Only rank 0 claims and locks the folder; the other ranks of the job share its lock.
    lock: AbstractContextManager[Any] = open_run_dir(
        run_dir, spec_name=spec.display_name, spec_text=read_spec_text(spec.raw),
        resume=resume, overwrite=overwrite, say=say) if world.rank == 0 else nullcontext()
    with lock:
        if world.rank == 0:
            _train_missing_runs(graph, run_dir, progress=progress, say=say)
        world.barrier()  # the folder (and any run it needs) is ready for every rank
        pictures = graph_pictures(graph) if world.rank == 0 else None
        trainer = Trainer(graph, run_dir, progress=progress, log=say, pictures=pictures,
                          world=world)
        return trainer.run(resume=resume,
                           command=_resume_command(spec_ref, spec, run_dir, overrides))


def sample(run_dir: str | Path, output: str | Path, *, steps: int, node: str | None = None,
           n: int = 64, seed: int = 0, device: str = "cpu") -> Path:
    """Draw ``n`` samples of a finished run after ``steps`` sampler steps and write them to
    ``output`` (PNG): a grid of images (one row per class for a class-conditional model) or a
    scatter of 2-D points over held-out data. ``node`` names the sampling metric node
    (default: the spec's only one). Seeded: the same call draws the same picture."""
    from dgraph.runtime.rundir import atomic_write
    from dgraph.runtime.sample import SampleError, draw, final_instances, samplers

    run_dir, output = Path(run_dir), Path(output)
    if output.suffix.lower() != ".png":
        raise SampleError(f"-o {output}: samples are written as a PNG picture; name a "
                          "file ending in .png")
    resolved = run_dir / "spec.resolved.yaml"
    if not resolved.is_file():
        raise SampleError(f"{run_dir} is not a dgraph run directory: it has no "
                          "spec.resolved.yaml (written by `dgraph train`)")
    graph, _warnings = validate(load_spec(resolved))
    found = {name for name, n_ in graph.nodes.items() if n_.kind == "metric"}
    instances = final_instances(graph, run_dir, resolve_device(device))
    by_name = samplers(graph, instances)
    if not by_name:
        raise SampleError(f"spec '{graph.spec.display_name}' of {run_dir} has no node that "
                          f"draws samples (metrics: {', '.join(sorted(found)) or 'none'}); "
                          "add a 'diffusion_samples' metric to sample a diffusion model")
    if node is None:
        if len(by_name) > 1:
            raise SampleError(f"spec '{graph.spec.display_name}' has {len(by_name)} sampling "
                              f"nodes ({', '.join(sorted(by_name))}); choose one with --node")
        node = next(iter(by_name))
    elif node not in by_name:
        raise SampleError(f"node '{node}' of spec '{graph.spec.display_name}' does not draw "
                          f"samples; sampling nodes: {', '.join(sorted(by_name))}")
    try:
        picture = draw(by_name[node], steps, n, seed=seed)
    except DgraphError:
        raise
    except Exception as exc:  # the sampler's own refusal (a step count it cannot take, ...)
        raise SampleError(f"node '{node}' could not draw {n} samples at {steps} steps: "
                          f"{type(exc).__name__}: {exc}") from None
    try:
        atomic_write(output, lambda f: picture.save(f, format="PNG"))
    except OSError as exc:
        raise SampleError(f"cannot write {output}: {exc.strerror or exc}") from None
    return output
