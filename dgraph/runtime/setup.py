"""Setting a run up, once, from a validated graph: device, seeding, stages, modules and their
initial weights, the compiled steps, data loaders, teacher caches, optimizers and schedulers.

:class:`RunSetup` is what a run is made of; the step (:mod:`dgraph.runtime.step`), the
checkpoints (:mod:`dgraph.runtime.state`) and the loop (:mod:`dgraph.runtime.train`) work on
it. A node that starts from another run (``init: {run: ...}``) only has its weights loaded
here; a missing run is a located error (:func:`dgraph.api.train` trains a missing zoo run
before the run is set up).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgraph.compiler.codegen import Program, compile_graph
from dgraph.compiler.compile_mode import CompileChoice, choose_compile
from dgraph.compiler.instantiate import Instances, build_context, instantiate
from dgraph.compiler.schedules import build_optimizer, build_scheduler, param_groups
from dgraph.declare import Generates, LogsScalars, StepAware
from dgraph.errors import CheckpointError, DgraphError
from dgraph.graph import Graph
from dgraph.graph.checks import fsdp_nodes
from dgraph.kinds import KINDS
from dgraph.runtime.checkpoint import load_weights, save_weights
from dgraph.runtime.data import BatchLoader
from dgraph.runtime.distributed import (
    World,
    full_state,
    gather_rows,
    init_world,
    load_full_state,
    rank_seed,
    shard_modules,
    share,
    sum_across,
)
from dgraph.spec import Spec, zoo_names
from dgraph.spec.model import InitSpec

__all__ = [
    "RunSetup",
    "Stage",
    "amp_context",
    "find_run_weights",
    "missing_runs",
    "plan_stages",
    "resolve_device",
    "run_candidates",
    "seed_everything",
]

AmpContext = Callable[[], AbstractContextManager[Any]]


def resolve_device(choice: str) -> torch.device:
    """``train.device``: ``auto`` is CUDA when available, else the CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DgraphError("train.device is 'cuda' but no CUDA device is available; "
                          "use --set train.device=cpu or auto")
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def amp_context(device: torch.device, precision: str) -> AmpContext:
    """A factory of the autocast context of ``train.precision`` (a null context for fp32)."""
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    device_type = device.type
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


# -- stages --------------------------------------------------------------------------------------
@dataclass
class Stage:
    """A phase of the run: steps ``[start, end)``, its updates and the role changes at its start."""

    name: str
    start: int
    end: int
    updates: list[str]
    copy: dict[str, str]
    reinit: list[str]
    weights: dict[str, Any]
    generate: list[str] = field(default_factory=list)


def plan_stages(spec: Spec) -> list[Stage]:
    """The stages with their step ranges (one stage, ``main``, when the spec has none)."""
    total = spec.train.steps
    if not spec.stages:
        return [Stage("main", 0, total, list(spec.updates), {}, [], {})]
    lengths = [s.steps for s in spec.stages]
    if sum(lengths) != total:
        # Stage lengths are proportions of train.steps, so `--set train.steps=N` scales all.
        scaled = [max(1, round(total * n / sum(lengths))) for n in lengths]
        lengths = scaled
    out, start = [], 0
    for stage, length in zip(spec.stages, lengths, strict=True):
        out.append(Stage(stage.name, start, start + length, list(stage.updates),
                         dict(stage.copy_weights), list(stage.reinit), dict(stage.weights),
                         list(stage.generate)))
        start += length
    return out


# -- initial weights -------------------------------------------------------------------------------
def run_candidates(run_ref: str, run_dir: Path) -> list[Path]:
    """Where the run an ``init.run`` names is looked for: as written, beside this run's
    directory, and under ``runs/``. The second is where a missing zoo run is trained."""
    return [Path(run_ref), run_dir.parent / run_ref, Path("runs") / run_ref]


def find_run_weights(run_ref: str, node: str, run_dir: Path) -> Path | None:
    """``final/<node>.safetensors`` of the first candidate run that holds it, else None."""
    for run in run_candidates(run_ref, run_dir):
        weights = run / "final" / f"{node}.safetensors"
        if weights.exists():
            return weights
    return None


def _starts_from_a_run(graph: Graph) -> dict[str, InitSpec]:
    """Node -> its ``init``, for the module nodes that start from another run's weights."""
    return {name: node.spec.init for name, node in graph.nodes.items()
            if node.spec.init is not None and node.spec.init.run is not None
            and not KINDS[node.kind].batches}


def missing_runs(graph: Graph, run_dir: Path) -> list[tuple[str, str, Path]]:
    """(node, run name, the folder beside ``run_dir`` it is looked for in) for every node whose
    ``init.run`` has no weights yet, and for every node that reads a run named by one of its
    parameters (those its component lists in ``runs_read``, e.g. ``expert_trajectories``'s
    ``run``) when no candidate folder of that run holds a finished run (``final/``)."""
    found = [(name, init.run, run_candidates(init.run, run_dir)[1])
             for name, init in _starts_from_a_run(graph).items()
             if init.run is not None and find_run_weights(init.run, init.node or name,
                                                          run_dir) is None]
    for name, node in graph.nodes.items():
        for param_name in getattr(node.component, "runs_read", ()):
            ref = getattr(node.component.params, param_name, None)
            if isinstance(ref, str) and not any((run / "final").is_dir()
                                                for run in run_candidates(ref, run_dir)):
                found.append((name, ref, run_candidates(ref, run_dir)[1]))
    return found


def init_weights_path(spec: Spec, name: str, init: InitSpec, run_dir: Path) -> Path:
    """The file node ``name`` starts from; a located CheckpointError when its run is missing."""
    if init.weights is not None:
        path = Path(init.weights)
        if not path.is_absolute() and spec.path is not None:
            local = spec.path.parent / path
            path = local if local.exists() else path
        return path
    run_ref = init.run or ""
    node = init.node or name
    found = find_run_weights(run_ref, node, run_dir)
    if found is not None:
        return found
    candidates = run_candidates(run_ref, run_dir)
    if run_ref in zoo_names():
        hint = (f"Train it with `dgraph train {run_ref} --out {candidates[1]}` (`dgraph train` "
                "and dgraph.api.train do so before the run starts), or point init.run at the "
                "run directory")
    else:
        hint = (f"Produce them with `dgraph train <spec> --out {candidates[1]}`, or point "
                "init.run at the run directory")
    raise CheckpointError(
        f"{spec.source.where(('nodes', name, 'init', 'run'))}: node '{name}': no trained "
        f"weights for node '{node}' in run '{run_ref}' (looked in "
        f"{', '.join(str(c / 'final') for c in candidates)}). {hint}"
    )


def load_initial_weights(graph: Graph, instances: Instances, run_dir: Path) -> None:
    """Load every module node's ``init`` weights (a file, or another run's final weights)."""
    for name, node in graph.nodes.items():
        init = node.spec.init
        if init is None or name not in instances.modules:
            continue
        path = init_weights_path(graph.spec, name, init, run_dir)
        state = load_weights(path)
        module = instances.modules[name]
        missing, unexpected = module.load_state_dict(state, strict=False)
        if init.strict and (missing or unexpected):
            raise CheckpointError(
                f"node '{name}': weights in {path} do not match its module "
                f"(missing: {list(missing)[:5]}, unexpected: {list(unexpected)[:5]}); "
                "check the node's params match the run that produced them, or set "
                "init.strict: false"
            )


# -- data ----------------------------------------------------------------------------------------
def ports_used(graph: Graph, data_nodes: list[str]) -> dict[str, set[str]]:
    """Per data node, the ports some node reads: only those are batched."""
    used: dict[str, set[str]] = {name: set() for name in data_nodes}
    for edge in graph.edges:
        if edge.src in used:
            used[edge.src].add(edge.src_port)
    for name, node in graph.nodes.items():
        if node.spec.cache is not None:
            # A cached node's outputs are looked up by example index.
            for ancestor in graph.ancestors(name):
                if ancestor in used:
                    used[ancestor].add("__index__")
    return used


def build_loaders(graph: Graph, instances: Instances, *, seed: int,
                  device: torch.device, world: World | None = None) -> dict[str, BatchLoader]:
    """A seeded loader per data node, over the ports that are read (and example indices).

    In data-parallel training each rank takes its slice of every global batch; a global batch
    that does not split evenly across the ranks is a located error (uneven slices would
    weight the ranks' examples unequally in the averaged gradient).
    """
    world = world or World()
    used = ports_used(graph, list(instances.data))
    for name, source in instances.data.items():
        if world.distributed and source.batch_size % world.size:
            node = graph.nodes[name]
            raise DgraphError(
                f"{graph.spec.source.where(('nodes', name, 'params', 'batch_size'))}: node "
                f"'{name}': batch_size {source.batch_size} is the global batch and must "
                f"split evenly across the {world.size} ranks of this job; use a multiple of "
                f"{world.size} (e.g. --set nodes.{name}.params.batch_size="
                f"{max(world.size, source.batch_size - source.batch_size % world.size)})"
                + ("" if node.spec.params.get("batch_size") is not None
                   else " (the value is the component's default)"))
    return {name: source_loader(source, used[name], seed=seed, device=device, world=world)
            for name, source in instances.data.items()}


def source_loader(source: Any, ports: set[str], *, seed: int, device: torch.device,
                  world: World) -> BatchLoader:
    """The seeded loader of one data source over ``ports`` (and example indices)."""
    return BatchLoader(
        {port: t for port, t in {**source.train, "__index__": torch.arange(len(source))}.items()
         if port in ports},
        source.batch_size, shuffle=source.shuffle, drop_last=source.drop_last,
        seed=seed, device=device, size=len(source), shard=(world.rank, world.size),
        sampler=source.sampler,
    )


def set_train_modes(graph: Graph, instances: Instances) -> None:
    """Trainable modules in training mode, frozen ones in eval mode (shared ones as owned)."""
    for name, module in instances.modules.items():
        if graph.nodes[name].spec.shares is not None:
            continue
        module.train(not graph.nodes[name].frozen)


# -- the run -------------------------------------------------------------------------------------
class RunSetup:
    """Everything a run is made of, built once from a validated graph.

    The order is fixed (it decides what the seeded generators draw): seed, build the modules,
    load initial weights, compile and bind the steps, plan the stages, make the loaders and
    the optimizers, fill the teacher caches, set train/eval modes.
    """

    def __init__(self, graph: Graph, run_dir: Path, *, world: World | None = None) -> None:
        self.graph = graph
        self.spec = graph.spec
        self.run_dir = run_dir
        self.train_cfg = self.spec.train
        self.device = resolve_device(self.train_cfg.device)
        # The data-parallel job this process belongs to (torchrun's), unless given one.
        self.world: World = world if world is not None else init_world(self.device)
        self.rank = self.world.rank
        if self.world.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        # Every rank draws the same initial weights from the same seed.
        seed_everything(self.train_cfg.seed)
        self.instances: Instances = instantiate(graph, device=self.device,
                                                seed=self.train_cfg.seed, run_dir=run_dir)
        load_initial_weights(graph, self.instances, run_dir)
        # strategy: fsdp shards the trained modules across the ranks (before the optimizers
        # are made: they hold the sharded parameters).
        self.sharded: list[str] = fsdp_nodes(graph) if self.world.distributed else []
        if self.sharded:
            config = self.train_cfg.distributed
            shard_modules({n: self.instances.modules[n] for n in self.sharded}, self.world,
                          self.device, param_dtype=config.param_dtype,
                          reduce_dtype=config.reduce_dtype)
        self.program: Program = compile_graph(graph)
        # train.compile resolved for this device and graph ("auto": CUDA graphs where valid).
        self.compile_choice: CompileChoice = choose_compile(
            self.device, graph, plans=self.program.plans, data=self.instances.data,
            world_size=self.world.size)
        self.program.bind(self.instances, compile_steps=self.compile_choice.mode)
        self.stages = plan_stages(self.spec)
        self.total_steps = self.stages[-1].end
        self.loaders = build_loaders(graph, self.instances, seed=self.train_cfg.seed,
                                     device=self.device, world=self.world)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.trainable_params: dict[str, list[torch.nn.Parameter]] = {}
        for stage in self.stages:
            for update in stage.updates:
                if update not in self.optimizers:
                    self.build_optimizer(update, stage.end - stage.start)
        self.amp: AmpContext = amp_context(self.device, self.train_cfg.precision)
        self._fill_caches()
        set_train_modes(graph, self.instances)
        # Nodes with scheduled parameters learn the step before each one (StepAware).
        self.step_aware = [m for m in self.instances.unique_modules().values()
                           if isinstance(m, StepAware)]
        # Nodes with values of their own to log at logging steps (LogsScalars).
        self.scalar_loggers = [m for m in self.instances.unique_modules().values()
                               if isinstance(m, LogsScalars)]
        # Nodes re-drawn every N steps, found once rather than on every step.
        self.redrawn = [(name, node.spec.reinit_every) for name, node in graph.nodes.items()
                        if node.spec.reinit_every is not None]
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.train_cfg.precision == "fp16" else None)
        if self.world.distributed:
            # In-step random draws (noise, augmentation) from a stream of this rank's own.
            torch.manual_seed(rank_seed(self.train_cfg.seed, self.rank))

    def build_optimizer(self, name: str, steps: int) -> None:
        """(Re)build update ``name``'s optimizer and scheduler for a stage of ``steps`` steps."""
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

    def _fill_caches(self) -> None:
        """Run cached frozen nodes once over their whole dataset, in example order.

        In a job of several ranks each rank runs the node on its own contiguous share of the
        examples (in the same number of calls on every rank: a node sharded by FSDP runs only
        when all do) and the shares are all-gathered, so every rank holds the whole cache (its
        slice of a batch may index any example); rank 0 alone writes a disk cache. Whether an
        earlier disk cache is read is decided by all ranks together.
        """
        world = self.world
        cached = [n for n, node in self.graph.nodes.items() if node.spec.cache is not None]
        for name in cached:
            node = self.graph.nodes[name]
            cache_spec = node.spec.cache
            assert cache_spec is not None
            source = next(a for a in self.graph.ancestors(name)
                          if KINDS[self.graph.nodes[a].kind].batches)
            tensors = self.loaders[source].tensors
            size = next(iter(tensors.values())).shape[0]
            disk = None
            if cache_spec.where == "disk":
                # Written only inside this run's folder; an earlier run's cache is read from
                # where the spec points (relative paths: the spec's folder).
                disk = self.run_dir / "cache" / f"{name}.safetensors"
                earlier = disk
                if cache_spec.path is not None:
                    folder = Path(cache_spec.path).expanduser()
                    if not folder.is_absolute() and self.spec.path is not None:
                        folder = self.spec.path.parent / folder
                    earlier = folder / f"{name}.safetensors"
                if not earlier.is_file():
                    earlier = disk
                stored = load_weights(earlier) if earlier.is_file() else None
                usable = stored is not None and all(t.shape[0] == size
                                                    for t in stored.values())
                if world.distributed:
                    usable = int(sum_across(torch.tensor(int(usable), device=self.device),
                                            world)) == world.size
                if usable and stored is not None:
                    self.program.caches.setdefault(name, {}).update(
                        {k: v.to(self.device) for k, v in stored.items()})
                    continue
            split = world.distributed and size >= world.size
            if split:
                start, end = share(size, world)
                longest = -(-size // world.size)
                calls = -(-longest // 1024)  # as many calls as the longest share needs
                edges = [start + (end - start) * i // calls for i in range(calls + 1)]
                ranges = list(zip(edges[:-1], edges[1:], strict=True))
            else:
                ranges = [(s, min(s + 1024, size)) for s in range(0, size, 1024)]
            chunks: dict[str, list[torch.Tensor]] = {}
            upstream = self.graph.ancestors(name) | {name}
            nodes = [n for n in self.program.order if n in upstream]
            with torch.no_grad(), self.amp():
                for lo, hi in ranges:
                    batch = {source: {k: v[lo:hi] for k, v in tensors.items()}}
                    values = self.program.run_nodes(self.instances, batch, nodes)
                    for port in node.outputs:
                        if (name, port) in values:
                            chunks.setdefault(port, []).append(values[(name, port)])
            cache = {port: torch.cat(parts) for port, parts in chunks.items()}
            if split:
                cache = {port: gather_rows(part, world) for port, part in cache.items()}
            self.program.caches.setdefault(name, {}).update(cache)
            if disk is not None and self.rank == 0:
                save_weights(disk, cache, {"node": name})

    # -- stages ------------------------------------------------------------------------------
    def stage_at(self, step: int) -> Stage:
        for stage in self.stages:
            if stage.start <= step < stage.end:
                return stage
        return self.stages[-1]

    def begin_stage(self, stage: Stage) -> None:
        """The role changes at a stage's start: copies, re-initialisations, fresh optimizers."""
        for dst, src in stage.copy.items():
            source = self.instances.modules[src]
            state = full_state(source) if src in self.sharded else source.state_dict()
            load_full_state(self.instances.modules[dst], state)
        self.run_generators(stage)
        for name in stage.reinit:
            context = build_context(self.graph, name, device=str(self.device),
                                    seed=self.train_cfg.seed + stage.start,
                                    run_dir=self.run_dir,
                                    modules={**self.instances.data, **self.instances.modules})
            fresh = self.graph.nodes[name].component.build(context)
            load_full_state(self.instances.modules[name], fresh.to(self.device).state_dict())
        if stage.start > 0:
            # A new stage starts its optimizers afresh (the roles of nodes may have changed).
            for update in stage.updates:
                self.build_optimizer(update, stage.end - stage.start)

    # -- generated datasets (dgraph.declare.Generates) -----------------------------------------
    def generated_path(self, node: str, stage: Stage) -> Path:
        """Where generator ``node`` writes its dataset of ``stage``."""
        return self.run_dir / "generated" / node / f"{stage.name}.jsonl"

    def run_generators(self, stage: Stage) -> None:
        """Run the stage's generators (rank 0; a file already there is read, not remade;
        the other ranks wait and read it), then rebuild the data nodes that name them.

        Generation runs with torch's generators forked and seeded by ``train.seed`` plus the
        stage's first step, so a run resumed before or after it draws the same data and the
        same training batches afterwards.
        """
        for name in stage.generate:
            module = self.instances.modules[name]
            if not isinstance(module, Generates):
                raise DgraphError(f"stage '{stage.name}' generate names node '{name}', "
                                  "which does not generate a dataset")
            uses = set(self.graph.nodes[name].component.references().values())
            if uses & set(self.sharded):
                raise DgraphError(
                    f"node '{name}' generates with a node sharded by FSDP "
                    f"({', '.join(sorted(uses & set(self.sharded)))}); generation runs on "
                    "rank 0 alone: use strategy ddp, or keep that node unsharded")
            path = self.generated_path(name, stage)
            if self.rank == 0 and not path.is_file():
                devices = [self.device.index or 0] if self.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    seed_everything(self.train_cfg.seed + stage.start)
                    module.generate(path=path, seed=self.train_cfg.seed + stage.start)
            self.world.barrier()
            if not path.is_file():
                raise DgraphError(f"generator '{name}' wrote no dataset {path} in stage "
                                  f"'{stage.name}'")
            module.latest = path
        if stage.generate:
            self.refresh_generated(stage.generate, seed=self.train_cfg.seed + stage.start)

    def restore_generated(self, step: int) -> None:
        """On resume at ``step``: point each generator at the dataset of the last stage begun
        before ``step`` that lists it (the files must exist), and rebuild its data nodes."""
        latest: dict[str, tuple[Path, int]] = {}
        for stage in self.stages:
            if stage.start >= step:
                break
            for name in stage.generate:
                latest[name] = (self.generated_path(name, stage), stage.start)
        for name, (path, start) in latest.items():
            if not path.is_file():
                raise CheckpointError(
                    f"resuming at step {step}: the dataset {path} of generator '{name}' is "
                    "missing; it is part of the run (delete the checkpoints to start over)")
            generator: Any = self.instances.modules[name]
            generator.latest = path
            self.refresh_generated([name], seed=self.train_cfg.seed + start)

    def refresh_generated(self, generators: list[str], *, seed: int) -> None:
        """Rebuild the data nodes whose parameters name one of ``generators``, and their
        loaders (seeded with ``seed``; a checkpoint's position is loaded over it)."""
        modules: dict[str, Any] = {**self.instances.data, **self.instances.modules}
        for name, node in self.graph.nodes.items():
            if name not in self.instances.data or not (
                    set(node.component.references().values()) & set(generators)):
                continue
            context = build_context(self.graph, name, device=str(self.device), seed=seed,
                                    run_dir=self.run_dir, modules=modules)
            source = node.component.build(context)
            self.instances.data[name] = source
            self.loaders[name] = source_loader(
                source, ports_used(self.graph, [name])[name], seed=seed, device=self.device,
                world=self.world)

    def redraw(self, step: int) -> None:
        """Re-draw the weights of nodes with ``reinit_every`` whose period divides ``step``.

        Called by the loop at the start of a training step (never before evaluation). The
        node's component is built afresh, drawing from torch's global generator as when the
        run was set up (seeded, and saved in checkpoints, so a resumed run draws the same
        weights), and its values are copied into the existing parameters and buffers, which
        the optimizers keep referring to.
        """
        for name, every in self.redrawn:
            if step % every:
                continue
            node = self.graph.nodes[name]
            context = build_context(self.graph, name, device=str(self.device),
                                    seed=self.train_cfg.seed, run_dir=self.run_dir,
                                    modules=self.instances.modules)
            fresh = node.component.build(context)
            with torch.no_grad():
                load_full_state(self.instances.modules[name], fresh.state_dict())

    def logs_after(self, step: int) -> bool:
        """Whether the (0-based) step ``step`` ends with a logged record."""
        done = step + 1
        return done % self.train_cfg.log_every == 0 or done == self.total_steps
