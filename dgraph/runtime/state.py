"""What a run's checkpoint holds, and the final weights.

A checkpoint holds the step, the weights of every module that changes (trained, copied or
re-initialised between stages, or a target), optimizers, schedulers, the loss scaler, the
loaders' positions and every random generator, so a resumed run continues bit-identically on
CPU. The file format (atomic writes, safe reads) is :mod:`dgraph.runtime.checkpoint`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dgraph import __version__
from dgraph.errors import CheckpointError
from dgraph.graph.checks import fsdp_nodes
from dgraph.kinds import KINDS
from dgraph.runtime.checkpoint import (
    SHARDS_SUFFIX,
    capture_rng,
    restore_rng,
    save_checkpoint,
    save_weights,
)
from dgraph.runtime.distributed import (
    full_optimizer_state,
    full_state,
    load_full_optimizer_state,
    load_full_state,
    load_shards,
    rank_seed,
    save_shards,
)
from dgraph.runtime.setup import RunSetup

__all__ = ["gather_rngs", "load_run_state", "run_state", "save_final", "save_run_state",
           "saved_modules"]


def saved_modules(run: RunSetup) -> dict[str, torch.nn.Module]:
    """The modules a checkpoint holds: those that change during the run."""
    changing = {d for s in run.stages for d in s.copy} | {n for s in run.stages
                                                         for n in s.reinit}
    changing |= {n for n, node in run.graph.nodes.items() if node.spec.reinit_every}
    return {name: module for name, module in run.instances.unique_modules().items()
            if not run.graph.nodes[name].frozen or name in changing
            or KINDS[run.graph.nodes[name].kind].follows or _has_extra_state(module)}


def _has_extra_state(module: torch.nn.Module) -> bool:
    # A component that keeps state beyond its weights (an environment, a replay buffer, a
    # running normaliser's counts) says so the torch way, by overriding get_extra_state; its
    # value must load with weights_only=True (tensors, numbers, strings, lists, dicts).
    return any(type(m).get_extra_state is not torch.nn.Module.get_extra_state
               for m in module.modules())


def run_state(run: RunSetup, step: int,
              rank_rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The checkpoint of ``run`` after ``step`` steps (tensors and plain values only).

    ``rank_rngs`` are the random generators of every rank of a data-parallel job (see
    :func:`gather_rngs`); each rank resumes its own.
    """
    nodes, updates = _in_shards(run)
    return {
        "format": 1,
        "dgraph_version": __version__,
        "spec_name": run.spec.display_name,
        "step": step,
        # Sharded (FSDP) tensors gathered whole: one checkpoint format at any world size;
        # with checkpoint: sharded, those nodes and their optimizers are in the shards.
        "modules": {n: full_state(m) if n in run.sharded else m.state_dict()
                    for n, m in saved_modules(run).items() if n not in nodes},
        "optimizers": {n: full_optimizer_state(o) if run.sharded else o.state_dict()
                       for n, o in run.optimizers.items() if n not in updates},
        **({"shards": {"folder": _shards_folder(step).name, "nodes": nodes,
                       "param_groups": {u: _optimizer_view(run, u)[1]["param_groups"]
                                        for u in updates}}}
           if nodes else {}),
        "schedulers": {n: _scheduler_state(s) for n, s in run.schedulers.items() if s},
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "loaders": {n: loader.state_dict() for n, loader in run.loaders.items()},
        "rng": capture_rng(),
        **({"rank_rngs": rank_rngs} if rank_rngs is not None else {}),
    }


def _shards_folder(step: int) -> Path:
    return Path(f"step_{step:08d}{SHARDS_SUFFIX}")


def _in_shards(run: RunSetup) -> tuple[list[str], list[str]]:
    """With ``checkpoint: sharded``: the nodes FSDP shards (at any world size, so that the
    format does not depend on it) and the updates that train them, whose states go into the
    checkpoint's shards folder."""
    config = run.train_cfg.distributed
    if config.checkpoint != "sharded" or config.strategy != "fsdp":
        return [], []
    saved = saved_modules(run)
    nodes = [n for n in fsdp_nodes(run.graph) if n in saved]
    updates = [u for u in run.optimizers
               if any(n in nodes for n in _update_nodes(run, u))]
    return nodes, updates


def _update_nodes(run: RunSetup, update: str) -> list[str]:
    return [e if isinstance(e, str) else e.node for e in run.spec.updates[update].params]


def _optimizer_view(run: RunSetup, update: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The update's nodes as one module and its optimizer state keyed by parameter names
    (torch.distributed.checkpoint's form, which does not depend on the sharding)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    box = torch.nn.ModuleDict({n: run.instances.modules[n] for n in _update_nodes(run, update)})
    return box, get_optimizer_state_dict(box, run.optimizers[update])


def _shard_tensors(run: RunSetup, nodes: list[str], updates: list[str]) -> dict[str, Any]:
    modules = saved_modules(run)
    return {"modules": {n: modules[n].state_dict() for n in nodes},
            "optimizers": {u: _optimizer_view(run, u)[1]["state"] for u in updates}}


def gather_rngs(run: RunSetup) -> list[dict[str, Any]] | None:
    """Every rank's random generators, on every rank (None when the process runs alone).

    A collective: all ranks call it at the same step."""
    if not run.world.distributed:
        return None
    out: list[Any] = [None] * run.world.size
    torch.distributed.all_gather_object(out, capture_rng())
    return out


def load_run_state(run: RunSetup, state: dict[str, Any], path: Path) -> int:
    """Restore ``run`` from a checkpoint read from ``path``; returns its step.

    The optimizers of the stage the step lies in are built first (a stage after the first
    starts with fresh ones). A checkpoint of another spec, or of a changed graph, is a
    CheckpointError.
    """
    if state.get("spec_name") != run.spec.display_name:
        raise CheckpointError(
            f"checkpoint {path} belongs to spec '{state.get('spec_name')}', not "
            f"'{run.spec.display_name}'; resume with the spec that wrote it"
        )
    step = int(state["step"])
    stage = run.stage_at(step)
    if stage.start > 0 and step >= stage.start:
        for update in stage.updates:
            run.build_optimizer(update, stage.end - stage.start)
    modules = saved_modules(run)
    run.restore_generated(step)  # the generated datasets the run trained on, before loaders
    try:
        if "shards" in state:
            _load_shards(run, state["shards"], path)
        for name, module_state in state["modules"].items():
            load_full_state(modules[name], module_state)
        for name, opt_state in state["optimizers"].items():
            if name in run.optimizers:
                load_full_optimizer_state(run.optimizers[name], opt_state)
        for name, sched_state in state["schedulers"].items():
            run.schedulers[name].load_state_dict(sched_state)
        if run.scaler is not None and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        for name, loader_state in state["loaders"].items():
            run.loaders[name].load_state_dict(loader_state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not match this spec's graph ({type(exc).__name__}: "
            f"{exc}); was the spec changed since it was written?"
        ) from None
    rank_rngs = state.get("rank_rngs")
    if rank_rngs is not None and len(rank_rngs) == run.world.size:
        restore_rng(rank_rngs[run.rank])
    else:
        restore_rng(state["rng"])
        if run.world.distributed:
            # Saved by a job of another size: the data continue exactly, the in-step random
            # streams start afresh per rank from the step.
            torch.manual_seed(rank_seed(run.train_cfg.seed + step, run.rank))
    return step


def _load_shards(run: RunSetup, shards: dict[str, Any], path: Path) -> None:
    """The nodes and optimizer states a checkpoint keeps in its shards folder, loaded into
    this job's modules as they are sharded now (any number of processes)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    folder = path.parent / shards["folder"]
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {path} keeps its sharded tensors in {folder}, which "
                              "is missing; resume from an earlier checkpoint (delete this one) "
                              "or start again without --resume")
    modules = saved_modules(run)
    nodes, updates = list(shards["nodes"]), list(shards["param_groups"])
    template = {"modules": {n: modules[n].state_dict() for n in nodes},
                "optimizers": {u: _optimizer_view(run, u)[1]["state"] for u in updates}}
    try:
        load_shards(folder, template)
    except Exception as exc:  # torch.distributed.checkpoint reports a bad folder many ways
        raise CheckpointError(f"the sharded tensors of checkpoint {path} cannot be read from "
                              f"{folder} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                              "resume from an earlier checkpoint (delete this one) or start "
                              "again without --resume") from None
    for n in nodes:
        modules[n].load_state_dict(template["modules"][n])
    for u in updates:
        box, _ = _optimizer_view(run, u)
        set_optimizer_state_dict(box, run.optimizers[u], {
            "state": template["optimizers"][u], "param_groups": shards["param_groups"][u]})


def save_run_state(run: RunSetup, step: int) -> Path | None:
    """Write the checkpoint of ``step`` (rank 0 only); its path, or None on other ranks.

    Called by every rank (the ranks' generators are gathered first)."""
    rank_rngs = gather_rngs(run)
    nodes, updates = _in_shards(run)
    if nodes:  # every rank writes its shards first; the checkpoint file then points to them
        save_shards(run.run_dir / "checkpoints" / _shards_folder(step),
                    _shard_tensors(run, nodes, updates), run.world)
    # Gathering sharded state is a collective: every rank builds the state, rank 0 writes it.
    state = run_state(run, step, rank_rngs) if run.sharded or run.rank == 0 else None
    if state is None or run.rank != 0:
        return None
    return save_checkpoint(run.run_dir / "checkpoints", step, state,
                           run.train_cfg.keep_checkpoints)


def save_final(run: RunSetup) -> None:
    """``final/<node>.safetensors`` for every trained or saved node (rank 0 only; every rank
    takes part in gathering sharded weights)."""
    if run.rank != 0 and not run.sharded:
        return
    final = run.run_dir / "final"
    trained = set(run.graph.trained_by())
    for name, module in run.instances.unique_modules().items():
        node = run.graph.nodes[name]
        if name in trained or KINDS[node.kind].saved:
            weights = full_state(module) if name in run.sharded else module.state_dict()
            if run.rank != 0:
                continue
            metadata = {"node": name, "type": node.spec.type, "kind": node.kind,
                        "spec": run.spec.display_name, "dgraph_version": __version__,
                        "params": json.dumps(node.spec.params, sort_keys=True)}
            if run.spec.path is not None:  # `dgraph export` resolves paths against it
                metadata["spec_dir"] = str(run.spec.path.parent.resolve())
            save_weights(final / f"{name}.safetensors", weights, metadata)


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    # LambdaLR stores its multiplier objects' attributes; they are rebuilt from the spec, and
    # leaving them out keeps the checkpoint loadable with weights_only=True.
    state = scheduler.state_dict()
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    return state
