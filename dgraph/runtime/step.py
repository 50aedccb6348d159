"""The step: one update of a training step, with its checks.

:meth:`StepRunner.run_update` draws the update's batches, runs its generated step (over
micro-batches and repeats), back-propagates, checks losses and gradients for NaN/inf, clips,
steps the optimizer and lets target nodes follow. A step that raises is re-run one node at a
time to name the failing node; a non-finite step is never applied and is reported with the
first non-finite parameter and node output (see :meth:`StepRunner.check_finite`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from dgraph.compiler.codegen import UpdatePlan
from dgraph.compiler.schedules import value_at
from dgraph.declare import Projected
from dgraph.errors import ComponentRuntimeError, DgraphError, NonFiniteError
from dgraph.runtime.distributed import average_gradients, local, sum_across, whole
from dgraph.runtime.setup import RunSetup, Stage
from dgraph.spec import ScheduleSpec

__all__ = ["StepRunner"]

# What a step drew: (epoch, position) per data node of the update, per micro-batch.
Draws = list[tuple[tuple[int, int], ...]]


class StepRunner:
    """Runs the updates of a set-up run, one at a time, and holds the non-finite check's state."""

    def __init__(self, setup: RunSetup) -> None:
        self.setup = setup
        device = setup.device
        self._constant_weights: dict[tuple[str, str], dict[str, float]] = {}
        self._followers = self._targets_following()
        # Per update, the trained modules with ``project()`` (dgraph.declare.Projected).
        self._projected: dict[str, list[Any]] = {
            update: [module for name in plan.trained
                     if isinstance(module := setup.instances.modules.get(name), Projected)]
            for update, plan in setup.program.plans.items()}
        # The non-finite check (see check_finite): a sticky on-device flag, the number of
        # optimizer steps it made skip since it was last read, and what those steps drew.
        self._found_inf = torch.zeros((), device=device)
        self._skipped = torch.zeros((), device=device)
        self._one = torch.ones((), device=device)
        self._unread: list[tuple[int, str, int, Draws]] = []
        self._shared_drawn: dict[str, tuple[int, int]] = {}
        # On CUDA the flag is read only at logging/checkpoint/eval steps where the optimizer
        # can skip a step on the device (fused optimizers); elsewhere it is read every step
        # (on CPU a read costs less than a fused optimizer's own handling of the flag).
        self.defer_finite_checks = device.type == "cuda"
        # Per update, whether its step is the plain one (see _simple): decided on first use;
        # per (update, stage), the plain step's function and the optimizer it was made for.
        self._plain: dict[str, bool] = {}
        self._plain_steps: dict[tuple[str, str], tuple[Any, Callable[[int, dict], dict]]] = {}

    def _weights(self, plan: UpdatePlan, stage: Stage, step: int) -> dict[str, float]:
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
                cache[data_node] = self.setup.loaders[data_node].next()
            batch[data_node] = cache[data_node]
        return batch

    def run_update(self, name: str, stage: Stage, step: int,
                   shared: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Run update ``name`` at (0-based) ``step``; its loss terms, total and grad norm.

        ``shared`` holds the batches drawn so far in this step: updates of one step read
        the same examples of a data node.
        """
        # The plain step (see _simple): a function made once per update and stage, and again
        # when the update's optimizer is replaced, that holds everything it uses.
        key = (name, stage.name)
        made = self._plain_steps.get(key)
        if made is None or made[0] is not self.setup.optimizers[name]:
            plain = self._plain.get(name)
            if plain is None:
                plain = self._plain[name] = self._simple(name)
            made = None
            if plain:
                made = self._plain_steps[key] = (self.setup.optimizers[name],
                                                 self._make_plain(name, stage))
        if made is not None:
            return made[1](step, shared)
        setup = self.setup
        plan = setup.program.plans[name]
        spec = plan.spec
        optimizer = setup.optimizers[name]
        params = setup.trainable_params[name]
        scaler = setup.scaler
        step_fn = plan.step
        assert step_fn is not None  # bound at set-up
        weights = self._weights(plan, stage, step)
        terms: dict[str, torch.Tensor] = {}
        # Token-level losses under accumulation: back-propagate their sums, then divide the
        # gradients by the token count of all micro-batches, so splitting a batch into
        # micro-batches changes nothing.
        # Data-parallel ranks hold different token counts: when every loss is token-level, the
        # same division by the global count makes the update that of one process.
        by_count = bool(plan.token_losses) and (spec.accumulate > 1 or (
            setup.world.distributed and set(plan.token_losses) == set(plan.losses)))
        # With loss scaling (fp16) non-finite gradients are the scaler's to skip; otherwise a
        # step skips on the device only where the optimizer supports it (see check_finite).
        deferred = scaler is None and self.defer_finite_checks and \
            getattr(optimizer, "_step_supports_amp_scaling", False)
        for repeat in range(spec.repeat):
            sum_total: torch.Tensor | None = None
            count_total: torch.Tensor | None = None
            totals: list[torch.Tensor] = []
            # Where each micro-batch came from: (epoch, position) per data node, so that a
            # failed step can be re-run on the same examples without keeping them.
            draws: Draws = []
            for micro in range(spec.accumulate):
                if spec.accumulate > 1:
                    # FSDP reduces the gradients once, in the last micro-batch's backward.
                    for module in self._sharded_of(name):
                        # an FSDPModule (fully_shard changed its class)
                        module.set_requires_gradient_sync(  # type: ignore[operator]
                            micro == spec.accumulate - 1)
                cache = shared if repeat == 0 and micro == 0 else {}
                reused = tuple(cache) if cache else ()
                batch = self._draw(plan, cache)
                drawn = tuple(self._shared_drawn[d] if d in reused else setup.loaders[d].drawn
                              for d in plan.data_nodes)
                if cache is shared:
                    self._shared_drawn.update(zip(plan.data_nodes, drawn, strict=True))
                draws.append(drawn)
                try:
                    with setup.amp():
                        result = step_fn(batch, weights)
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
                if scaler is not None:
                    scaled = scaler.scale(scaled)
                try:
                    scaled.backward(inputs=params if plan.bystanders else None)
                except DgraphError:
                    raise
                except Exception as exc:
                    raise self._backward_failure(plan, step, exc, losses) from exc
            # Data-parallel: the update every rank applies is that of the global batch. Token
            # losses divide by the token count of the global batch, the others average.
            average_gradients(params, setup.world, mean=not by_count)
            if by_count:
                assert sum_total is not None and count_total is not None
                sum_total = sum_across(sum_total, setup.world)
                count_total = sum_across(count_total, setup.world).clamp_min(1)
                grads = [p.grad for p in params if p.grad is not None]
                if grads:
                    torch._foreach_div_(grads, count_total)
                total = sum_total / count_total
            # One fused pass over the gradients and losses sets the sticky flag when any is
            # NaN/inf (multiplying by 1 changes no value); no host sync. With loss scaling the
            # GradScaler checks the gradients itself (it expects some to overflow). The losses
            # go last: on CUDA the first tensor's dtype decides which ones share one launch.
            checked = []
            if scaler is not None:
                scaler.unscale_(optimizer)
            else:
                checked = [local(p.grad) for p in params if p.grad is not None]
            checked += [t.detach() for t in totals]
            torch._amp_foreach_non_finite_check_and_unscale_(checked, self._found_inf,
                                                             self._one)
            if setup.sharded:  # each rank saw only its shard of the gradients
                torch.distributed.all_reduce(self._found_inf, op=torch.distributed.ReduceOp.MAX)
            record: tuple[int, str, int, Draws] = (step, name, repeat, draws)
            # The lambda is called within this iteration (by _flag_non_finite), never later.
            self._flag_non_finite(lambda: record, totals, deferred=deferred)  # noqa: B023
            if spec.clip_grad_norm is not None:
                terms["grad_norm"] = whole(torch.nn.utils.clip_grad_norm_(
                    params, spec.clip_grad_norm))  # the norm over all shards when sharded
            elif setup.logs_after(step):
                # Gradients are cleared below, so the norm is taken now, on logging steps only.
                terms["grad_norm"] = _grad_norm(params)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                self._optimizer_step(optimizer, deferred)
            _clear_grads(params)
            self._after_update(name)
        scheduler = setup.schedulers.get(name)
        if scheduler is not None:
            scheduler.step()
        if deferred and self.reads_after(step):
            self.check_finite()
        terms["total"] = total
        for loss, value in zip(plan.losses, losses, strict=True):
            terms[loss] = value
        return terms

    def _simple(self, name: str) -> bool:
        """Whether update ``name`` is one forward, one backward and one optimizer step every
        time (no repeats, micro-batches, loss scaling, data parallelism, sharding or mixed
        precision): the case :meth:`_make_plain`'s function runs with nothing decided per
        step."""
        setup = self.setup
        spec = setup.program.plans[name].spec
        return (spec.repeat == 1 and spec.accumulate == 1 and setup.scaler is None
                and not setup.world.distributed and not setup.sharded
                and setup.train_cfg.precision == "fp32")

    def _make_plain(self, name: str, stage: Stage) -> Callable[[int, dict], dict]:
        setup = self.setup
        plan = setup.program.plans[name]
        optimizer = setup.optimizers[name]
        params = setup.trainable_params[name]
        step_fn = plan.step
        assert step_fn is not None  # bound at set-up
        data = [(data_node, setup.loaders[data_node]) for data_node in plan.data_nodes]
        shared_drawn = self._shared_drawn
        inputs = params if plan.bystanders else None
        found_inf, one = self._found_inf, self._one
        clip = plan.spec.clip_grad_norm
        log_every, last = setup.train_cfg.log_every, setup.total_steps
        follow = bool(self._followers[name] or self._projected[name])
        losses_of = plan.losses
        check = torch._amp_foreach_non_finite_check_and_unscale_
        weights_at = self._weights
        # Made again with the optimizer (see run_update), and its scheduler is made with it.
        scheduler = setup.schedulers.get(name)
        weights_at(plan, stage, stage.start)
        # Fixed weights are computed once (see _weights): then used as they are.
        fixed = self._constant_weights.get((name, stage.name))
        # Decided here, not per step: the function is made again with a new optimizer.
        deferred = self.defer_finite_checks and \
            getattr(optimizer, "_step_supports_amp_scaling", False)

        def run(step: int, shared: dict[str, dict[str, torch.Tensor]]) -> dict:
            # Updates of one step read the same examples of a data node: the batches drawn
            # so far in this step are in ``shared``; the generated step reads them there.
            for data_node, loader in data:
                if data_node not in shared:
                    shared[data_node] = loader.next()
                    shared_drawn[data_node] = loader.drawn
            try:
                total, losses = step_fn(shared, fixed if fixed is not None else
                                        weights_at(plan, stage, step))[:2]
            except DgraphError:
                raise
            except Exception as exc:
                raise self._located_failure(plan, step, shared, exc) from exc
            try:
                total.backward(inputs=inputs)
            except DgraphError:
                raise
            except Exception as exc:
                raise self._backward_failure(plan, step, exc, losses) from exc
            # One fused pass over the loss and the gradients sets the sticky flag when any is
            # NaN/inf (multiplying by 1 changes no value); no host sync.
            checked = [p.grad for p in params if p.grad is not None]
            checked.append(total.detach())
            check(checked, found_inf, one)
            self._flag_non_finite(lambda: where(step), [total], deferred=deferred)
            if clip is not None:
                terms = {"grad_norm": torch.nn.utils.clip_grad_norm_(params, clip)}
            elif (step + 1) % log_every == 0 or step + 1 == last:  # setup.logs_after(step)
                # Gradients are cleared below, so the norm is taken now, on logging steps.
                terms = {"grad_norm": _grad_norm(params)}
            else:
                terms = {}
            self._optimizer_step(optimizer, deferred)
            _clear_grads(params)
            if follow:
                self._after_update(name)
            if scheduler is not None:
                scheduler.step()
            if deferred and self.reads_after(step):
                self.check_finite()
            terms["total"] = total
            for loss, value in zip(losses_of, losses, strict=True):
                terms[loss] = value
            return terms

        def where(step: int) -> tuple[int, str, int, Draws]:
            """The step's record for the non-finite check: what its one micro-batch drew."""
            return (step, name, 0, [tuple(shared_drawn[data_node] for data_node, _ in data)])

        return run

    def _flag_non_finite(self, where: Callable[[], tuple[int, str, int, Draws]],
                         totals: list[torch.Tensor], *, deferred: bool) -> None:
        """After the fused check of the losses and gradients: name the cause now when the
        flag is set (one host read), or (``deferred``, CUDA) at the next read. ``where()``:
        (step, update, repeat, draws) for the message, made only when it is needed."""
        if deferred:
            self._skipped.add_(self._found_inf)
            self._unread.append(where())
        elif self._found_inf.item():  # a sync on CUDA; a fraction of a microsecond on CPU
            self.check_finite(where(), totals)

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, deferred: bool) -> None:
        if deferred:
            # The fused kernels leave parameters and state alone (and take back the step
            # count) when found_inf is set: GradScaler's own mechanism.
            optimizer.grad_scale = None  # type: ignore[attr-defined]
            optimizer.found_inf = self._found_inf  # type: ignore[attr-defined]
        optimizer.step()

    def _after_update(self, update: str) -> None:
        """Let target nodes (EMA, periodic copies) follow the nodes this update trained."""
        for target, source in self._followers[update]:
            target.follow(source)
        if self._projected[update]:
            with torch.no_grad():
                for module in self._projected[update]:
                    module.project()

    def _targets_following(self) -> dict[str, list[tuple[Any, torch.nn.Module]]]:
        """Per update, the (target module, source module) pairs to move after it steps; a
        target module has ``follow(source)`` (the target protocol of its kind)."""
        out: dict[str, list[tuple[Any, torch.nn.Module]]] = {}
        for update, plan in self.setup.program.plans.items():
            trained = set(plan.trained)
            out[update] = [
                (self.setup.instances.modules[name], self.setup.instances.modules[source])
                for name, node in self.setup.graph.nodes.items()
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
            with self.setup.amp():
                values = self.setup.program.run_nodes(self.setup.instances, batch, plan.nodes)
        except ComponentRuntimeError as located:
            node = self.setup.graph.nodes.get(located.node or "")
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
                    node = self.setup.graph.nodes[loss]
                    return ComponentRuntimeError(
                        f"{node.location}: {where}: loss node '{loss}' ({node.kind} "
                        f"'{node.spec.type}') produced no output '{port}'; the component must "
                        "return every output port it declares", node=loss, port=port)
        compiled = " (train.compile is on: set it to false to rule torch.compile out)" \
            if self.setup.compile_choice.mode else ""
        return ComponentRuntimeError(
            f"{self.setup.spec.source.where(('updates', plan.name))}: {where}: the step raised "
            f"{type(exc).__name__}: {exc}; running its nodes one at a time on the same batch "
            f"did not fail, so no node can be named{compiled}")

    def _backward_failure(self, plan: UpdatePlan, step: int, exc: Exception,
                          losses: tuple) -> ComponentRuntimeError:
        for loss, value in zip(plan.losses, losses, strict=False):
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                node = self.setup.graph.nodes[loss]
                return ComponentRuntimeError(
                    f"{node.location}: step {step}: update '{plan.name}': loss node '{loss}' "
                    f"({node.kind} '{node.spec.type}') returned a 'loss' of shape "
                    f"{list(value.shape)}; a loss must be a single number (reduce it with a "
                    "mean or sum in the component)", node=loss, port="loss")
        path = [n for n in plan.nodes if n in plan.grad_nodes]
        return ComponentRuntimeError(
            f"{self.setup.spec.source.where(('updates', plan.name))}: "
            f"step {step}: update '{plan.name}': back-propagation through "
            f"{', '.join(repr(n) for n in path) or 'its nodes'} failed: "
            f"{type(exc).__name__}: {exc}. A component that changes a tensor in place after "
            "using it, or a custom autograd function, is the usual cause")

    def reads_after(self, step: int) -> bool:
        """Whether the non-finite flag is read after ``step``: before anything is logged,
        evaluated or saved, and at the end of a stage (its optimizers are then replaced)."""
        done = step + 1
        cfg = self.setup.train_cfg
        return (self.setup.logs_after(step) or done % cfg.checkpoint_every == 0
                or done % cfg.eval.every == 0 or done == self.setup.stage_at(step).end)

    def check_finite(self, current: tuple[int, str, int, Draws] | None = None,
                     totals: list[torch.Tensor] | None = None) -> None:
        """Read the non-finite flag; raise NonFiniteError for the first step it caught.

        Every optimizer step checks its losses and gradients on the device: one fused pass
        sets ``_found_inf`` when any of them is NaN or infinite. A flagged step must leave
        parameters and optimizer state untouched (an Adam step with zeroed gradients would
        still move the parameters and count a step), and the decision has to be made on the
        device or read on the host:

        - fused optimizers (``_step_supports_amp_scaling``; GradScaler relies on the same
          mechanism; ``build_optimizer`` makes Adam, AdamW and SGD fused) skip on the device
          when given ``found_inf``. On CUDA (where a read would stall the queue) they
          run ahead unsynchronised: the flag is sticky, so every step from the first bad one
          on is skipped, and it is read here after logging, checkpoint, evaluation and
          stage-end steps (``reads_after``), so before anything is logged, evaluated or
          saved (``Trainer.save`` calls this first, so the checkpoint a signal asks for at
          any other step never holds a skipped step). ``_unread`` records what each step
          drew, and ``_skipped`` counts the steps skipped, which locates the first bad one.
          Learning-rate schedules and EMA targets (which follow an unchanged source) still
          advance on those steps; the run stops at the read, before anything is logged or
          saved;
        - other optimizers (the foreach ones), and every optimizer on CPU (where the read is
          a fraction of a microsecond, less than a fused optimizer's own handling of the
          flag), have the flag read at once by ``run_update``, which calls this with the
          ``current`` step's record before the optimizer step.

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
        plan = self.setup.program.plans[update]
        optimizer = self.setup.optimizers[update]
        batches = [self._batch_at(plan, drawn) for drawn in draws]
        if totals is None:
            # The gradients are gone: redo the step (parameters are as they were then, as
            # every later step was skipped).
            optimizer.zero_grad(set_to_none=True)
            weights = self._weights(plan, self.setup.stage_at(step), step)
            totals = []
            params = self.setup.trainable_params[update]
            step_fn = plan.step
            assert step_fn is not None  # bound at set-up
            for batch in batches:
                with self.setup.amp():
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
                node = self.setup.graph.nodes[culprit[0]]
                found = (f"the first node whose output went non-finite is '{culprit[0]}' "
                         f"(port '{culprit[1]}', {node.kind} '{node.spec.type}'"
                         + (f", micro-batch {micro + 1} of {len(batches)}" if len(batches) > 1
                            else "") + ")")
                break
        if parameter is None:
            grads = "gradients finite" if self.setup.scaler is None else \
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
        return {data_node: self.setup.loaders[data_node].batch_at(*at)
                for data_node, at in zip(plan.data_nodes, drawn, strict=True)}

    def _sharded_of(self, update: str) -> list[torch.nn.Module]:
        """The FSDP-sharded modules that ``update`` trains."""
        setup = self.setup
        nodes = {e if isinstance(e, str) else e.node for e in setup.spec.updates[update].params}
        return [setup.instances.modules[n] for n in setup.sharded if n in nodes]

    def _first_nonfinite_parameter(self, update: str) -> str | None:
        """'parameter 'node.name' ...' for the first parameter of ``update`` that holds a
        non-finite value, else the first whose gradient is non-finite; None when neither."""
        named: list[tuple[str, torch.nn.Parameter]] = []
        for group in self.setup.optimizers[update].param_groups:
            node = group.get("node", "?")
            names = {id(p): n for n, p in self.setup.instances.modules[node].named_parameters()} \
                if node in self.setup.instances.modules else {}
            named += [(f"{node}.{names.get(id(p), '?')}", p) for p in group["params"]]
        for label, p in named:
            if not bool(torch.isfinite(local(p.detach())).all()):
                return f"parameter '{label}' holds non-finite values"
        for label, p in named:
            if p.grad is not None and not bool(torch.isfinite(local(p.grad)).all()):
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
            with torch.no_grad(), self.setup.amp():
                self.setup.program.run_nodes(self.setup.instances, batch, plan.nodes, check=check)
        except _Stop:
            pass
        return found[0] if found else None


def _clear_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """What ``optimizer.zero_grad(set_to_none=True)`` does to the parameters of an update,
    without its profiler record and dynamo guard: those cost 11 us a step on CPU, ten times
    the loop (BENCHMARKS.md), and a small model's step is under a millisecond."""
    for p in params:
        p.grad = None


def _grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The total 2-norm of the parameters' gradients (what clip_grad_norm_ reports)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    shards = [g.to_local() for g in grads if isinstance(g, DTensor)]
    if not shards:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    # FSDP: the squares of this rank's shards, added up over the ranks.
    squares = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(shards))) ** 2
    torch.distributed.all_reduce(squares)
    whole = [g for g in grads if not isinstance(g, DTensor)]
    if whole:
        squares = squares + torch.linalg.vector_norm(torch.stack(torch._foreach_norm(whole))) ** 2
    return squares.sqrt()
