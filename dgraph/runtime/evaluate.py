"""Held-out evaluation: accuracy of every classifier, student–teacher agreement, each loss.

Runs every node on each data node's eval split with gradients off, the modules in eval mode
and the random-number generators forked, so evaluating never changes the training run.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext

import torch

from dgraph.compiler.codegen import Program
from dgraph.compiler.instantiate import Instances
from dgraph.graph.model import Graph
from dgraph.kinds import KINDS
from dgraph.runtime.data import iterate_once
from dgraph.runtime.metrics import as_accumulator, metric_key

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


def evaluate(program: Program, instances: Instances, graph: Graph, device: torch.device,
             batch_size: int, amp=None) -> dict[str, float]:
    """Metrics on the eval splits, keyed like ``student/accuracy`` or ``loss/kd``."""
    eval_data = {n: s.eval for n, s in instances.data.items() if s.eval}
    if not eval_data or len(eval_data) != len(instances.data):
        return {}
    modes = {name: m.training for name, m in instances.modules.items()}
    for module in instances.modules.values():
        module.eval()
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    classifiers = _classifiers(graph)
    students = [n for n in classifiers if graph.nodes[n].kind == "student"]
    teachers = [n for n in classifiers if graph.nodes[n].kind == "teacher"]
    losses = [n for n, node in graph.nodes.items() if node.kind == "loss"]
    metrics = {n: as_accumulator(instances.modules[n], node.component)
               for n, node in graph.nodes.items() if KINDS[node.kind].eval_only}
    for accumulator in metrics.values():
        accumulator.reset()
    others = [n for n in program.order if n not in metrics]
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), (amp or nullcontext)():
            iterators = {n: iterate_once(t, batch_size) for n, t in eval_data.items()}
            while True:
                batch = {}
                for name, iterator in iterators.items():
                    chunk = next(iterator, None)
                    if chunk is None:
                        break
                    batch[name] = {k: v.to(device) for k, v in chunk.items()}
                if len(batch) != len(iterators):
                    break
                # Cached outputs index the training set; on held-out data, run the node.
                values = program.run_nodes(instances, batch, others)
                size = next(iter(next(iter(batch.values())).values())).shape[0]
                for name, (data_node, label_port) in classifiers.items():
                    predicted = values[(name, "logits")].argmax(-1)
                    labels = batch[data_node][label_port]
                    sums[f"{name}/accuracy"] += float((predicted == labels).sum())
                    counts[f"{name}/accuracy"] += int(labels.numel())
                for student in students:
                    for teacher in teachers:
                        same = values[(student, "logits")].argmax(-1) == \
                            values[(teacher, "logits")].argmax(-1)
                        key = f"{student}/agreement/{teacher}"
                        sums[key] += float(same.sum())
                        counts[key] += int(same.numel())
                for metric, accumulator in metrics.items():
                    edges = graph.edges_into(metric)
                    if edges:
                        accumulator.update(**{e.dst_port: values[(e.src, e.src_port)]
                                              for e in edges})
                for loss in losses:
                    if (loss, "loss") in values:
                        sums[f"loss/{loss}"] += float(values[(loss, "loss")].float()) * size
                        counts[f"loss/{loss}"] += size
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
