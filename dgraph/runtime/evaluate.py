"""Held-out evaluation: accuracy of every classifier, student–teacher agreement, each loss.

Runs every node on each data node's eval split with gradients off, the modules in eval mode
and the random-number generators forked, so evaluating never changes the training run.

In a job of several ranks the held-out batches are shared out: batch ``b`` is evaluated by
rank ``b mod N``, and the sums and counts behind accuracy, agreement and each loss are added up
across the ranks, so every rank reports what one process would (up to the order of float
additions). Metric nodes: a per-batch metric (:class:`~dgraph.runtime.metrics.SummedOutputs`,
e.g. ``lm_perplexity``) sums its outputs on each rank's share and the totals are added up; any
other metric fed by the batches receives every batch's inputs, gathered from the ranks, on
every rank in the order one process would feed them; metrics that make their own inputs
(samples, episodes) compute on every rank as they do alone. A module sharded by FSDP runs only
when every rank calls it: when one is evaluated, a rank without a batch in the last round runs
the last batch too and discards its values, so all ranks make the same calls.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch

from dgraph.compiler.codegen import Program
from dgraph.compiler.instantiate import Instances
from dgraph.graph.model import Graph
from dgraph.kinds import KINDS
from dgraph.runtime.distributed import World, gather_objects
from dgraph.runtime.metrics import SummedOutputs, as_accumulator, metric_key

__all__ = ["evaluate"]


def _label_port(graph: Graph, data_node: str) -> str | None:
    for port, decl in graph.nodes[data_node].outputs.items():
        if decl.type == "Labels":
            return port
    return None


def _classifiers(graph: Graph) -> dict[str, tuple[str, str]]:
    """Model node -> (data node, label port) for nodes with a ``logits`` output."""
    out = {}
    for name, node in graph.nodes.items():
        if not KINDS[node.kind].evaluated or "logits" not in node.outputs:
            continue
        data = [a for a in graph.ancestors(name) if KINDS[graph.nodes[a].kind].batches]
        label = _label_port(graph, data[0]) if len(data) == 1 else None
        if label is not None and node.outputs["logits"].type == "Logits":
            out[name] = (data[0], label)
    return out


def skipped_in_evaluation(graph: Graph, *, samplers: bool = False) -> set[str]:
    """The nodes evaluation does not run: those declared ``evaluated=False`` (samplers that
    generate) and whatever only they feed, except what a metric reads; none with
    ``samplers`` (the spec's ``train.eval.samplers``)."""
    costly = {n for n, node in graph.nodes.items() if not node.component.evaluated}
    if samplers or not costly:
        return set()
    downstream = set(costly)
    for name in costly:
        downstream |= graph.descendants(name)
    needed = set()
    for name, node in graph.nodes.items():
        if KINDS[node.kind].eval_only:
            needed |= graph.ancestors(name) | {name}
    return downstream - needed


def evaluate(program: Program, instances: Instances, graph: Graph, device: torch.device,
             batch_size: int, amp=None, *, world: World | None = None,
             sharded: Iterable[str] = (), samplers: bool = False) -> dict[str, float]:
    """Metrics on the eval splits, keyed like ``student/accuracy`` or ``loss/kd``.

    ``world`` is the data-parallel job (one process when not given); ``sharded`` names the
    nodes whose modules FSDP shards (every rank must call them the same number of times);
    ``samplers`` also runs the samplers that generate (see :func:`skipped_in_evaluation`).
    """
    world = world or World()
    eval_data = {n: s.eval for n, s in instances.data.items() if s.eval}
    if not eval_data or len(eval_data) != len(instances.data):
        return {}
    modes = {name: m.training for name, m in instances.modules.items()}
    for module in instances.modules.values():
        module.eval()
    # Summed on the device (correct counts as integers, losses in float64: the arithmetic of
    # Python floats) and read once at the end, not once per batch.
    sums: dict[str, Any] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    skipped = skipped_in_evaluation(graph, samplers=samplers)
    classifiers = {n: c for n, c in _classifiers(graph).items() if n not in skipped}
    students = [n for n in classifiers if graph.nodes[n].kind == "student"]
    teachers = [n for n in classifiers if graph.nodes[n].kind == "teacher"]
    losses = [n for n, node in graph.nodes.items() if node.kind == "loss" and n not in skipped]
    metrics = {n: as_accumulator(instances.modules[n], node.component)
               for n, node in graph.nodes.items() if KINDS[node.kind].eval_only}
    for accumulator in metrics.values():
        accumulator.reset()
    fed = {m: graph.edges_into(m) for m in metrics if graph.edges_into(m)}
    # Per-batch sums are added up across ranks; other fed metrics see every batch's inputs.
    summed = {m: a for m, a in metrics.items() if m in fed and isinstance(a, SummedOutputs)}
    gathered = [m for m in fed if m not in summed]
    others = [n for n in program.order if n not in metrics and n not in skipped]
    lockstep = world.distributed and bool(set(sharded) & set(others))
    batches = min(-(-next(iter(t.values())).shape[0] // batch_size) for t in eval_data.values())
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), (amp or nullcontext)():
            for first in range(0, batches, world.size):
                index = first + world.rank
                mine = index < batches
                values = None
                if mine or lockstep:
                    at = (index if mine else batches - 1) * batch_size
                    batch = {name: {k: v[at: at + batch_size].to(device) for k, v in t.items()}
                             for name, t in eval_data.items()}
                    # Cached outputs index the training set; on held-out data, run the node.
                    values = program.run_nodes(instances, batch, others)
                inputs = None
                if mine and values is not None:
                    _count(values, batch, sums, counts, classifiers, students, teachers, losses)
                    for metric, accumulator in summed.items():
                        accumulator.update(**{e.dst_port: values[(e.src, e.src_port)]
                                                  for e in fed[metric]})
                    inputs = {m: {e.dst_port: values[(e.src, e.src_port)] for e in fed[m]}
                              for m in gathered}
                if gathered:
                    # In batch order: this round's batch of rank r is batch first + r.
                    for part in gather_objects(inputs, world) if world.distributed \
                            else [inputs]:
                        for metric, kwargs in (part or {}).items():
                            metrics[metric].update(**{k: v.to(device) if torch.is_tensor(v)
                                                      else v for k, v in kwargs.items()})
            for key, total in sums.items():
                sums[key] = float(total)
            if world.distributed:
                _add_up(world, sums, counts, list(summed.values()))
            # Metrics that make their own inputs (samples, episodes) do their work here, still
            # with the generators forked and without gradients.
            computed = {metric: accumulator.compute() for metric, accumulator in metrics.items()}
    finally:
        for name, module in instances.modules.items():
            module.train(modes[name])
    results = {key: sums[key] / counts[key] for key in sums if counts[key]}
    for metric, summary in computed.items():
        results.update({metric_key(metric, key): float(value) for key, value in summary.items()})
    return dict(sorted(results.items()))


def _count(values: dict, batch: dict, sums: dict[str, Any], counts: dict[str, int],
           classifiers: dict[str, tuple[str, str]], students: list[str], teachers: list[str],
           losses: list[str]) -> None:
    """Add one batch's correct predictions, agreements and weighted losses to the sums."""
    size = next(iter(next(iter(batch.values())).values())).shape[0]
    for name, (data_node, label_port) in classifiers.items():
        predicted = values[(name, "logits")].argmax(-1)
        labels = batch[data_node][label_port]
        sums[f"{name}/accuracy"] += (predicted == labels).sum()
        counts[f"{name}/accuracy"] += int(labels.numel())
    for student in students:
        for teacher in teachers:
            same = values[(student, "logits")].argmax(-1) == \
                values[(teacher, "logits")].argmax(-1)
            key = f"{student}/agreement/{teacher}"
            sums[key] += same.sum()
            counts[key] += int(same.numel())
    for loss in losses:
        if (loss, "loss") in values:
            sums[f"loss/{loss}"] += values[(loss, "loss")].detach().float().double() * size
            counts[f"loss/{loss}"] += size


def _add_up(world: World, sums: dict[str, float], counts: dict[str, int],
            summed: list[SummedOutputs]) -> None:
    """Replace this rank's sums, counts and per-batch metric totals by those of all ranks."""
    mine = (dict(sums), dict(counts), [(m.host_totals(), m.examples) for m in summed])
    parts = gather_objects(mine, world)
    sums.clear()
    counts.clear()
    for metric in summed:
        metric.reset()
    for part_sums, part_counts, part_metrics in parts:
        for key, value in part_sums.items():
            sums[key] += value
        for key, count in part_counts.items():
            counts[key] += count
        for metric, (totals, examples) in zip(summed, part_metrics, strict=True):
            for port, value in totals.items():
                metric.totals[port] += value
            metric.examples += examples
