"""``inner_train`` (a functional copy of a network trained for N SGD steps) and
``trajectory_match``, checked against unrolls written out by hand with torch.autograd."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dgraph.components.dd.inner_train import InnerTrain, flat_parameters
from dgraph.components.dd.trajectory_match import trajectory_match
from dgraph.components.models.mlp import MLP

from dgraph.cli import main
from dgraph.compiler.dryrun import dry_run
from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.registry import BuildContext
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP.create(in_features=3, hidden=[4], num_classes=2)


def _inner(net: torch.nn.Module, **params) -> torch.nn.Module:
    return InnerTrain.create(BuildContext(node="inner", references={"model": net}),
                             model="net", **params)


def _manual(net, x, target, lrs, *, momentum=0.0, batches=None, start=None, soft=False):
    """N SGD steps written out: h = relu(x W1^T + b1), z = h W2^T + b2, CE, theta -= lr * v."""
    w1, b1 = net.body[0].weight, net.body[0].bias
    w2, b2 = net.head.weight, net.head.bias
    if start is None:
        theta = [p.detach().clone().requires_grad_(True) for p in (w1, b1, w2, b2)]
    else:
        theta = list(torch.split(start, [w1.numel(), b1.numel(), w2.numel(), b2.numel()]))
        theta = [t.view_as(p) for t, p in zip(theta, (w1, b1, w2, b2), strict=True)]
    velocity = None
    for i, lr in enumerate(lrs):
        index = None if batches is None else batches[i]
        xb = x if index is None else x[index]
        tb = target if index is None else target[index]
        z = torch.relu(xb @ theta[0].T + theta[1]) @ theta[2].T + theta[3]
        if soft:
            loss = -(tb * torch.log_softmax(z, -1)).sum(-1).mean()
        else:
            loss = F.cross_entropy(z, tb)
        grads = torch.autograd.grad(loss, theta, create_graph=True)
        velocity = list(grads) if velocity is None else [
            momentum * v + g for v, g in zip(velocity, grads, strict=True)]
        theta = [t - lr * v for t, v in zip(theta, velocity, strict=True)]
    return torch.cat([t.reshape(-1) for t in theta])


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_the_unroll_is_n_sgd_steps_and_differentiates_like_them(momentum):
    net = _net()
    x = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    lr = torch.tensor([0.3], requires_grad=True)
    out = _inner(net, steps=3, momentum=momentum)(x=x, y=y, lr=lr)
    expected = _manual(net, x, y, [lr[0]] * 3, momentum=momentum)
    torch.testing.assert_close(out["params"], expected)
    torch.testing.assert_close(out["start"], flat_parameters(net))
    assert out["start"].requires_grad is False  # the model's own weights: no gradient there
    # The same function of x and lr: gradients by autograd through both unrolls agree.
    probe = torch.randn(expected.shape)
    got = torch.autograd.grad((out["params"] * probe).sum(), [x, lr])
    want = torch.autograd.grad((expected * probe).sum(), [x, lr])
    for g, w in zip(got, want, strict=True):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, w)
    # The last step's loss, by hand: theta_2 after two steps.
    two = _manual(net, x, y, [lr[0]] * 2, momentum=momentum)
    w1, b1, w2, b2 = torch.split(two, [12, 4, 8, 2])
    z = torch.relu(x @ w1.view(4, 3).T + b1) @ w2.view(2, 4).T + b2
    torch.testing.assert_close(out["inner_loss"], F.cross_entropy(z, y).detach())


def test_minibatches_per_step_rates_and_a_given_start():
    net = _net()
    x = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    lr = torch.tensor([0.5, 0.2, 0.1], requires_grad=True)  # one rate per step
    start = (flat_parameters(net) + 0.1).requires_grad_(True)
    torch.manual_seed(3)
    out = _inner(net, steps=3, batch_size=4)(x=x, y=y, lr=lr, start=start)
    # Consecutive slices of a permutation; a new one when fewer than 4 examples remain.
    torch.manual_seed(3)
    first = torch.randperm(6)
    second = torch.randperm(6)
    third = torch.randperm(6)
    batches = [first[:4], second[:4], third[:4]]
    expected = _manual(net, x, y, list(lr), batches=batches, start=start)
    torch.testing.assert_close(out["params"], expected)
    assert out["start"] is start
    probe = torch.randn(expected.shape)
    got = torch.autograd.grad((out["params"] * probe).sum(), [x, lr, start])
    want = torch.autograd.grad((expected * probe).sum(), [x, lr, start])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_soft_labels_reach_the_gradient_and_kl_trains_as_cross_entropy():
    net = _net()
    x = torch.randn(6, 3)
    logits = torch.randn(6, 2, requires_grad=True)
    probs = torch.softmax(logits / 2.0, -1)
    out = _inner(net, steps=2, default_lr=0.4, soft_labels="logits", temperature=2.0)(
        x=x, y_soft=logits)
    expected = _manual(net, x, probs, [0.4, 0.4], soft=True)
    torch.testing.assert_close(out["params"], expected)
    (grad,) = torch.autograd.grad(out["params"].sum(), logits)
    assert grad.abs().sum() > 0
    kl = _inner(net, steps=2, default_lr=0.4, loss="kl")(x=x, y_soft=probs)
    torch.testing.assert_close(kl["params"], expected)
    # Its reported loss is the KL: the cross-entropy less the labels' entropy.
    ce = _inner(net, steps=2, default_lr=0.4)(x=x, y_soft=probs)
    entropy = -(probs * probs.log()).sum(-1).mean()
    torch.testing.assert_close(kl["inner_loss"], (ce["inner_loss"] - entropy).detach())


def test_detached_steps_carry_no_gradient_and_write_back_trains_the_model():
    net = _net()
    before = flat_parameters(net)
    x = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    lr = torch.tensor([0.3], requires_grad=True)
    out = _inner(net, steps=3, differentiable=False)(x=x, y=y, lr=lr)
    expected = _manual(net, x, y, [0.3] * 3).detach()
    torch.testing.assert_close(out["params"], expected)
    assert not out["params"].requires_grad and not out["start"].requires_grad
    torch.testing.assert_close(flat_parameters(net), before)  # a copy was trained
    # differentiable, but under no_grad (evaluation): nothing is kept either.
    with torch.no_grad():
        quiet = _inner(net, steps=3)(x=x, y=y, lr=lr)
    assert not quiet["params"].requires_grad
    torch.testing.assert_close(quiet["params"], expected)
    # write_back: gradient matching's inner epochs change the network itself.
    _inner(net, steps=3, differentiable=False, write_back=True)(x=x, y=y, lr=lr)
    torch.testing.assert_close(flat_parameters(net), expected)
    assert x.grad is None and lr.grad is None


@pytest.mark.parametrize("inputs,params,message", [
    ({}, {}, "inner_train needs exactly one of its inputs y (hard labels) or y_soft (soft "
     "labels) wired; found neither"),
    ({"y": True, "y_soft": True}, {}, "inner_train needs exactly one of its inputs y (hard "
     "labels) or y_soft (soft labels) wired; found both"),
    ({"y": True, "lr": torch.ones(2)}, {}, "lr has 2 values (shape [2]); expected one, or one "
     "per inner step (3)"),
    ({"y": True, "start": torch.zeros(25)}, {}, "start has shape [25], but the model has 26 "
     "parameters: expected a flat vector [26]"),
    ({"y": True}, {"output_port": "logit"}, "the model has no output 'logit' (output_port); "
     "it outputs logits, features"),
    ({"y_soft": torch.full((6, 3), 1 / 3)}, {}, "y_soft has shape [6, 3] but the model's "
     "scores have [6, 2]: one probability per class is expected"),
])
def test_misuse_is_explained(inputs, params, message):
    kwargs = {"x": torch.randn(6, 3)}
    for port, value in inputs.items():
        if port == "y":
            value = torch.tensor([0, 1, 1, 0, 1, 0])
        elif port == "y_soft" and value is True:
            value = torch.full((6, 2), 0.5)
        kwargs[port] = value
    with pytest.raises(ValueError) as info:
        _inner(_net(), steps=3, **params)(**kwargs)
    assert str(info.value) == message


def test_trajectory_match_by_hand():
    # ||(1, 2, 2) - (1, 0, 0)||^2 = 8 over ||(3, 0, 4) - (1, 0, 0)||^2 = 4 + 16 = 20.
    params = torch.tensor([1.0, 2.0, 2.0], requires_grad=True)
    loss = trajectory_match(params, torch.tensor([3.0, 0.0, 4.0]), torch.tensor([1.0, 0.0, 0.0]))
    assert float(loss.detach()) == pytest.approx(8 / 20)
    (grad,) = torch.autograd.grad(loss, params)  # 2 (params - target) / 20
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.2, 0.2]))
    with pytest.raises(ValueError) as info:
        trajectory_match(params, torch.zeros(3), torch.zeros(4))
    assert str(info.value) == ("params [3], start [3] and target [4] must be flat vectors of "
                               "one size (the network's parameter count)")


SPEC = """
dgraph: 1
name: mtt_tiny
nodes:
  syn: {kind: tensor, type: synthetic_digits, params: {images_per_class: 2, init: noise}}
  flat: {kind: op, type: reshape, params: {shape: [64]}, inputs: {x: syn.images}}
  lr:
    kind: tensor
    type: learnable_tensor
    params: {shape: [1], init: normal, mean: 0.1, std: 1.0e-9}
  net:
    kind: model
    type: mlp
    frozen: true
    params: {in_features: 64, hidden: [8], num_classes: 10}
    inputs: {x: flat.y}
  inner:
    kind: op
    type: inner_train
    params: {model: net, steps: 5}
    inputs: {x: flat.y, y: syn.labels, lr: lr.value}
  expert_end:
    kind: tensor
    type: learnable_tensor
    frozen: true
    params: {shape: [610], init: zeros}
  tm:
    kind: loss
    type: trajectory_match
    inputs: {params: inner.params, start: inner.start, target: expert_end.value}
updates:
  main:
    optimizer: {type: sgd, lr: 10.0}
    params: [syn, {node: lr, lr: 0.001}]
    objective: {tm: 1.0}
train: {steps: 20, log_every: 1, seed: 0}
"""

# 610 = 64 * 8 + 8 + 8 * 10 + 10 parameters of the MLP.
REPORT = re.compile(
    r"the differentiable unroll keeps about (\d+\.\d) KiB for backward: 5 steps x "
    r"\((\d+\.\d) KiB saved per step on a minibatch of 20, measured in the dry run, \+ theta: "
    r"610 parameters x 4 bytes\); fewer steps or a smaller batch_size lower it")


def _spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "mtt.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_the_dry_run_reports_the_memory_of_the_unroll(tmp_path, capsys):
    graph, warnings = validate(load_spec(_spec(tmp_path)))
    assert warnings == []
    [note] = dry_run(graph)
    assert (note.code, note.severity, note.node) == ("dry-run-report", "note", "inner")
    assert note.location == graph.nodes["inner"].location
    match = REPORT.fullmatch(note.message)
    assert match is not None, note.message
    total, per_step = (float(v) * 1024 for v in match.groups())
    # steps x (saved + theta) + the start; saved >= the forward's activations (x_b, h, z).
    assert total == pytest.approx(5 * (per_step + 610 * 4) + 610 * 4, abs=0.1 * 1024 * 6)
    assert per_step >= (20 * 64 + 2 * 20 * 8 + 20 * 10) * 4
    assert main(["validate", str(tmp_path / "mtt.yaml")]) == 0
    err = capsys.readouterr().err
    assert f"{graph.nodes['inner'].location}: note[dry-run-report]: node 'inner': " \
        f"{note.message}" in err
    # Detached steps keep one step at a time.
    graph, _ = validate(load_spec(_spec(tmp_path, SPEC.replace(
        "steps: 5}", "steps: 5, differentiable: false}"))))
    [note] = dry_run(graph)
    assert re.fullmatch(r"the detached inner training holds about \d+\.\d KiB at a time "
                        r"\(\d+\.\d KiB saved for one step's backward on a minibatch of 20, "
                        r"measured in the dry run, \+ theta, its gradient, velocity and start: "
                        r"610 parameters x 4 bytes x 4\)", note.message), note.message


def test_the_dry_run_finds_a_target_of_another_size(tmp_path):
    graph, _ = validate(load_spec(_spec(tmp_path, SPEC.replace("[610]", "[611]"))))
    with pytest.raises(ValidationError) as info:
        dry_run(graph)
    [problem] = info.value.problems
    assert (problem.code, problem.node) == ("dry-run-failed", "tm")
    assert problem.message.endswith(
        "ValueError: params [610], start [610] and target [611] must be flat vectors of one "
        "size (the network's parameter count)")


def test_a_learnable_set_and_rate_reduce_trajectory_matching(tmp_path):
    graph, _ = validate(load_spec(_spec(tmp_path)))
    (tmp_path / "run").mkdir()
    trainer = Trainer(graph, tmp_path / "run", progress=False, log=lambda _m: None)
    modules = trainer.instances.modules
    net = modules["net"]
    start = flat_parameters(net)
    # The expert's end point: 5 steps at lr 0.1 on another (hidden) set with the same labels,
    # so a set that reaches it exactly exists.
    hidden = torch.rand(20, 64, generator=torch.Generator().manual_seed(1))
    labels = modules["syn"].labels
    target = _inner(net, steps=5, default_lr=0.1, differentiable=False)(x=hidden, y=labels)
    with torch.no_grad():
        modules["expert_end"].value.copy_(target["params"])
    images = modules["syn"].images.detach().clone()
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    losses = [row["loss/tm"] for row in rows if "loss/tm" in row]
    assert len(losses) == 20
    assert losses[-1] < 0.5 * losses[0]
    # The rate was learned.
    assert float(modules["lr"].value.detach()) != pytest.approx(0.1, abs=1e-4)
    assert not torch.equal(modules["syn"].images.detach(), images)
    torch.testing.assert_close(flat_parameters(net), start)  # the network is not trained
