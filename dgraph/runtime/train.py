"""The training runtime: ``dgraph train`` — updates at their ratios, stages, evaluation,
checkpoints that resume bit-identically on CPU, and a run directory with everything in it.

Rank-aware: under ``torchrun`` only rank 0 logs, writes checkpoints and holds the run
directory's lock (see :mod:`dgraph.runtime.rundir`); distributed data parallelism itself is
left to torch.distributed. SIGINT and SIGTERM stop a run after the current step with a
checkpoint (see :mod:`dgraph.runtime.shutdown`).
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import sys
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgraph import __version__
from dgraph.compiler.codegen import Program, UpdatePlan, compile_graph
from dgraph.compiler.instantiate import Instances, build_context, instantiate
from dgraph.compiler.schedules import build_optimizer, build_scheduler, param_groups, value_at
from dgraph.errors import CheckpointError, ComponentRuntimeError, DgraphError, NonFiniteError
from dgraph.graph import Graph, validate
from dgraph.runtime.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    restore_rng,
    save_checkpoint,
    save_weights,
)
from dgraph.runtime.data import BatchLoader
from dgraph.runtime.evaluate import evaluate
from dgraph.runtime.logging import RunLogger, finite_json
from dgraph.runtime.rundir import (
    RunDirError,
    RunLock,
    atomic_write_text,
    open_run_dir,
    os_reason,
    spec_run_dir,
)
from dgraph.runtime.shutdown import StopSignals, TrainingInterrupted
from dgraph.spec import ScheduleSpec, Spec, load_spec, zoo_names
from dgraph.spec.source import read_spec_text

__all__ = ["Trainer", "TrainingInterrupted", "train", "resolve_device", "default_run_dir"]


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DgraphError("train.device is 'cuda' but no CUDA device is available; "
                          "use --set train.device=cpu or auto")
    return torch.device(choice)


def default_run_dir(spec: Spec) -> Path:
    """``train.out``, else ``runs/<name>``; a located SpecError when it leaves its base."""
    return spec_run_dir(spec)


@dataclass
class _Stage:
    name: str
    start: int
    end: int
    updates: list[str]
    copy: dict[str, str]
    reinit: list[str]
    weights: dict[str, Any]


def _stages(spec: Spec) -> list[_Stage]:
    total = spec.train.steps
    if not spec.stages:
        return [_Stage("main", 0, total, list(spec.updates), {}, [], {})]
    lengths = [s.steps for s in spec.stages]
    if sum(lengths) != total:
        # Stage lengths are proportions of train.steps, so `--set train.steps=N` scales all.
        scaled = [max(1, round(total * n / sum(lengths))) for n in lengths]
        lengths = scaled
    out, start = [], 0
    for stage, length in zip(spec.stages, lengths, strict=True):
        out.append(_Stage(stage.name, start, start + length, list(stage.updates),
                          dict(stage.copy_weights), list(stage.reinit), dict(stage.weights)))
        start += length
    return out


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class Trainer:
    """Everything a run needs, built once from a validated graph."""

    def __init__(self, graph: Graph, run_dir: Path, *, progress: bool = True,
                 log=print) -> None:
        self.graph = graph
        self.spec = graph.spec
        self.run_dir = run_dir
        self.rank = _rank()
        self.train_cfg = self.spec.train
        self.device = resolve_device(self.train_cfg.device)
        self.progress = progress
        self.say = log
        self._seed_everything(self.train_cfg.seed)
        self.instances: Instances = instantiate(graph, device=self.device,
                                                seed=self.train_cfg.seed, run_dir=run_dir)
        self._load_initial_weights()
        self.program: Program = compile_graph(graph)
        self.program.bind(self.instances, compile_steps=self.train_cfg.compile)
        self._constant_weights: dict[tuple[str, str], dict[str, float]] = {}
        self._followers = self._targets_following()
        self.stages = _stages(self.spec)
        self.total_steps = self.stages[-1].end
        used = self._ports_used()
        self.loaders = {
            name: BatchLoader(
                {port: t for port, t in {**source.train,
                                         "__index__": torch.arange(len(source))}.items()
                 if port in used[name]},
                source.batch_size, shuffle=source.shuffle, drop_last=source.drop_last,
                seed=self.train_cfg.seed, device=self.device, size=len(source),
            )
            for name, source in self.instances.data.items()
        }
        # The non-finite check (see _check_finite): a sticky on-device flag, the number of
        # optimizer steps it made skip since it was last read, and what those steps drew.
        self._found_inf = torch.zeros((), device=self.device)
        self._skipped = torch.zeros((), device=self.device)
        self._one = torch.ones((), device=self.device)
        self._unread: list[tuple[int, str, int, list[tuple[tuple[int, int], ...]]]] = []
        self._shared_drawn: dict[str, tuple[int, int]] = {}
        # Read the flag only at logging/checkpoint/eval steps where the optimizer can skip a
        # step on the device (fused optimizers); elsewhere it is read every step.
        self.defer_finite_checks = self.device.type == "cuda"
        # Losses are read directly on CPU; elsewhere they join the device flag (one read).
        self.read_losses_on_host = self.device.type == "cpu"
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.trainable_params: dict[str, list[torch.nn.Parameter]] = {}
        for stage in self.stages:
            for update in stage.updates:
                if update not in self.optimizers:
                    self._build_optimizer(update, stage.end - stage.start)
        self.step = 0
        self._fill_caches()
        self._set_train_modes()
        self.amp = self._amp_context()
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.train_cfg.precision == "fp16" else None)

    # -- set-up ----------------------------------------------------------------------------
    def _ports_used(self) -> dict[str, set[str]]:
        """Per data node, the ports some node reads: only those are batched."""
        used: dict[str, set[str]] = {name: set() for name in self.instances.data}
        for edge in self.graph.edges:
            if edge.src in used:
                used[edge.src].add(edge.src_port)
        for name, node in self.graph.nodes.items():
            if node.spec.cache is not None:
                # A cached node's outputs are looked up by example index.
                for ancestor in self.graph.ancestors(name):
                    if ancestor in used:
                        used[ancestor].add("__index__")
        return used

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)

    def _amp_context(self):
        precision = self.train_cfg.precision
        if precision == "fp32":
            return nullcontext
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        device_type = self.device.type
        return lambda: torch.autocast(device_type=device_type, dtype=dtype)

    def _build_optimizer(self, name: str, steps: int) -> None:
        update = self.spec.updates[name]
        plan = self.program.plans[name]
        if update.accumulate > 1 and plan.token_losses and \
                set(plan.token_losses) != set(plan.losses):
            others = sorted(set(plan.losses) - set(plan.token_losses))
            raise DgraphError(
                f"update '{name}' accumulates {update.accumulate} micro-batches and mixes "
                f"token-normalised losses ({', '.join(plan.token_losses)}) with others "
                f"({', '.join(others)}); their normalisations cannot be combined exactly. "
                "Use accumulate: 1, or put the other losses in an update of their own"
            )
        groups = param_groups(update.params, self.instances.modules, name)
        optimizer = build_optimizer(update.optimizer, groups)
        self.optimizers[name] = optimizer
        self.schedulers[name] = build_scheduler(update.scheduler, optimizer,
                                                steps // update.every)
        self.trainable_params[name] = [p for g in groups for p in g["params"]]

    def _load_initial_weights(self) -> None:
        for name, node in self.graph.nodes.items():
            init = node.spec.init
            if init is None or name not in self.instances.modules:
                continue
            path = self._init_path(name, init)
            state = load_weights(path)
            module = self.instances.modules[name]
            missing, unexpected = module.load_state_dict(state, strict=False)
            if init.strict and (missing or unexpected):
                raise CheckpointError(
                    f"node '{name}': weights in {path} do not match its module "
                    f"(missing: {list(missing)[:5]}, unexpected: {list(unexpected)[:5]}); "
                    "check the node's params match the run that produced them, or set "
                    "init.strict: false"
                )

    def _init_path(self, name: str, init) -> Path:
        if init.weights is not None:
            path = Path(init.weights)
            if not path.is_absolute() and self.spec.path is not None:
                local = self.spec.path.parent / path
                path = local if local.exists() else path
            return path
        run_ref = init.run
        node = init.node or name
        candidates = [Path(run_ref), self.run_dir.parent / run_ref, Path("runs") / run_ref]
        for run in candidates:
            weights = run / "final" / f"{node}.safetensors"
            if weights.exists():
                return weights
        if run_ref in zoo_names():
            target = self.run_dir.parent / run_ref
            self.say(f"node '{name}' starts from the run of zoo spec '{run_ref}', which is not "
                     f"in {target}; training it first (dgraph train {run_ref} --out {target})")
            train(run_ref, out=target, progress=self.progress, log=self.say,
                  overrides=[f"train.device={self.train_cfg.device}"])
            weights = target / "final" / f"{node}.safetensors"
            if weights.exists():
                return weights
        raise CheckpointError(
            f"node '{name}': no trained weights for node '{node}' in run '{run_ref}' (looked "
            f"in {', '.join(str(c / 'final') for c in candidates)}). Produce them with "
            f"`dgraph train <spec> --out {candidates[1]}`, or point init.run at the run "
            "directory"
        )

    def _fill_caches(self) -> None:
        """Run cached frozen nodes once over their whole dataset, in example order."""
        cached = [n for n, node in self.graph.nodes.items() if node.spec.cache is not None]
        for name in cached:
            node = self.graph.nodes[name]
            cache_spec = node.spec.cache
            source = next(a for a in self.graph.ancestors(name)
                          if self.graph.nodes[a].kind == "data")
            tensors = self.loaders[source].tensors
            disk = None
            if cache_spec.where == "disk":
                folder = Path(cache_spec.path) if cache_spec.path else self.run_dir / "cache"
                disk = folder / f"{name}.safetensors"
                if disk.exists():
                    stored = load_weights(disk)
                    size = next(iter(tensors.values())).shape[0]
                    if all(t.shape[0] == size for t in stored.values()):
                        self.program.caches.setdefault(name, {}).update(
                            {k: v.to(self.device) for k, v in stored.items()})
                        continue
            chunks: dict[str, list[torch.Tensor]] = {}
            size = next(iter(tensors.values())).shape[0]
            upstream = self.graph.ancestors(name) | {name}
            nodes = [n for n in self.program.order if n in upstream]
            with torch.no_grad(), self._amp_context()():
                for start in range(0, size, 1024):
                    batch = {source: {k: v[start:start + 1024] for k, v in tensors.items()}}
                    values = self.program.run_nodes(self.instances, batch, nodes)
                    for port in node.outputs:
                        if (name, port) in values:
                            chunks.setdefault(port, []).append(values[(name, port)])
            cache = {port: torch.cat(parts) for port, parts in chunks.items()}
            self.program.caches.setdefault(name, {}).update(cache)
            if disk is not None and self.rank == 0:
                save_weights(disk, cache, {"node": name})

    def _set_train_modes(self) -> None:
        for name, module in self.instances.modules.items():
            if self.graph.nodes[name].spec.shares is not None:
                continue
            module.train(not self.graph.nodes[name].frozen)

    # -- stages ----------------------------------------------------------------------------
    def _stage_at(self, step: int) -> _Stage:
        for stage in self.stages:
            if stage.start <= step < stage.end:
                return stage
        return self.stages[-1]

    def _begin_stage(self, stage: _Stage) -> None:
        for dst, src in stage.copy.items():
            state = self.instances.modules[src].state_dict()
            self.instances.modules[dst].load_state_dict(state)
        for name in stage.reinit:
            context = build_context(self.graph, name, device=str(self.device),
                                    seed=self.train_cfg.seed + stage.start,
                                    run_dir=self.run_dir, modules=self.instances.modules)
            fresh = self.graph.nodes[name].component.build(context)
            self.instances.modules[name].load_state_dict(fresh.to(self.device).state_dict())
        if stage.start > 0:
            # A new stage starts its optimizers afresh (the roles of nodes may have changed).
            for update in stage.updates:
                self._build_optimizer(update, stage.end - stage.start)

    # -- the step ----------------------------------------------------------------------------
    def _weights(self, plan: UpdatePlan, stage: _Stage, step: int) -> dict[str, float]:
        key = (plan.name, stage.name)
        constant = self._constant_weights.get(key)
        if constant is not None:
            return constant
        schedules = {loss: stage.weights.get(loss, plan.spec.weight_of(loss))
                     for loss in plan.losses}
        weights = {loss: value_at(s, step) for loss, s in schedules.items()}
        if not any(isinstance(s, ScheduleSpec) for s in schedules.values()):
            # Fixed weights: computed once, not on every step.
            self._constant_weights[key] = weights
        return weights

    def _draw(self, plan: UpdatePlan, cache: dict[str, dict[str, torch.Tensor]]) -> dict:
        batch = {}
        for data_node in plan.data_nodes:
            if data_node not in cache:
                cache[data_node] = self.loaders[data_node].next()
            batch[data_node] = cache[data_node]
        return batch

    def _run_update(self, name: str, stage: _Stage, step: int,
                    shared: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        plan = self.program.plans[name]
        spec = plan.spec
        optimizer = self.optimizers[name]
        params = self.trainable_params[name]
        weights = self._weights(plan, stage, step)
        terms: dict[str, torch.Tensor] = {}
        # Token-level losses under accumulation: back-propagate their sums, then divide the
        # gradients by the token count of all micro-batches, so splitting a batch into
        # micro-batches changes nothing.
        by_count = bool(plan.token_losses) and spec.accumulate > 1
        # With loss scaling (fp16) non-finite gradients are the scaler's to skip; otherwise a
        # step skips on the device only where the optimizer supports it (see _check_finite).
        deferred = self.scaler is None and self.defer_finite_checks and \
            getattr(optimizer, "_step_supports_amp_scaling", False)
        for repeat in range(spec.repeat):
            sum_total = count_total = None
            totals: list[torch.Tensor] = []
            # Where each micro-batch came from: (epoch, position) per data node, so that a
            # failed step can be re-run on the same examples without keeping them.
            draws: list[tuple[tuple[int, int], ...]] = []
            for micro in range(spec.accumulate):
                cache = shared if repeat == 0 and micro == 0 else {}
                reused = tuple(cache) if cache else ()
                batch = self._draw(plan, cache)
                drawn = tuple(self._shared_drawn[d] if d in reused else self.loaders[d].drawn
                              for d in plan.data_nodes)
                if cache is shared:
                    self._shared_drawn.update(zip(plan.data_nodes, drawn, strict=True))
                draws.append(drawn)
                try:
                    with self.amp():
                        result = plan.step(batch, weights)
                except DgraphError:
                    raise
                except Exception as exc:
                    raise self._located_failure(plan, step, batch, exc) from exc
                total, losses = result[0], result[1]
                totals.append(total)
                if by_count:
                    scaled = result[2]
                    sum_total = result[2].detach() + (0 if sum_total is None else sum_total)
                    count_total = result[3].detach() + (0 if count_total is None else count_total)
                else:
                    scaled = total / spec.accumulate if spec.accumulate > 1 else total
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                try:
                    scaled.backward(inputs=params if plan.bystanders else None)
                except DgraphError:
                    raise
                except Exception as exc:
                    raise self._backward_failure(plan, step, exc, losses) from exc
            if by_count:
                count_total = count_total.clamp_min(1)
                grads = [p.grad for p in params if p.grad is not None]
                if grads:
                    torch._foreach_div_(grads, count_total)
                total = sum_total / count_total
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            else:
                # One fused pass over the gradients sets the sticky flag when any is NaN/inf
                # (multiplying by 1 changes no value); no host sync.
                torch._amp_foreach_non_finite_check_and_unscale_(
                    [p.grad for p in params if p.grad is not None], self._found_inf, self._one)
            if self.read_losses_on_host and not deferred:
                # On CPU, reading the losses is cheaper than another pass over them.
                if not (all(_finite(t) for t in totals)
                        and (self.scaler is not None or not self._found_inf.item())):
                    self._check_finite((step, name, repeat, draws), totals)
            else:
                torch._amp_foreach_non_finite_check_and_unscale_(
                    [t.detach() for t in totals], self._found_inf, self._one)
                if deferred:
                    self._skipped.add_(self._found_inf)
                    self._unread.append((step, name, repeat, draws))
                elif self._found_inf.item():  # one read (a sync) per optimizer step
                    self._check_finite((step, name, repeat, draws), totals)
            if spec.clip_grad_norm is not None:
                terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, spec.clip_grad_norm)
            elif self._logs_after(step):
                # Gradients are cleared below, so the norm is taken now, on logging steps only.
                terms["grad_norm"] = _grad_norm(params)
            if self.scaler is not None:
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                if deferred:
                    # The fused kernels leave parameters and state alone (and take back the
                    # step count) when found_inf is set: GradScaler's own mechanism.
                    optimizer.grad_scale = None  # type: ignore[attr-defined]
                    optimizer.found_inf = self._found_inf  # type: ignore[attr-defined]
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self._after_update(name)
        scheduler = self.schedulers.get(name)
        if scheduler is not None:
            scheduler.step()
        if deferred and self._reads_after(step):
            self._check_finite()
        terms["total"] = total
        for loss, value in zip(plan.losses, losses, strict=True):
            terms[loss] = value
        return terms

    def _after_update(self, update: str) -> None:
        """Let target nodes (EMA, periodic copies) follow the nodes this update trained."""
        for target, source in self._followers[update]:
            target.follow(source)

    def _targets_following(self) -> dict[str, list[tuple[torch.nn.Module, torch.nn.Module]]]:
        """Per update, the (target module, source module) pairs to move after it steps."""
        out: dict[str, list] = {}
        for update, plan in self.program.plans.items():
            trained = set(plan.trained)
            out[update] = [
                (self.instances.modules[name], self.instances.modules[source])
                for name, node in self.graph.nodes.items()
                if (follows := node.component.follows) is not None
                and (source := node.component.references().get(follows)) in trained
            ]
        return out

    def _located_failure(self, plan: UpdatePlan, step: int, batch: dict,
                         exc: Exception) -> ComponentRuntimeError:
        """The error for an exception from a generated step: the step's nodes are run again
        one at a time (the slow path) on the same batch, to find the node that raises."""
        where = f"step {step}: update '{plan.name}'"
        try:
            with self.amp():
                values = self.program.run_nodes(self.instances, batch, plan.nodes)
        except ComponentRuntimeError as located:
            node = self.graph.nodes.get(located.node or "")
            hint = "" if located.port is not None else \
                ". Check the node's parameters against the inputs it was given"
            return ComponentRuntimeError(
                (f"{node.location}: " if node is not None else "") + f"{where}: {located}"
                + hint, node=located.node, port=located.port)
        except Exception:  # noqa: BLE001 - the original error is reported below
            values = {}
        for loss in plan.losses if values else ():
            ports = ["loss", *(("sum", "count") if loss in plan.token_losses else ())]
            for port in ports:
                if (loss, port) not in values:
                    node = self.graph.nodes[loss]
                    return ComponentRuntimeError(
                        f"{node.location}: {where}: loss node '{loss}' ({node.kind} "
                        f"'{node.spec.type}') produced no output '{port}'; the component must "
                        "return every output port it declares", node=loss, port=port)
        compiled = " (train.compile is on: set it to false to rule torch.compile out)" \
            if self.train_cfg.compile else ""
        return ComponentRuntimeError(
            f"{self.spec.source.where(('updates', plan.name))}: {where}: the step raised "
            f"{type(exc).__name__}: {exc}; running its nodes one at a time on the same batch "
            f"did not fail, so no node can be named{compiled}")

    def _backward_failure(self, plan: UpdatePlan, step: int, exc: Exception,
                          losses: tuple) -> ComponentRuntimeError:
        for loss, value in zip(plan.losses, losses, strict=False):
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                node = self.graph.nodes[loss]
                return ComponentRuntimeError(
                    f"{node.location}: step {step}: update '{plan.name}': loss node '{loss}' "
                    f"({node.kind} '{node.spec.type}') returned a 'loss' of shape "
                    f"{list(value.shape)}; a loss must be a single number (reduce it with a "
                    "mean or sum in the component)", node=loss, port="loss")
        path = [n for n in plan.nodes if n in plan.grad_nodes]
        return ComponentRuntimeError(
            f"{self.spec.source.where(('updates', plan.name))}: "
            f"step {step}: update '{plan.name}': back-propagation through "
            f"{', '.join(repr(n) for n in path) or 'its nodes'} failed: "
            f"{type(exc).__name__}: {exc}. A component that changes a tensor in place after "
            "using it, or a custom autograd function, is the usual cause")

    def _reads_after(self, step: int) -> bool:
        """Whether the non-finite flag is read after ``step``: before anything is logged,
        evaluated or saved, and at the end of a stage (its optimizers are then replaced)."""
        done = step + 1
        return (self._logs_after(step) or done % self.train_cfg.checkpoint_every == 0
                or done % self.train_cfg.eval.every == 0 or done == self._stage_at(step).end)

    def _check_finite(self, current: tuple | None = None,
                      totals: list[torch.Tensor] | None = None) -> None:
        """Read the non-finite flag; raise NonFiniteError for the first step it caught.

        Every optimizer step checks its losses and gradients on the device: one fused pass
        sets ``_found_inf`` when any of them is NaN or infinite. A flagged step must leave
        parameters and optimizer state untouched (an Adam step with zeroed gradients would
        still move the parameters and count a step), and the decision has to be made on the
        device or read on the host:

        - fused optimizers (``_step_supports_amp_scaling``; GradScaler relies on the same
          mechanism) skip on the device when given ``found_inf``. On CUDA (where a read
          would stall the queue) they run ahead unsynchronised: the flag is sticky, so every
          step from the first bad one on is skipped, and it is read here after logging,
          checkpoint, evaluation and stage-end steps (``_reads_after``), so before anything
          is logged, evaluated or saved (a checkpoint written at any other step must call
          this first). ``_unread`` records what each step drew, and ``_skipped``
          counts the steps skipped, which locates the first bad one. Learning-rate schedules
          and EMA targets (which follow an unchanged source) still advance on those steps;
          the run stops at the read, before anything is logged or saved;
        - other optimizers (the foreach ones, and every optimizer on CPU, where the read is
          a fraction of a microsecond) have the flag read at once by ``_run_update``, which
          calls this with the ``current`` step's record before the optimizer step.

        With loss scaling (fp16) the GradScaler skips non-finite gradients itself, as it
        expects some; only a non-finite loss raises. The error names the step and update, the
        first parameter that holds or received a non-finite value, and the first node whose
        output went non-finite when the step was re-run on the slow path.
        """
        if current is None:
            if not self._unread or not self._found_inf.item():
                self._unread.clear()
                return
        pending = int(self._skipped.item()) if self._unread else 0
        if pending:
            record, totals = self._unread[len(self._unread) - pending], None
        else:
            record = current if current is not None else self._unread[-1]
        step, update, repeat, draws = record
        plan = self.program.plans[update]
        optimizer = self.optimizers[update]
        batches = [self._batch_at(plan, drawn) for drawn in draws]
        if totals is None:
            # The gradients are gone: redo the step (parameters are as they were then, as
            # every later step was skipped).
            optimizer.zero_grad(set_to_none=True)
            weights = self._weights(plan, self._stage_at(step), step)
            totals = []
            params = self.trainable_params[update]
            step_fn = plan.step
            assert step_fn is not None  # bound in __init__
            for batch in batches:
                with self.amp():
                    total = step_fn(batch, weights)[0]
                total.backward(inputs=params if plan.bystanders else None)
                totals.append(total.detach())
        parameter = self._first_nonfinite_parameter(update)
        optimizer.zero_grad(set_to_none=True)
        self._found_inf.zero_()
        self._skipped.zero_()
        self._unread.clear()
        losses = [float(t.detach().float().sum()) for t in totals]
        loss = next((v for v in losses if not math.isfinite(v)), losses[0])
        found = "no node output was non-finite when the step was re-run"
        for micro, batch in enumerate(batches):
            culprit = self._first_nonfinite(plan, batch)
            if culprit is not None:
                node = self.graph.nodes[culprit[0]]
                found = (f"the first node whose output went non-finite is '{culprit[0]}' "
                         f"(port '{culprit[1]}', {node.kind} '{node.spec.type}'"
                         + (f", micro-batch {micro + 1} of {len(batches)}" if len(batches) > 1
                            else "") + ")")
                break
        if parameter is None:
            grads = "gradients finite" if self.scaler is None else \
                "gradients finite once unscaled"
        else:
            grads = parameter
        repeats = plan.spec.repeat
        skipped = "The step was skipped" if not pending or pending == 1 else (
            f"The step and the {pending - 1} step{'s' if pending > 2 else ''} after it were "
            "skipped")
        raise NonFiniteError(
            f"step {step}: update '{update}'"
            + (f" (repeat {repeat + 1} of {repeats})" if repeats > 1 else "")
            + f" went non-finite (loss {loss}; {grads}); {found}. {skipped}: parameters and "
            "optimizer state are unchanged. Lower the learning rate, clip gradients "
            "(clip_grad_norm), or check the data; the last checkpoint is intact"
        )

    def _batch_at(self, plan: UpdatePlan, drawn: tuple[tuple[int, int], ...]) -> dict:
        return {data_node: self.loaders[data_node].batch_at(*at)
                for data_node, at in zip(plan.data_nodes, drawn, strict=True)}

    def _first_nonfinite_parameter(self, update: str) -> str | None:
        """'parameter 'node.name' ...' for the first parameter of ``update`` that holds a
        non-finite value, else the first whose gradient is non-finite; None when neither."""
        named: list[tuple[str, torch.nn.Parameter]] = []
        for group in self.optimizers[update].param_groups:
            node = group.get("node", "?")
            names = {id(p): n for n, p in self.instances.modules[node].named_parameters()} \
                if node in self.instances.modules else {}
            named += [(f"{node}.{names.get(id(p), '?')}", p) for p in group["params"]]
        for label, p in named:
            if not bool(torch.isfinite(p.detach()).all()):
                return f"parameter '{label}' holds non-finite values"
        for label, p in named:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                return f"first non-finite gradient: parameter '{label}'"
        return None

    def _first_nonfinite(self, plan: UpdatePlan, batch: dict) -> tuple[str, str] | None:
        found: list[tuple[str, str]] = []

        class _Stop(Exception):
            pass

        def check(node: str, outputs: dict[str, torch.Tensor]) -> None:
            for port, value in outputs.items():
                if torch.is_tensor(value) and value.is_floating_point() and \
                        not torch.isfinite(value).all():
                    found.append((node, port))
                    raise _Stop

        for data_node, tensors in batch.items():
            for port, value in tensors.items():
                if value.is_floating_point() and not torch.isfinite(value).all():
                    return (data_node, port)
        try:
            # Under the step's autocast too: an fp16 overflow shows only there.
            with torch.no_grad(), self.amp():
                self.program.run_nodes(self.instances, batch, plan.nodes, check=check)
        except _Stop:
            pass
        return found[0] if found else None

    # -- checkpoints -------------------------------------------------------------------------
    def _saved_modules(self) -> dict[str, torch.nn.Module]:
        changing = {d for s in self.stages for d in s.copy} | {n for s in self.stages
                                                               for n in s.reinit}
        return {name: module for name, module in self.instances.unique_modules().items()
                if not self.graph.nodes[name].frozen or name in changing
                or self.graph.nodes[name].kind == "target"}

    def state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "dgraph_version": __version__,
            "spec_name": self.spec.display_name,
            "step": self.step,
            "modules": {n: m.state_dict() for n, m in self._saved_modules().items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: _scheduler_state(s) for n, s in self.schedulers.items() if s},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "loaders": {n: loader.state_dict() for n, loader in self.loaders.items()},
            "rng": capture_rng(),
        }

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        if state.get("spec_name") != self.spec.display_name:
            raise CheckpointError(
                f"checkpoint {path} belongs to spec '{state.get('spec_name')}', not "
                f"'{self.spec.display_name}'; resume with the spec that wrote it"
            )
        self.step = int(state["step"])
        stage = self._stage_at(self.step)
        if stage.start > 0 and self.step >= stage.start:
            for update in stage.updates:
                self._build_optimizer(update, stage.end - stage.start)
        modules = self._saved_modules()
        try:
            for name, module_state in state["modules"].items():
                modules[name].load_state_dict(module_state)
            for name, opt_state in state["optimizers"].items():
                if name in self.optimizers:
                    self.optimizers[name].load_state_dict(opt_state)
            for name, sched_state in state["schedulers"].items():
                self.schedulers[name].load_state_dict(sched_state)
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            for name, loader_state in state["loaders"].items():
                self.loaders[name].load_state_dict(loader_state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {path} does not match this spec's graph ({type(exc).__name__}: "
                f"{exc}); was the spec changed since it was written?"
            ) from None
        restore_rng(state["rng"])

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 only); returns its path."""
        if self.rank != 0:
            return None
        return save_checkpoint(self.run_dir / "checkpoints", self.step, self.state(),
                               self.train_cfg.keep_checkpoints)

    def save_final(self) -> None:
        if self.rank != 0:
            return
        final = self.run_dir / "final"
        trained = set(self.graph.trained_by())
        for name, module in self.instances.unique_modules().items():
            node = self.graph.nodes[name]
            if name in trained or node.kind in ("student", "tensor", "target"):
                metadata = {"node": name, "type": node.spec.type, "kind": node.kind,
                            "spec": self.spec.display_name, "dgraph_version": __version__,
                            "params": json.dumps(node.spec.params, sort_keys=True)}
                if self.spec.path is not None:  # `dgraph export` resolves paths against it
                    metadata["spec_dir"] = str(self.spec.path.parent.resolve())
                save_weights(final / f"{name}.safetensors", module.state_dict(), metadata)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, *, resume: bool = False, command: str | None = None) -> dict[str, float]:
        """Train to the last step, evaluate, write the final weights and ``summary.json``.

        On SIGINT/SIGTERM the current step completes, a checkpoint is written, the logs are
        closed and :class:`TrainingInterrupted` is raised; ``command`` (the shell command that
        resumes this run) goes into its message. ``summary.json`` is strict JSON: a non-finite
        metric is written as null, with a warning naming it (the returned dict keeps it).
        """
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
        import time

        tick = time.perf_counter()
        try:
            self._write_graph_pictures(logger)
            stop.install()
            while self.step < self.total_steps:
                stage = self._stage_at(self.step)
                if self.step == stage.start:
                    self._begin_stage(stage)
                shared: dict[str, dict[str, torch.Tensor]] = {}
                terms: dict[str, dict[str, torch.Tensor]] = {}
                for update in stage.updates:
                    if (self.step - stage.start) % self.spec.updates[update].every == 0:
                        terms[update] = self._run_update(update, stage, self.step, shared)
                samples += sum(next(iter(b.values())).shape[0] for b in shared.values())
                self.step += 1
                if self._logs_after(self.step - 1):
                    now = time.perf_counter()
                    values = self._log_values(terms, stage)
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
        if nonfinite:
            self.say("warning: non-finite evaluation metrics, written as null in "
                     f"{self.run_dir / 'summary.json'}: "
                     + ", ".join(f"{k} = {summary[k]}" for k in nonfinite)
                     + "; check the evaluation split for NaN/inf values and the model's outputs")
        atomic_write_text(self.run_dir / "summary.json",
                          json.dumps(clean, indent=2, sort_keys=True, allow_nan=False) + "\n",
                          what="summary")

    def _logs_after(self, step: int) -> bool:
        """Whether the (0-based) step ``step`` ends with a logged record."""
        done = step + 1
        return done % self.train_cfg.log_every == 0 or done == self.total_steps

    def _log_values(self, terms: dict[str, dict[str, torch.Tensor]],
                    stage: _Stage) -> dict[str, float]:
        self._check_finite()  # nothing is logged from steps that went non-finite
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
        return values

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.program, self.instances, self.graph, self.device,
                        self.train_cfg.eval.batch_size, self.amp)

    def _write_graph_pictures(self, logger: RunLogger) -> None:
        if self.rank != 0:
            return
        try:
            from dgraph.viz import render
        except ImportError:  # pragma: no cover - viz is part of the package
            return
        from dgraph.viz.raster import to_image

        try:
            render(self.graph, str(self.run_dir / "graph.svg"))
            logger.image("graph", to_image(self.graph))
            mermaid = render(self.graph, str(self.run_dir / "graph.mmd"))
        except OSError as exc:
            raise RunDirError(f"cannot write {exc.filename or self.run_dir / 'graph.svg'} "
                              f"({os_reason(exc)}); choose a writable --out") from None
        logger.text("graph", "```mermaid\n" + str(mermaid) + "\n```\n\nSee graph.svg in the "
                    "run directory for the drawing.")


def _scheduler_state(scheduler) -> dict[str, Any]:
    # LambdaLR stores its multiplier objects' attributes; they are rebuilt from the spec, and
    # leaving them out keeps the checkpoint loadable with weights_only=True.
    state = scheduler.state_dict()
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    return state


def _finite(value: torch.Tensor) -> bool:
    """Whether every element of a loss is finite (one host read; cheap on CPU)."""
    value = value.detach()
    return math.isfinite(value.item()) if value.numel() == 1 else \
        bool(torch.isfinite(value).all())


def _grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The total 2-norm of the parameters' gradients (what clip_grad_norm_ reports)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _prepare_run_dir(run_dir: Path, spec: Spec, *, resume: bool, overwrite: bool,
                     say=print) -> RunLock:
    """Claim ``run_dir`` for this job and return its lock, held (see dgraph.runtime.rundir):
    a new folder gets the marker; ``overwrite`` deletes only a previous run's own paths, in
    a folder dgraph created; ``resume`` checks the spec is the one the run started with."""
    return open_run_dir(run_dir, spec_name=spec.display_name, spec_text=read_spec_text(spec.raw),
                        resume=resume, overwrite=overwrite, say=say)


def _resume_command(spec_ref: str | Path | Spec, spec: Spec, run_dir: Path,
                    overrides: Iterable[str]) -> str:
    """The shell command that continues this run."""
    if isinstance(spec_ref, Spec):
        spec_ref = spec.path if spec.path is not None else "SPEC"
    words = ["dgraph", "train", str(spec_ref), "--out", str(run_dir)]
    for item in overrides:
        words += ["--set", item]
    return shlex.join([*words, "--resume"])


def train(spec_ref: str | Path | Spec, *, overrides: Iterable[str] = (), out: str | Path | None
          = None, resume: bool = False, overwrite: bool = False, progress: bool = True,
          log=None) -> dict[str, float]:
    """Validate, compile and run a spec; returns the final evaluation metrics.

    The run directory (``out``, else the spec's ``train.out`` or ``runs/<name>``) is locked
    for the whole job. SIGINT/SIGTERM end it with a checkpoint and TrainingInterrupted.
    """
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    overrides = list(overrides)
    spec = spec_ref if isinstance(spec_ref, Spec) else load_spec(spec_ref, overrides)
    graph, warnings = validate(spec)
    for warning in warnings:
        say(warning.render())
    run_dir = Path(out) if out is not None else default_run_dir(spec)
    # Only rank 0 claims and locks the folder; the other ranks of the job share its lock.
    lock = _prepare_run_dir(run_dir, spec, resume=resume, overwrite=overwrite, say=say) \
        if _rank() == 0 else nullcontext()
    with lock:
        trainer = Trainer(graph, run_dir, progress=progress, log=say)
        return trainer.run(resume=resume,
                           command=_resume_command(spec_ref, spec, run_dir, overrides))
