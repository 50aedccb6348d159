"""The metric protocol: accumulators over a whole split, hand-checked distances, the key scheme."""

from __future__ import annotations

import math
import re

import pytest
import torch

from dgraph.errors import ComponentRuntimeError
from dgraph.registry import COMPONENTS, BuildContext, load_plugins
from dgraph.runtime.metrics import Accumulator, SummedOutputs, as_accumulator, metric_key

load_plugins()


def accumulator(name: str, **params):
    cls = COMPONENTS.get(name)
    component = cls(cls.Params(**params), "m")
    return as_accumulator(component.build(BuildContext("m")), component)


def test_energy_distance_matches_the_formula_by_hand():
    acc = accumulator("energy_distance")
    assert isinstance(acc, Accumulator)
    acc.reset()
    # X = {0, 1}, Y = {3, 5}: cross mean (3 + 5 + 2 + 4) / 4 = 3.5; within X 1, within Y 2.
    acc.update(real=torch.tensor([[0.0]]), fake=torch.tensor([[3.0]]))
    acc.update(real=torch.tensor([[1.0]]), fake=torch.tensor([[5.0]]))
    assert acc.compute() == {"value": pytest.approx(2 * 3.5 - 1 - 2)}


def test_frechet_distance_in_one_dimension_is_mean_and_spread_difference():
    acc = accumulator("frechet_distance")
    real = torch.tensor([[1.0], [2.0], [3.0], [4.0]])        # mean 2.5, var 5/3
    fake = torch.tensor([[0.0], [4.0], [8.0], [12.0]])       # mean 6,   var 80/3
    acc.reset()
    acc.update(real=real, fake=fake)
    sd_r, sd_f = math.sqrt(5 / 3), math.sqrt(80 / 3)
    assert acc.compute()["value"] == pytest.approx((6 - 2.5) ** 2 + (sd_r - sd_f) ** 2)


def test_frechet_distance_of_a_set_with_itself_is_zero_in_many_dimensions():
    torch.manual_seed(0)
    x = torch.randn(500, 6) @ torch.randn(6, 6)
    acc = accumulator("frechet_distance", max_samples=400)
    acc.reset()
    acc.update(real=x, fake=x)
    assert acc.compute()["value"] == pytest.approx(0.0, abs=1e-6)
    acc.reset()
    acc.update(real=x, fake=x + 1.0)          # a shift by 1 in 6 dims: |mu diff|^2 = 6
    assert acc.compute()["value"] == pytest.approx(6.0, rel=1e-6)


def test_too_few_samples_say_how_many_there_were():
    acc = accumulator("energy_distance")
    acc.reset()
    acc.update(real=torch.zeros(1, 2), fake=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=re.escape(
            "needs at least 2 samples on each side; the evaluation split gave 1 real and "
            "3 fake")):
        acc.compute()


def test_per_batch_metrics_are_summed_then_summarized():
    cls = COMPONENTS.get("lm_perplexity")
    component = cls(cls.Params(), "ppl")
    module = component.build(BuildContext("ppl"))
    acc = as_accumulator(module, component)
    assert isinstance(acc, SummedOutputs)
    acc.reset()
    logits = torch.zeros(2, 3, 4)                 # uniform over 4 tokens: NLL log 4 each
    targets = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    kwargs = {name: value for name, value in
              (("logits", logits), ("targets", targets), ("mask", mask)) if name in cls.inputs}
    acc.update(**kwargs)
    assert acc.compute()["perplexity"] == pytest.approx(4.0)


@pytest.mark.parametrize("name", ["fid", "fid@4", "return@100", "value"])
def test_metric_keys_follow_node_slash_name(name):
    assert metric_key("gen_eval", name) == f"gen_eval/{name}"


def test_metric_names_outside_the_scheme_are_refused_with_the_node():
    with pytest.raises(ComponentRuntimeError, match=re.escape(
            "metric node 'gen_eval' reported a value named 'f/i d'; names are [A-Za-z0-9_]+ "
            "with an optional @<setting> (e.g. 'fid@4')")) as info:
        metric_key("gen_eval", "f/i d")
    assert info.value.node == "gen_eval"


SAMPLES = """
dgraph: 1
name: gan_with_samples
extends: adversarial_toy
nodes:
  samples:                   # held-out quality: energy distance of generated to real points
    kind: metric
    type: energy_distance
    inputs: {real: data.x, fake: generator.y}
"""


def test_a_whole_split_metric_is_reported_under_node_slash_name(tmp_path):
    """A GAN measured by an energy distance over the eval split, reported as samples/value."""
    from dgraph.graph import validate
    from dgraph.runtime.train import Trainer
    from dgraph.spec import load_spec

    (tmp_path / "gan.yaml").write_text(SAMPLES)
    graph, _ = validate(load_spec(tmp_path / "gan.yaml", [
        "train.steps=200", "train.eval.every=1000", "train.log_every=1000"]))
    (tmp_path / "run").mkdir()
    trainer = Trainer(graph, tmp_path / "run", progress=False, log=lambda *_: None)
    before = trainer.evaluate()
    assert before == trainer.evaluate()  # evaluation draws from forked generators
    summary = trainer.run()
    assert {"samples/value", "loss/critic_loss", "loss/generator_loss"} <= set(summary)
    # 200 steps of GAN training move the generated points towards the ring.
    assert summary["samples/value"] < before["samples/value"]


def test_specs_with_whole_split_metrics_pass_the_dry_run(tmp_path, capsys):
    from dgraph.cli import main

    (tmp_path / "gan.yaml").write_text(SAMPLES)
    assert main(["validate", str(tmp_path / "gan.yaml")]) == 0
    assert capsys.readouterr().out.startswith("gan_with_samples: valid (")
