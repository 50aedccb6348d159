"""The built-in dataset-distillation evaluator (``dd_evaluator``): fresh networks trained only
on a set, tested on the held-out split fed batch by batch; its random-real baseline drawn from
a data node's training split; and its keys in ``summary.json`` of ``dd_dm``."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from dgraph.components.data.digits import digits, digits_split
from dgraph.components.dd.evaluate import SetEvaluator, random_real_subset, train_and_test
from helpers import QUIET

from dgraph.api import train
from dgraph.errors import ComponentRuntimeError, ValidationError
from dgraph.graph import validate
from dgraph.registry import BuildContext
from dgraph.spec import load_spec

MLP = {"mlp": {"hidden": [32]}}


@pytest.fixture(scope="module")
def split():
    return digits_split()


def _real_set(split, per_class: int, seed: int = 0):
    x_train, y_train, _, _ = split
    return random_real_subset(x_train, y_train, dict.fromkeys(range(10), per_class), seed)


def _evaluate(evaluator, images, labels, test_x, test_y, chunks: int = 3):
    """What evaluation does: reset, one update per held-out batch, compute."""
    evaluator.reset()
    for x, y in zip(test_x.chunk(chunks), test_y.chunk(chunks), strict=True):
        evaluator.update(images=images, labels=labels, test_x=x, test_y=y)
    return evaluator.compute()


def test_real_images_reach_high_accuracy_and_the_values_follow_the_formulas(split):
    _, _, test_x, test_y = split
    images, labels = _real_set(split, 10)
    evaluator = SetEvaluator.create(models={**MLP, "cnn": {"channels": [8]}}, seeds=[0, 1],
                                    steps=60)
    state = torch.random.get_rng_state()
    out = _evaluate(evaluator, images, labels, test_x.flatten(1), test_y)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator untouched
    # Each value is a network trained on the set alone: the same as training it directly
    # (the CNN gets the set's image shape although the held-out inputs are flat).
    mlp = [train_and_test("mlp", images, labels, test_x, test_y, seed=s, steps=60,
                          params=MLP["mlp"]) for s in (0, 1)]
    cnn = [train_and_test("cnn", images, labels, test_x, test_y, seed=s, steps=60,
                          params={"channels": [8]}) for s in (0, 1)]
    per_seed = [(mlp[0] + cnn[0]) / 2, (mlp[1] + cnn[1]) / 2]
    assert out == {
        "accuracy": pytest.approx((per_seed[0] + per_seed[1]) / 2, abs=1e-12),
        "accuracy_std": pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5, abs=1e-12),
        "accuracy@mlp": pytest.approx(statistics.fmean(mlp), abs=1e-12),
        "accuracy_std@mlp": pytest.approx(statistics.stdev(mlp), abs=1e-12),
        "accuracy@cnn": pytest.approx(statistics.fmean(cnn), abs=1e-12),
        "accuracy_std@cnn": pytest.approx(statistics.stdev(cnn), abs=1e-12),
    }
    assert out["accuracy@mlp"] > 0.85  # (10 real images per class: 0.89 at 300 steps)
    assert out["accuracy@cnn"] > 0.3  # chance is 0.1; 60 steps of an 8-channel CNN
    # The accuracy is over the whole held-out split: one batch or many give the same value.
    net = SetEvaluator.create(models=MLP, seeds=[0], steps=60)
    assert _evaluate(net, images, labels, test_x, test_y, chunks=1)["accuracy"] == mlp[0]
    assert _evaluate(net, images, labels, test_x, test_y, chunks=5)["accuracy"] == mlp[0]
    assert _evaluate(net, images, labels, test_x, test_y)["accuracy_std"] == 0.0


def test_random_labels_stay_near_chance_and_a_seed_is_deterministic(split):
    _, _, test_x, test_y = split
    images, labels = _real_set(split, 10)
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    evaluator = SetEvaluator.create(models=MLP, seeds=[0, 1, 2], steps=60)
    noise = _evaluate(evaluator, images, shuffled, test_x, test_y)
    assert noise["accuracy"] < 0.25  # chance is 0.1; the real labels give > 0.85
    again = _evaluate(evaluator, images, shuffled, test_x, test_y)
    assert again == noise
    assert noise["accuracy_std"] > 0  # other evaluation seeds initialise other networks


def test_random_real_draws_the_sets_size_per_class_from_the_training_split(split):
    x_train, y_train, test_x, test_y = split
    source = digits.component(digits.component.Params(flatten=False), "data").build(
        BuildContext(node="data"))
    assert torch.equal(source.train["x"], x_train)
    counts = {0: 2, 3: 1, 7: 3}
    x, y = random_real_subset(source.train["x"], source.train["y"], counts, seed=4)
    assert y.tolist() == [0, 0, 3, 7, 7, 7]
    generator = torch.Generator().manual_seed(4)
    expected = []
    for c, n in counts.items():  # class-major, each class by one permutation of its members
        members = torch.nonzero(y_train == c).flatten()
        expected += members[torch.randperm(len(members), generator=generator)[:n]].tolist()
    assert torch.equal(x, x_train[expected])
    # The evaluator on random_real trains on exactly that subset, per seed.
    set_labels = torch.tensor([0, 0, 3, 7, 7, 7])
    baseline = SetEvaluator.create(BuildContext(node="random_real",
                                                references={"real": source}),
                                   train_on="random_real", real="data", models=MLP,
                                   seeds=[4], steps=30, num_classes=10)
    out = _evaluate(baseline, torch.zeros(6, 1, 8, 8), set_labels, test_x, test_y)
    assert out["accuracy"] == train_and_test("mlp", x, y, test_x, test_y, seed=4, steps=30,
                                             params=MLP["mlp"], num_classes=10)
    with pytest.raises(ValueError) as info:
        random_real_subset(x_train, y_train, {1: 1000}, seed=0)
    assert str(info.value) == "class 1: the real training split has 146 examples, the set 1000"


SPEC = """
dgraph: 1
name: eval_errors
nodes:
  data: {kind: data, type: digits}
  net: {kind: student, type: mlp, params: {in_features: 64, num_classes: 10},
        inputs: {x: data.x}}
  ce: {kind: loss, type: cross_entropy, inputs: {logits: net.logits, target: data.y}}
  check: {kind: metric, type: dd_evaluator, params: %s,
          inputs: {images: data.x, labels: data.y, test_x: data.x, test_y: data.y}}
updates:
  main: {optimizer: {type: sgd, lr: 0.1}, params: [net], objective: {ce: 1.0}}
train: {steps: 1}
"""


@pytest.mark.parametrize("params, message", [
    ("{train_on: random_real}",
     "train_on: random_real draws real training images from a data node; name it with "
     "real: <data node> (e.g. real: data)"),
    ("{real: data}",
     "real: data is read only with train_on: random_real; remove it or set train_on: "
     "random_real"),
    ("{models: {mpl: {}}}",
     "models: 'mpl' is not a model type; did you mean 'mlp'?"),
    ("{models: {cross_entropy: {}}}",
     "models: 'cross_entropy' is not a model type (e.g. mlp, convnet)"),
    ("{models: {mlp: {hiden: [3]}}}",
     "models.mlp: unknown parameters ['hiden']; 'mlp' takes in_features, hidden, "
     "num_classes, activation, dropout"),
])
def test_bad_parameters_are_reported_by_validation(tmp_path, params, message):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC % params)
    with pytest.raises(ValidationError) as info:
        validate(load_spec(path))
    assert message in str(info.value)


def test_real_must_name_a_data_node(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC % "{train_on: random_real, real: net}")
    with pytest.raises(ComponentRuntimeError) as info:
        train(load_spec(path), out=tmp_path / "run", **QUIET)
    assert "node 'check' (metric 'dd_evaluator') failed to build: ValueError: real must " \
        "name a data node; it names a MLP" in str(info.value)


def test_dd_dm_reports_both_evaluations_in_its_summary(tmp_path):
    fast = [f"nodes.{node}.params.{key}" for node in ("synthetic", "random_real")
            for key in ("seeds=[0, 1]", "steps=20", "models={mlp: {hidden: [32]}}")]
    summary = train("dd_dm", out=tmp_path / "run", overrides=["train.steps=2", *fast],
                    **QUIET)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    keys = {f"{node}/{name}" for node in ("synthetic", "random_real")
            for name in ("accuracy", "accuracy_std", "accuracy@mlp", "accuracy_std@mlp")}
    assert keys <= set(written) and written == pytest.approx(summary)
    assert all(0.0 <= written[k] <= 1.0 for k in keys)
    assert written["synthetic/accuracy"] == written["synthetic/accuracy@mlp"]
