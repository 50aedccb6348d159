"""The sweep itself: check every trial's spec, train the runs the trials start from, then let
Optuna choose the trials and run them ``jobs`` at a time, each in a process of its own.

Layout of the sweep folder ``DIR`` (dgraph writes these names and deletes none of them)::

    sweep.json         the sweep's configuration (``--resume`` checks it)
    optuna.db          Optuna's study (SQLite): what the sampler knows
    trial_0000/ ...    one normal ``dgraph train`` run directory per trial (with its overrides)
    logs/trial_0000.log  what each trial printed
    results.jsonl      one line per finished trial: params, objective, status, error, seconds
    results.png        the objective per trial and the best so far
    best.yaml          the spec with the best trial's overrides applied (trains as it is)

Trials are asked in rounds of ``jobs`` and told in trial order once the round has finished,
so a search under a fixed ``--seed`` proposes the same trials whatever the timing. A trial
that fails (its spec is not valid, its run fails, it lacks the objective) is recorded with
its error line; the sweep goes on.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dgraph.errors import Location, Problem, SpecError, ValidationError
from dgraph.search.space import Param, SweepError, check_keys, parse_grid, parse_space
from dgraph.search.training_free import OBJECTIVE as TRAINING_FREE

__all__ = ["SweepConfig", "sweep"]

Say = Callable[[str], Any]
CONFIG = "sweep.json"
STUDY = "sweep"


@dataclass
class SweepConfig:
    """What ``--resume`` must find unchanged."""

    spec: str
    objective: str
    direction: str = "max"
    grid: list[str] = field(default_factory=list)
    space: str | None = None
    trials: int | None = None
    overrides: list[str] = field(default_factory=list)
    seed: int = 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def trial_name(number: int) -> str:
    return f"trial_{number:04d}"


def _relocated(problems: list[Problem], params: list[Param], values: dict[str, Any]
               ) -> list[Problem]:
    """Problems the validator located at a swept ``<--set key=value>``, moved to where the
    key was written (the space file's line, the ``--grid`` item), naming the value."""
    out = []
    for problem in problems:
        for param in params:
            if problem.location is not None and problem.location.file == \
                    f"<--set {param.override(values[param.key])}>":
                problem = replace(problem, location=param.where, notes=(
                    *problem.notes, f"with {param.override(values[param.key])}"))
        out.append(problem)
    return out


def _check_trial_spec(spec_ref: str, overrides: list[str], params: list[Param],
                      values: dict[str, Any]) -> Any:
    """The validated graph of one trial's spec; its problems located at the searched keys."""
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    trial = [*overrides, *(p.override(values[p.key]) for p in params)]
    try:
        graph, _warnings = validate(load_spec(spec_ref, trial))
    except ValidationError as exc:
        raise ValidationError(_relocated(list(exc.problems), params, values)) from None
    except SpecError as exc:
        problem = _relocated([exc.problem()], params, values)[0]
        raise SweepError(problem.message, problem.location, code=problem.code,
                         expected=problem.expected, found=problem.found,
                         suggestion=problem.suggestion, notes=problem.notes) from None
    return graph


def _values_to_check(params: list[Param], grid: bool) -> list[dict[str, Any]]:
    """Every grid point; for a search, each parameter at each of its extremes (the others at
    their first)."""
    if grid:
        return [dict(zip([p.key for p in params], combo, strict=True))
                for combo in itertools.product(*(p.extremes() for p in params))]
    first = {p.key: p.extremes()[0] for p in params}
    points = [first]
    for p in params:
        points += [{**first, p.key: v} for v in p.extremes()[1:]]
    return points


def _distributions(params: list[Param], grid: bool) -> dict[str, Any]:
    import optuna.distributions as od

    from dgraph.search.space import value_text

    out: dict[str, Any] = {}
    for p in params:
        if p.choices is not None:
            out[p.key] = od.CategoricalDistribution([value_text(c) for c in p.choices])
        elif p.is_int:
            out[p.key] = od.IntDistribution(int(p.low or 0), int(p.high or 0), log=p.log,
                                            step=int(p.step or 1))
        else:
            out[p.key] = od.FloatDistribution(float(p.low or 0), float(p.high or 0),
                                              log=p.log, step=p.step)
    return out


def _decode(params: list[Param], raw: dict[str, Any]) -> dict[str, Any]:
    """Optuna's values (JSON text for choices) as the values ``--set`` receives."""
    return {p.key: json.loads(raw[p.key]) if p.choices is not None else raw[p.key]
            for p in params}


def _sampler(params: list[Param], grid: bool, seed: int) -> Any:
    import optuna

    from dgraph.search.space import value_text

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            # GridSampler stops the study when the grid is done, which only works inside
            # study.optimize(); the sweep asks and tells, and counts its trials itself.
            pass

    if grid:
        return Grid({p.key: [value_text(c) for c in p.choices or ()] for p in params},
                    seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _error_line(log: Path) -> str:
    """The line a failed trial's log ends with that says why (its last 'error' line)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return "the trial printed nothing"
    errors = [line for line in lines if "error" in line.lower()]
    line = errors[-1] if errors else (lines[-1] if lines else "the trial printed nothing")
    return line if len(line) <= 400 else line[:397] + "..."


@dataclass
class _Running:
    number: int
    values: dict[str, Any]
    process: subprocess.Popen | None
    started: float
    log: Path
    error: str | None = None
    ended: float | None = None


def _wait_all(round_: list[_Running]) -> None:
    """Wait for every process of a round, noting when each one ended."""
    while True:
        waiting = False
        for running in round_:
            if running.ended is None:
                if running.process is None or running.process.poll() is not None:
                    running.ended = time.monotonic()
                else:
                    waiting = True
        if not waiting:
            return
        time.sleep(0.05)


def _command(config: SweepConfig, run_dir: Path, overrides: list[str]) -> list[str]:
    words = [sys.executable, "-m"]
    if config.objective == TRAINING_FREE:
        words += ["dgraph.search.training_free", config.spec, "--out", str(run_dir)]
    else:
        words += ["dgraph.cli", "train", config.spec, "--out", str(run_dir), "--quiet"]
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            words.append("--resume")  # an interrupted trial continues
        elif run_dir.exists():
            words.append("--overwrite")  # deletes only what dgraph wrote there
    for item in overrides:
        words += ["--set", item]
    return words


def _objective_of(config: SweepConfig, run_dir: Path) -> tuple[float | None, str | None]:
    """The trial's objective, or why there is none."""
    name = "score.json" if config.objective == TRAINING_FREE else "summary.json"
    key = "score" if config.objective == TRAINING_FREE else config.objective
    try:
        summary = json.loads((run_dir / name).read_text())
    except (OSError, ValueError) as exc:
        return None, f"cannot read {run_dir / name}: {exc}"
    if key not in summary:
        return None, (f"{name} has no metric '{key}' (it has: {', '.join(sorted(summary))})")
    value = summary[key]
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"the objective '{key}' is {value} (not a finite number)"
    return float(value), None


def _check_config(out: Path, config: SweepConfig, resume: bool) -> None:
    path = out / CONFIG
    if not resume:
        if path.exists():
            raise SweepError(f"{out} holds a sweep already", Location(str(path)),
                             code="sweep-exists", expected="a new or empty folder for --out",
                             found=f"{path}",
                             suggestion="continue it with --resume, or choose another --out")
        return
    if not path.exists():
        raise SweepError(f"--resume: {out} holds no sweep to continue", Location(str(out)),
                         code="no-sweep", expected=f"{path}, written by an earlier sweep",
                         found="no such file", suggestion="drop --resume to start a sweep")
    before = json.loads(path.read_text())
    for key, value in asdict(config).items():
        if before.get(key) != value:
            raise SweepError(
                f"--resume: the sweep in {out} was started with another {key}",
                Location(str(path)), code="sweep-changed", expected=json.dumps(before.get(key)),
                found=json.dumps(value), suggestion="resume with the same arguments, or "
                "start a new sweep in another --out")


def _train_missing(graph: Any, out: Path, say: Say) -> None:
    """Train, once and before any trial, the zoo runs the trials start from (beside them)."""
    from dgraph.api import train
    from dgraph.runtime.setup import missing_runs
    from dgraph.spec import zoo_names

    done: set[str] = set()
    for node, run_ref, target in missing_runs(graph, out / trial_name(0)):
        if run_ref not in zoo_names() or run_ref in done:
            continue
        say(f"node '{node}' starts from the run of zoo spec '{run_ref}', which is missing: "
            f"training it once for all trials into {target}")
        resume = (target / "checkpoints").is_dir() and any((target / "checkpoints").iterdir())
        train(run_ref, out=target, progress=False, log=say, resume=resume,
              overwrite=target.exists() and not resume,
              overrides=[f"train.device={graph.spec.train.device}"])
        done.add(run_ref)


def sweep(spec: str, *, objective: str, grid: list[str] | None = None,
          space: str | Path | None = None, trials: int | None = None, direction: str = "max",
          jobs: int = 1, out: str | Path | None = None, overrides: list[str] | None = None,
          seed: int = 0, resume: bool = False, log: Say | None = None,
          show: bool = True) -> dict[str, Any]:
    """Run a sweep of ``spec`` (a zoo name or a spec file); returns the report
    (``{"best": ..., "trials": [...], "out": ...}``, see :mod:`dgraph.search.report`).

    ``grid`` (``key=v1,v2`` items) runs every combination; ``space`` (a space file) with
    ``trials`` lets Optuna's TPE sampler choose (seeded by ``seed``). ``objective`` is a key
    of the trials' ``summary.json`` (``student/accuracy``) or ``training_free``; ``direction``
    ``max`` or ``min``. Raises :class:`SweepError` or :class:`ValidationError`, before any
    trial runs, for a bad space or a trial spec that is not valid.
    """
    from dgraph.spec import load_raw
    from dgraph.spec.source import apply_overrides

    say: Say = log or _stderr
    overrides = list(overrides or [])
    if bool(grid) == (space is not None):
        raise SweepError("a sweep needs either --grid key=v1,v2 (repeatable) or --search "
                         "SPACE.yaml with --trials N", code="usage")
    if direction not in ("max", "min"):
        raise SweepError(f"--direction must be max or min, not '{direction}'", code="usage")
    if jobs < 1:
        raise SweepError(f"--jobs must be 1 or more, not {jobs}", code="usage")
    is_grid = bool(grid)
    params = parse_grid(list(grid or [])) if is_grid else parse_space(space or "")
    if not is_grid and (trials is None or trials < 1):
        raise SweepError("--search needs --trials N (1 or more)", code="usage")
    raw = apply_overrides(load_raw(spec), overrides)
    name = str(raw.data.get("name") or Path(spec).stem)
    check_keys(params, raw.data, name)
    points = _values_to_check(params, is_grid)
    graph = None
    for values in points:  # every trial's spec is valid before any trial runs
        graph = _check_trial_spec(spec, overrides, params, values)
    if objective == TRAINING_FREE:
        from dgraph.search.training_free import scored_nodes

        scored_nodes(graph)
    total = len(points) if is_grid else int(trials or 0)
    config = SweepConfig(spec=spec, objective=objective, direction=direction,
                         grid=list(grid or []), space=None if space is None else str(space),
                         trials=None if is_grid else trials, overrides=overrides, seed=seed)
    out_dir = Path(out) if out is not None else Path("runs") / f"sweep_{name}"
    _check_config(out_dir, config, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    from dgraph.runtime.rundir import atomic_write_text

    atomic_write_text(out_dir / CONFIG, json.dumps(asdict(config), indent=2) + "\n",
                      what="the sweep's configuration")
    _train_missing(graph, out_dir, say)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{out_dir.resolve() / 'optuna.db'}", study_name=STUDY,
        sampler=_sampler(params, is_grid, seed), load_if_exists=resume,
        direction="maximize" if direction == "max" else "minimize")
    distributions = _distributions(params, is_grid)
    from dgraph.search import report

    records = report.read_results(out_dir)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    (out_dir / "logs").mkdir(exist_ok=True)
    # Trials an interrupted sweep left running run again first, with their own values.
    stale = [t for t in study.get_trials(deepcopy=False)
             if t.state == optuna.trial.TrialState.RUNNING]
    pending: list[tuple[int, dict[str, Any]]] = []
    for t in stale:
        if t.number in records:  # finished and recorded, but not yet told
            _tell(study, records[t.number])
        else:
            pending.append((t.number, _decode(params, t.params)))
    previous = _interrupt_on_sigterm()
    try:
        while True:
            asked = len(study.get_trials(deepcopy=False))
            while len(pending) < jobs and asked < total:
                trial = study.ask(distributions)
                pending.append((trial.number, _decode(params, trial.params)))
                asked += 1
            if not pending:
                break
            round_ = [_start(config, out_dir, params, overrides, number, values, env, say)
                      for number, values in pending]
            pending = []
            try:
                _wait_all(round_)
                finished = [_finish(config, out_dir, running) for running in round_]
            except KeyboardInterrupt:
                for running in round_:  # a run checkpoints on SIGTERM; --resume goes on
                    if running.process is not None and running.process.poll() is None:
                        running.process.terminate()
                for running in round_:
                    if running.process is not None:
                        running.process.wait()
                raise
            for running, record in zip(round_, finished, strict=True):
                records[running.number] = record
                report.append_result(out_dir, record)  # first: a resume tells it from here
                _tell(study, record)
                say(report.one_line(record))
                missing = record.get("error") or ""
                if record["status"] == "failed" and " has no metric " in missing:
                    raise SweepError(
                        f"--objective {objective}: the trials do not report it; {missing}",
                        Location(f"<--objective {objective}>"), code="unknown-objective",
                        expected="a key of summary.json or training_free",
                        found=repr(objective), suggestion="choose one of the keys listed")
    except KeyboardInterrupt:
        say(f"interrupted: continue with `dgraph sweep ... --out {out_dir} --resume`")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return report.finish(out_dir, config, params, records, raw_spec_name=name, say=say,
                         show=show)


def _interrupt_on_sigterm() -> Any:
    """SIGTERM stops the sweep as Ctrl-C does (its trials are stopped, each checkpointing);
    returns the handler to restore (None off the main thread, where none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


def _tell(study: Any, record: dict[str, Any]) -> None:
    import optuna

    if record["status"] == "ok":
        study.tell(record["trial"], record["objective"])
    else:
        study.tell(record["trial"], state=optuna.trial.TrialState.FAIL)


def _start(config: SweepConfig, out: Path, params: list[Param], overrides: list[str],
           number: int, values: dict[str, Any], env: dict[str, str], say: Say) -> _Running:
    """Check the trial's spec and start its process (none when its spec is not valid)."""
    log = out / "logs" / f"{trial_name(number)}.log"
    started = time.monotonic()
    try:
        _check_trial_spec(config.spec, overrides, params, values)
    except (ValidationError, SpecError) as exc:
        problems = exc.problems if isinstance(exc, ValidationError) else [exc.problem()]
        first = problems[0].render().splitlines()[0] if problems else str(exc)
        return _Running(number, values, None, started, log, error=f"invalid spec: {first}")
    run_dir = out / trial_name(number)
    trial = [*overrides, *(p.override(values[p.key]) for p in params)]
    with open(log, "w") as handle:
        process = subprocess.Popen(_command(config, run_dir, trial), stdout=handle,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    return _Running(number, values, process, started, log)


def _finish(config: SweepConfig, out: Path, running: _Running) -> dict[str, Any]:
    """Wait for a trial; its record for results.jsonl."""
    error = running.error
    value = None
    if running.process is not None:
        code = running.process.wait()
        if code != 0:
            error = f"exit {code}: {_error_line(running.log)}"
        else:
            value, error = _objective_of(config, out / trial_name(running.number))
    seconds = (running.ended or time.monotonic()) - running.started
    return {"trial": running.number, "params": running.values, "objective": value,
            "status": "ok" if error is None else "failed", "error": error,
            "seconds": round(seconds, 2), "run_dir": str(out / trial_name(running.number))}
