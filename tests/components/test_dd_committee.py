"""Committee voting (``committee_vote``): the vote by hand, members from a run or re-drawn and
weighted by held-out accuracy, and the parameter checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from dgraph.components.data.digits import digits
from dgraph.components.dd.committee import CommitteeVote, committee_vote, member_weights
from dgraph.components.models.mlp import MLP
from safetensors.torch import save_file

from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.registry import BuildContext
from dgraph.spec import load_spec


@pytest.fixture(scope="module")
def source():
    return digits.component(digits.component.Params(flatten=False), "data").build(
        BuildContext(node="data"))


def test_the_vote_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4], softmax([ln 3, 0]) = [3/4, 1/4]; weights 3/4, 1/4:
    # p = [3/4*1/4 + 1/4*3/4, 3/4*3/4 + 1/4*1/4] = [3/8, 5/8].
    z1, z2 = torch.tensor([[0.0, math.log(3)]]), torch.tensor([[math.log(3), 0.0]])
    p = committee_vote([z1, z2], torch.tensor([0.75, 0.25]))
    assert torch.allclose(p, torch.tensor([[0.375, 0.625]]), atol=1e-7)
    # Temperature 2 on [0, 2 ln 3] is softmax([0, ln 3]).
    p = committee_vote([torch.tensor([[0.0, 2 * math.log(3)]])], torch.tensor([1.0]), 2.0)
    assert torch.allclose(p, torch.tensor([[0.25, 0.75]]), atol=1e-7)
    # w_k = a_k / sum a: 0.9 and 0.6 -> 0.6 and 0.4; uniform: 1/K.
    assert member_weights([0.9, 0.6]).tolist() == pytest.approx([0.6, 0.4], abs=1e-12)
    assert member_weights([0.9, 0.6], "uniform").tolist() == [0.5, 0.5]


def _committee(source, **params):
    return CommitteeVote.create(BuildContext(node="committee", references={"real": source}),
                                real="data", **params)


def _manual_vote(networks, weights, x, temperature):
    with torch.no_grad():
        probs = [torch.softmax(net(x.flatten(1))["logits"] / temperature, -1) for net in networks]
    return sum(w * p for w, p in zip(weights, probs, strict=True))


def test_members_from_a_run_vote_with_their_held_out_accuracy(source, tmp_path: Path):
    final = tmp_path / "experts" / "final"
    final.mkdir(parents=True)
    x, y = source.train["x"].flatten(1), source.train["y"]
    test_x, test_y = source.eval["x"].flatten(1), source.eval["y"]
    members = []
    for k, steps in enumerate((60, 3)):  # a trained member and a barely trained one
        torch.manual_seed(k)
        net = MLP.create(in_features=64, hidden=[16], num_classes=10)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(net(x)["logits"], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        save_file({n: t.contiguous() for n, t in net.state_dict().items()},
                  str(final / f"m{k}.safetensors"))
        members.append(net.eval())
    with torch.no_grad():
        acc = [float((m(test_x)["logits"].argmax(-1) == test_y).float().mean())
               for m in members]
    assert acc[0] > 0.8 > acc[1]
    node = _committee(source, model_params={"hidden": [16]}, run=str(tmp_path / "experts"),
                      members=["m0", "m1"], temperature=2.0)
    images = source.train["x"][:7]
    probs = node(images)["probs"]
    assert node.accuracies == acc
    weights = [acc[0] / sum(acc), acc[1] / sum(acc)]
    assert node.weights.tolist() == pytest.approx(weights, abs=1e-12)
    assert torch.allclose(probs, _manual_vote(members, weights, images, 2.0), atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(7), atol=1e-6)
    with pytest.raises(ValueError) as info:
        _committee(source, run=str(tmp_path / "experts"), members=["m0"])(images)
    assert str(info.value).startswith("member 'm0': the weights in ")
    assert "do not fit a 'mlp' with model_params {} (Error(s) in loading state_dict for " \
        "MLP: size mismatch for body.0.weight: copying a param with shape torch.Size([16, " \
        "64]) from checkpoint, the shape in current model is torch.Size([128, 64])." \
        in str(info.value)
    with pytest.raises(ValueError) as info:
        _committee(source, run=str(tmp_path / "nowhere"), members=["m0"])(images)
    assert str(info.value).startswith("no trained committee for run '")


def test_redrawn_members_are_trained_here_deterministically(source):
    node = _committee(source, model_params={"hidden": [16]}, redraw=2, steps=40, seed=3,
                      weighting="uniform")
    images = source.train["x"][:5]
    state = torch.random.get_rng_state()
    probs = node(images)["probs"]
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's generator untouched
    assert all(a > 0.7 for a in node.accuracies)  # trained on the real training split
    assert node.weights.tolist() == [0.5, 0.5]
    networks = [net for net, _ in node.networks]
    assert torch.allclose(probs, _manual_vote(networks, [0.5, 0.5], images, 1.0), atol=1e-6)
    # Members differ (seeds 3 and 4) and a second committee with the same seed is identical.
    assert not torch.equal(networks[0].head.weight, networks[1].head.weight)
    assert torch.equal(_committee(source, model_params={"hidden": [16]}, redraw=2, steps=40,
                                  seed=3, weighting="uniform")(images)["probs"], probs)


SPEC = """
dgraph: 1
name: committee_errors
nodes:
  data: {kind: data, type: digits}
  net: {kind: student, type: mlp, params: {in_features: 64, num_classes: 10},
        inputs: {x: data.x}}
  ce: {kind: loss, type: cross_entropy, inputs: {logits: net.logits, target: data.y}}
  vote: {kind: op, type: committee_vote, params: %s, inputs: {x: data.x}}
  check: {kind: metric, type: dd_evaluator,
          inputs: {images: data.x, labels: data.y, test_x: data.x, test_y: data.y,
                   soft_labels: vote.probs}}
updates:
  main: {optimizer: {type: sgd, lr: 0.1}, params: [net], objective: {ce: 1.0}}
train: {steps: 1}
"""


@pytest.mark.parametrize("params, message", [
    ("{real: data}", "give the committee either run (with members: networks trained by "
     "another spec) or redraw: K (networks trained here); found neither"),
    ("{real: data, run: r, members: [a], redraw: 2}",
     "give the committee either run (with members: networks trained by another spec) or "
     "redraw: K (networks trained here); found both"),
    ("{real: data, run: r}", "run: r needs members: the node names whose final weights "
     "(final/<member>.safetensors) vote"),
    ("{real: data, redraw: 2, members: [a]}", "members name networks of a run; with redraw "
     "the members are drawn here: remove members or use run"),
    ("{real: data, redraw: 2, model: mpl}", "model: 'mpl' is not a model type; did you "
     "mean 'mlp'?"),
    ("{real: data, redraw: 2, model_params: {hiden: [3]}}",
     "model_params: unknown parameters ['hiden']; 'mlp' takes in_features, hidden, "
     "num_classes, activation, dropout"),
])
def test_bad_parameters_are_reported_by_validation(tmp_path, params, message):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC % params)
    with pytest.raises(ValidationError) as info:
        validate(load_spec(path))
    assert message in str(info.value)


def test_a_valid_committee_feeds_the_evaluator_soft_labels(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC % "{real: data, redraw: 2}")
    graph, _ = validate(load_spec(path))
    assert graph.nodes["vote"].outputs["probs"].type == "Probs"
