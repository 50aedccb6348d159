"""Metric nodes: summed over the held-out split and reduced by the component's summarize."""

from __future__ import annotations

import math
import textwrap

import torch
from helpers import make_trainer, write_spec
from torch import nn

from dgraph.api import train
from dgraph.ports import Port
from dgraph.registry import COMPONENTS, BuildContext, Component, component
from dgraph.runtime.evaluate import evaluate


class _NLL(nn.Module):
    def forward(self, logits, target):
        nll = nn.functional.cross_entropy(logits, target, reduction="sum")
        return {"nll": nll, "count": torch.tensor(float(target.numel()))}


if "evtest_perplexity" not in COMPONENTS:
    @component("evtest_perplexity", roles=("metric",))
    class EvPerplexity(Component):
        """Test-only perplexity: exp(total NLL / total count)."""

        inputs = {"logits": Port("Logits", "B, C"), "target": Port("Labels", "B")}
        outputs = {"nll": Port("Scalar"), "count": Port("Scalar")}

        def build(self, context: BuildContext):
            return _NLL()

        def summarize(self, totals, examples):
            return {"perplexity": math.exp(totals["nll"] / totals["count"])}


# A student, its loss and a metric node on digits (360 held-out examples); no train section.
METRIC = textwrap.dedent("""
        dgraph: 1
        name: metric
        nodes:
          data: {kind: data, type: digits}
          student:
            kind: student
            type: mlp
            params: {in_features: 64, hidden: [16], num_classes: 10}
            inputs: {x: data.x}
          ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
          held_out:
            kind: metric
            type: evtest_perplexity
            inputs: {logits: student.logits, target: data.y}
        updates:
          main: {params: [student], objective: {ce: 1.0}}
""")


def test_metric_node_reports_perplexity_over_the_whole_eval_split(tmp_path):
    spec = write_spec(tmp_path,
                      METRIC + "train: {steps: 30, eval: {every: 100, batch_size: 100}}\n")
    summary = train(spec, out=tmp_path / "run", progress=False, log=lambda _m: None)
    # The eval split is evaluated in batches of 100 (360 examples: 4 batches), yet the
    # metric is the exponential of the mean NLL over all 360, which equals exp(loss/ce)
    # since the loss is averaged per example too.
    assert math.isclose(summary["held_out/perplexity"], math.exp(summary["loss/ce"]),
                        rel_tol=1e-5)


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the reads of a tensor's value by the host (each a sync on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__,
                    torch.Tensor.__bool__, torch.Tensor.tolist):
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_evaluation_sums_on_the_device_and_reads_each_result_once(tmp_path):
    # 360 held-out digits in batches of 40: 9 batches. Summed on the device, the host reads
    # each accumulated value once: the student's accuracy, the loss and the metric's two
    # totals (a read per batch and value would be 9 x 4 = 36). The results equal sums made
    # batch by batch on the host, in float64.
    trainer = make_trainer(write_spec(tmp_path, METRIC + "train: {steps: 5}\n"),
                           tmp_path / "run")
    mode = _HostReads()
    with mode:
        results = evaluate(trainer.program, trainer.instances, trainer.graph, trainer.device,
                           40)
    assert mode.reads == 4
    student = trainer.instances.modules["student"]
    held = trainer.instances.data["data"].eval
    correct, loss, nll = 0, 0.0, 0.0
    with torch.no_grad():
        for at in range(0, 360, 40):
            x, y = held["x"][at:at + 40], held["y"][at:at + 40]
            logits = student(x)["logits"]
            correct += int((logits.argmax(-1) == y).sum())
            loss += float(nn.functional.cross_entropy(logits, y)) * len(y)
            nll += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    assert results["student/accuracy"] == correct / 360
    assert results["loss/ce"] == loss / 360
    assert results["held_out/perplexity"] == math.exp(nll / 360)
