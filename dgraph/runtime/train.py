"""The training loop: updates at their ratios through the stages, logging, evaluation and
checkpoints that resume bit-identically on CPU.

A :class:`Trainer` is a run set up from a validated graph (:class:`RunSetup`, see
:mod:`dgraph.runtime.setup`) plus the loop; the step is :mod:`dgraph.runtime.step`'s, the
checkpoint contents :mod:`dgraph.runtime.state`'s, evaluation :mod:`dgraph.runtime.evaluate`'s.
Rank-aware: under ``torchrun`` only rank 0 logs and writes checkpoints; distributed data
parallelism itself is left to torch.distributed. SIGINT and SIGTERM stop a run after the
current step with a checkpoint (see :mod:`dgraph.runtime.shutdown`). Validating a spec,
claiming its run directory and drawing the graph happen above, in :func:`dgraph.api.train`.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dgraph._torch_declare import FunctionModule
from dgraph.compiler.compile_mode import CompileChoice
from dgraph.graph import Graph
from dgraph.runtime import collector
from dgraph.runtime.checkpoint import latest_checkpoint, load_checkpoint
from dgraph.runtime.distributed import World
from dgraph.runtime.evaluate import evaluate
from dgraph.runtime.logging import GraphPictures, RunLogger, finite_json
from dgraph.runtime.rundir import atomic_write_text
from dgraph.runtime.sample import gallery, samplers
from dgraph.runtime.setup import RunSetup, Stage
from dgraph.runtime.shutdown import StopSignals, TrainingInterrupted
from dgraph.runtime.state import load_run_state, run_state, save_final, save_run_state
from dgraph.runtime.step import StepRunner

__all__ = ["Trainer"]


class Trainer(RunSetup):
    """A run set up from a validated graph, and the loop that trains it.

    ``pictures`` (the graph drawn by a layer above the runtime) are written into the run
    directory and TensorBoard when the run starts; ``log`` receives messages for the user.
    """

    def __init__(self, graph: Graph, run_dir: Path, *, progress: bool = True,
                 log: Callable[[str], Any] = print,
                 pictures: GraphPictures | None = None, world: World | None = None) -> None:
        super().__init__(graph, run_dir, world=world)
        self.progress = progress
        self.say = log
        if self.compile_choice.setting is not False and self.rank == 0:
            log(self.compile_choice.describe())  # why the steps are (not) compiled, once
        self.pictures = pictures
        self.step_runner = StepRunner(self)
        # The step-aware modules that have something to set (a declared function without
        # scheduled parameters has not): run_step calls these.
        self._stepping = [m for m in self.step_aware
                          if not (isinstance(m, FunctionModule) and not m.schedules)]
        self.step = 0
        # The stage of the last step and its updates with their periods (see run_step).
        self._current: tuple[Stage | None, tuple[tuple[str, int], ...]] = (None, ())
        # CUDA graphs (train.compile: reduce-overhead): each step tells torch that a new
        # iteration begins, so a replay may reuse the memory of the last step's outputs.
        self._new_graph_step = graph_step_marker(self.compile_choice)
        self.samplers = samplers(graph, self.instances)  # pictured at each evaluation

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return run_state(self, self.step)

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        self.step = load_run_state(self, state, path)

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 only); returns its path.

        A pending non-finite flag is read first (see :meth:`StepRunner.check_finite`): a step
        that went non-finite is never checkpointed.
        """
        self.step_runner.check_finite()
        return save_run_state(self, self.step)

    def save_final(self) -> None:
        save_final(self)

    def evaluate(self) -> dict[str, float]:
        for module in self.step_aware:
            module.set_step(self.step)
        return evaluate(self.program, self.instances, self.graph, self.device,
                        self.train_cfg.eval.batch_size, self.amp, world=self.world,
                        sharded=self.sharded, samplers=self.train_cfg.eval.samplers)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, *, resume: bool = False, command: str | None = None) -> dict[str, float]:
        """Train to the last step, evaluate, write the final weights and ``summary.json``.

        On SIGINT/SIGTERM the current step completes, a checkpoint is written, the logs are
        closed and :class:`TrainingInterrupted` is raised; ``command`` (the shell command that
        resumes this run) goes into its message. ``summary.json`` is strict JSON: a non-finite
        metric is written as null, with a warning naming it (the returned dict keeps it).
        """
        # Modules are called without nn.Module.__call__ where no hook needs it: decided again
        # now, for hooks added since the steps were bound.
        self.program.refresh_calls(self.instances)
        if resume:
            latest = latest_checkpoint(self.run_dir / "checkpoints")
            if latest is not None:
                self.load_state(load_checkpoint(latest), latest)
                self.say(f"resuming from {latest} (step {self.step})")
        logger = RunLogger(self.run_dir, enabled=self.rank == 0, total_steps=self.total_steps,
                           progress=self.progress, start_step=self.step)
        eval_every = self.train_cfg.eval.every
        summary: dict[str, float] = {}
        samples = 0
        saved: Path | None = None  # the checkpoint of the current step, once written
        stop = StopSignals()
        tick = time.perf_counter()
        try:
            if self.pictures is not None:
                logger.pictures(self.run_dir, self.pictures)
            collector.resume()  # the start-up is over (after a pause by the command line)
            stop.install()
            while self.step < self.total_steps:
                stage, terms, drawn = self.run_step()
                samples += drawn
                if self.logs_after(self.step - 1):
                    now = time.perf_counter()
                    values = self._log_values(terms)
                    values["throughput/samples_per_s"] = samples / max(now - tick, 1e-9)
                    samples, tick = 0, now
                    logger.log(self.step, values, stage=stage.name if self.spec.stages
                               else None)
                else:
                    logger.advance(self.step)
                if self.step % eval_every == 0 or self.step == self.total_steps:
                    metrics = self.evaluate()
                    if metrics:
                        logger.log(self.step, {f"eval/{k}": v for k, v in metrics.items()})
                        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                          if k.endswith("accuracy") or "perplexity" in k)
                        if shown:
                            logger.line(f"step {self.step}: {shown}")
                    # A sharded (FSDP) model runs only with every rank: all draw, rank 0 logs.
                    if self.samplers and (logger.enabled or self.sharded):
                        for tag, picture in gallery(self.samplers).items():
                            logger.image(tag, picture, self.step)
                    summary = metrics
                saved = None
                if self.step % self.train_cfg.checkpoint_every == 0 or \
                        self.step == self.total_steps:
                    saved = self.save()
                if stop.signum is not None and self.step < self.total_steps:
                    if saved is None:
                        saved = self.save()
                    raise self._interrupted(stop, saved, command)
        finally:
            stop.restore()
            logger.close()
        if not summary:
            summary = self.evaluate()
        self.save_final()
        if self.rank == 0:
            self._write_summary(summary)
        return summary

    def run_step(self) -> tuple[Stage, dict[str, dict[str, torch.Tensor]], int]:
        """Train step ``self.step`` and count it: every update due at it, in order, on the
        same batches. Returns the stage, each update's loss terms (tensors, not read) and
        the number of examples drawn. Logging, evaluation and checkpoints are :meth:`run`'s.
        """
        step = self.step
        if self._new_graph_step is not None:
            self._new_graph_step()
        for module in self._stepping:
            module.set_step(step)
        stage, due = self._current
        if stage is None or not stage.start < step < stage.end:
            # A stage's first step, the first step of this process (a resume) or a step past
            # the last stage: the stage and its updates' periods are looked up again.
            stage = self.stage_at(step)
            updates = self.spec.updates
            due = tuple((update, updates[update].every) for update in stage.updates)
            self._current = (stage, due)
            if step == stage.start:
                self.begin_stage(stage)
        if self.redrawn:
            self.redraw(step)  # nodes with reinit_every: fresh weights this step
        shared: dict[str, dict[str, torch.Tensor]] = {}
        terms: dict[str, dict[str, torch.Tensor]] = {}
        run_update = self.step_runner.run_update
        for update, every in due:
            if (step - stage.start) % every == 0:
                terms[update] = run_update(update, stage, step, shared)
        self.step = step + 1
        drawn = 0
        for batch in shared.values():
            for tensor in batch.values():  # the examples of a data node: any port's rows
                drawn += len(tensor)
                break
        return stage, terms, drawn

    def _interrupted(self, stop: StopSignals, checkpoint: Path | None,
                     command: str | None) -> TrainingInterrupted:
        where = f"wrote the checkpoint {checkpoint}" if checkpoint is not None else \
            "rank 0 writes the checkpoint"
        again = command or (f"dgraph train SPEC --out {shlex.quote(str(self.run_dir))} --resume "
                            "(with the spec and --set options this run was started with)")
        return TrainingInterrupted(
            f"{stop.name} received: stopped after step {self.step} of {self.total_steps} and "
            f"{where}. Resume with: {again}", stop.signum or 0)

    def _write_summary(self, summary: dict[str, float]) -> None:
        clean, nonfinite = finite_json(summary)
        if self.compile_choice.setting is not False:  # how train.compile was resolved
            clean["compile"] = self.compile_choice.summary()
        if nonfinite:
            self.say("warning: non-finite evaluation metrics, written as null in "
                     f"{self.run_dir / 'summary.json'}: "
                     + ", ".join(f"{k} = {summary[k]}" for k in nonfinite)
                     + "; check the evaluation split for NaN/inf values and the model's outputs")
        atomic_write_text(self.run_dir / "summary.json",
                          json.dumps(clean, indent=2, sort_keys=True, allow_nan=False) + "\n",
                          what="summary")

    def _mean_across_ranks(self, terms: dict[str, dict[str, torch.Tensor]]
                           ) -> dict[str, dict[str, torch.Tensor]]:
        """The losses of the global batch: each rank's loss terms averaged over the ranks
        (one all-reduce, on logging steps only). The gradient norm is the same on every rank
        already (taken after the gradients were averaged)."""
        keys = [(u, k) for u, update_terms in terms.items() for k in update_terms
                if k != "grad_norm"]
        if not keys:
            return terms
        stacked = torch.stack([terms[u][k].detach().float().reshape(()) for u, k in keys])
        torch.distributed.all_reduce(stacked)
        stacked /= self.world.size
        out = {u: dict(update_terms) for u, update_terms in terms.items()}
        for (u, k), value in zip(keys, stacked, strict=True):
            out[u][k] = value
        return out

    def _log_values(self, terms: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        self.step_runner.check_finite()  # nothing is logged from steps that went non-finite
        if self.world.distributed:
            terms = self._mean_across_ranks(terms)
        values: dict[str, float] = {}
        for update, update_terms in terms.items():
            for key, tensor in update_terms.items():
                value = float(tensor.detach().float().item())
                if key == "total":
                    values[f"loss/total/{update}"] = value
                elif key == "grad_norm":
                    values[f"grad_norm/{update}"] = value
                else:
                    values[f"loss/{key}"] = value
            values[f"lr/{update}"] = float(self.optimizers[update].param_groups[0]["lr"])
        for module in self.scalar_loggers:
            values.update({k: float(v) for k, v in module.logged_scalars().items()})
        return values


def graph_step_marker(choice: CompileChoice) -> Callable[[], None] | None:
    """What marks the start of a training step for CUDA graphs: torch's
    ``cudagraph_mark_step_begin`` when the steps replay as CUDA graphs, else nothing. Without
    it a replay cannot tell whether the last step's outputs (loss terms kept for logging) are
    still wanted, and records anew rather than reuse their memory."""
    return torch.compiler.cudagraph_mark_step_begin if choice.cuda_graphs else None
