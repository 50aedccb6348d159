"""Gradients as values (param_grad, gradient_match) and per-step re-initialisation
(``reinit_every``): values by hand, real training through the runtime, seeded and resumable."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dgraph.components.dd.gradients import ParamGrad, gradient_match
from dgraph.components.models.mlp import MLP
from helpers import make_trainer, write_spec

from dgraph.compiler.dryrun import dry_run
from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.registry import BuildContext
from dgraph.runtime.checkpoint import load_checkpoint
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return MLP.create(in_features=4, hidden=[3], num_classes=2)


def _param_grad(net, **params):
    context = BuildContext(node="g", references={"model": net})
    return ParamGrad.create(context, model="net", **params)


def _batch():
    torch.manual_seed(1)
    return torch.randn(6, 4), torch.tensor([0, 1, 1, 0, 1, 1])


def _rows_by_hand(grads):
    """Linear weights [3, 4] and [2, 3]: 3 rows of 4, then 2 rows of 3 padded with one zero."""
    w1, w2 = (g for g in grads if g.dim() == 2)
    return torch.cat([w1, F.pad(w2, (0, 1))])


# -- param_grad --------------------------------------------------------------------------------
def test_param_grad_is_autograd_grad_flat_and_in_rows():
    net = _net()
    x, y = _batch()
    node = _param_grad(net)
    out = node(x=x, y=y)
    expected = torch.autograd.grad(F.cross_entropy(net(x=x)["logits"], y),
                                   list(net.parameters()))
    assert torch.allclose(out["grad"], torch.cat([g.reshape(-1) for g in expected]), atol=1e-7)
    assert out["rows"].shape == (5, 4)
    assert torch.allclose(out["rows"], _rows_by_hand(expected), atol=1e-7)
    names = [name for name, _ in net.named_parameters()]
    # layout: name, shape, offset in grad, first row in rows (biases have none)
    assert node.layout == [(names[0], (3, 4), 0, 0), (names[1], (3,), 12, None),
                           (names[2], (2, 3), 15, 3), (names[3], (2,), 21, None)]
    assert all(p.grad is None for p in net.parameters())  # the model is left alone


def test_param_grad_mse_and_soft_labels():
    net = _net()
    x, _ = _batch()
    target = torch.randn(6, 2)
    out = _param_grad(net, loss="mse")(x=x, y=target)
    expected = torch.autograd.grad(F.mse_loss(net(x=x)["logits"], target),
                                   list(net.parameters()))
    assert torch.allclose(out["grad"], torch.cat([g.reshape(-1) for g in expected]), atol=1e-7)
    probs = torch.softmax(torch.randn(6, 2), -1)
    soft = _param_grad(net)(x=x, y=probs)
    expected = torch.autograd.grad(F.cross_entropy(net(x=x)["logits"], probs),
                                   list(net.parameters()))
    assert torch.allclose(soft["grad"], torch.cat([g.reshape(-1) for g in expected]), atol=1e-7)


def test_param_grad_per_class_is_the_gradient_on_each_class_alone():
    net = _net()
    x, y = _batch()
    out = _param_grad(net, per_class=3)(x=x, y=y)
    assert out["grad"].shape == (3, 23) and out["rows"].shape == (3, 5, 4)
    for c in (0, 1):
        chosen = y == c
        expected = torch.autograd.grad(F.cross_entropy(net(x=x[chosen])["logits"], y[chosen]),
                                       list(net.parameters()))
        assert torch.allclose(out["grad"][c], torch.cat([g.reshape(-1) for g in expected]),
                              atol=1e-6)
        assert torch.allclose(out["rows"][c], _rows_by_hand(expected), atol=1e-6)
    assert torch.equal(out["grad"][2], torch.zeros(23))  # no example of class 2


def test_param_grad_is_differentiable_in_its_inputs_only_when_asked():
    net = _net()
    x, y = _batch()
    x = x.requires_grad_(True)
    v = torch.randn(23)
    out = _param_grad(net)(x=x, y=y)
    (found,) = torch.autograd.grad((out["grad"] * v).sum(), x)
    # By hand: the same double backward written out.
    g = torch.autograd.grad(F.cross_entropy(net(x=x)["logits"], y), list(net.parameters()),
                            create_graph=True)
    (expected,) = torch.autograd.grad((torch.cat([t.reshape(-1) for t in g]) * v).sum(), x)
    assert torch.allclose(found, expected, atol=1e-6) and found.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert not _param_grad(net, differentiable=False)(x=x, y=y)["grad"].requires_grad
    with torch.no_grad():  # what the compiled step does off the gradient path (real data)
        detached = _param_grad(net)(x=x, y=y)
    assert not detached["grad"].requires_grad
    assert torch.allclose(detached["grad"], out["grad"].detach())


def test_param_grad_errors():
    net = _net()
    x, y = _batch()
    with pytest.raises(ValueError) as info:
        _param_grad(net)(x=x, y=y[:4])
    assert str(info.value) == "x holds 6 examples but y has shape [4]; give one target per " \
        "example"
    with pytest.raises(ValueError) as info:
        _param_grad(net, output="scores")(x=x, y=y)
    assert str(info.value) == "the model has no output 'scores'; its outputs: logits, features"
    with pytest.raises(ValueError) as info:
        _param_grad(torch.nn.Sequential(torch.nn.LayerNorm(4)))
    assert str(info.value) == ("the model has no parameter with two or more dimensions (no "
                               "weight matrix), so its gradient has no per-neuron rows")
    with pytest.raises(ValueError) as info:
        _param_grad(net, loss="mse", per_class=2)
    assert "per_class needs class labels, so loss 'cross_entropy'; found loss 'mse'" \
        in str(info.value)


# -- gradient_match -------------------------------------------------------------------------------
def _gm(a, b, metric="per_neuron"):
    return gradient_match(a, b, metric=metric, eps=1e-12)  # called as the runtime calls it


def test_gradient_match_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    # Rows: orthogonal (1 - 0 = 1), parallel (1 - 1 = 0).
    assert _gm(a, b).item() == pytest.approx(1.0)
    # Whole tensors: a.b = 4, |a| = sqrt(3), |b| = 3: 1 - 4 / (3 sqrt(3)).
    assert _gm(a, b, metric="cosine").item() == pytest.approx(1 - 4 / (3 * 3**0.5))
    # Differences 1, -1, -1, -1: mean of squares 1.
    assert _gm(a, b, metric="mse").item() == pytest.approx(1.0)
    # Zero padding of rows changes nothing; a leading class dimension is summed over.
    padded = _gm(F.pad(a, (0, 3)), F.pad(b, (0, 3)))
    assert padded.item() == pytest.approx(1.0)
    assert _gm(torch.stack([a, a]), torch.stack([b, a])).item() == pytest.approx(1.0)
    # A zero row (on either side) counts 1 and passes no gradient.
    zero = torch.zeros(1, 2, requires_grad=True)
    other = torch.tensor([[1.0, 0.0]], requires_grad=True)
    distance = _gm(zero, other) + _gm(other, zero)
    distance.backward()
    assert distance.item() == 2.0
    assert torch.equal(zero.grad, torch.zeros(1, 2)) and torch.equal(other.grad, zero.grad)
    with pytest.raises(ValueError) as info:
        _gm(a, b[:1])
    assert str(info.value) == "gradient_match needs gradients of one shape; found a [2, 2] " \
        "and b [1, 2]"


# -- through the runtime ------------------------------------------------------------------------
SPEC = """\
dgraph: 1
name: gm_core
nodes:
  data: {kind: data, type: digits, params: {batch_size: 64}}
  syn: {kind: tensor, type: synthetic_digits, params: {images_per_class: 1, init: noise}}
  net:
    kind: model
    type: mlp
    frozen: true
    params: {in_features: 64, hidden: [16], num_classes: 10}
    inputs: {x: data.x}
  g_real:
    kind: op
    type: param_grad
    params: {model: net, per_class: 10}
    inputs: {x: data.x, y: data.y}
  g_syn:
    kind: op
    type: param_grad
    params: {model: net, per_class: 10}
    inputs: {x: syn.images, y: syn.labels}
  gm: {kind: loss, type: gradient_match, inputs: {a: g_syn.rows, b: g_real.rows}}
updates:
  main:
    optimizer: {type: sgd, lr: 0.5, momentum: 0.5}
    params: [syn]
    objective: {gm: 1.0}
train: {steps: 16, seed: 0, log_every: 1, checkpoint_every: 1000, eval: {every: 1000}}
"""


def _trainer(tmp_path: Path, run: str, *overrides: str, text: str = SPEC) -> Trainer:
    return make_trainer(write_spec(tmp_path, text, "gm_core.yaml"), tmp_path / run, *overrides)


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss/gm"] for r in rows if "loss/gm" in r]


def test_gradient_matching_trains_a_learnable_tensor(tmp_path):
    trainer = _trainer(tmp_path, "run")
    net = trainer.instances.modules["net"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = trainer.instances.modules["syn"].state_dict()
    images = {k: v.clone() for k, v in images.items()}
    trainer.run()
    losses = _losses(tmp_path / "run")
    assert len(losses) == 16
    # One fixed network: the synthetic gradients move towards the real ones.
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # about 144 -> 88
    assert losses[-1] < 0.7 * losses[0]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    after = trainer.instances.modules["syn"].state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in images.items())


def test_gradient_match_shapes_are_checked_by_validation(tmp_path):
    other = SPEC.replace("  gm: {", textwrap.indent(textwrap.dedent("""\
        wide:
          kind: model
          type: mlp
          frozen: true
          params: {in_features: 64, hidden: [32], num_classes: 10}
          inputs: {x: data.x}
        g_wide:
          kind: op
          type: param_grad
          params: {model: wide, per_class: 10}
          inputs: {x: data.x, y: data.y}
    """), "  ") + "  gm: {").replace("b: g_real.rows", "b: g_wide.rows")
    path = tmp_path / "gm_core.yaml"
    path.write_text(other)
    graph, _ = validate(load_spec(path))
    with pytest.raises(ValidationError) as info:
        dry_run(graph)  # what `dgraph validate` runs after the static checks
    assert "gradient_match needs gradients of one shape; found a [10, 26, 64] and b " \
           "[10, 42, 64]" in str(info.value)


# -- reinit_every -------------------------------------------------------------------------------
def _net_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.instances.modules["net"].state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reinit_every_draws_fresh_weights_at_its_steps(tmp_path):
    trainer = _trainer(tmp_path, "run", "nodes.net.reinit_every=2")
    built = _net_weights(trainer)
    trainer.redraw(0)
    first = _net_weights(trainer)
    trainer.redraw(1)  # not a multiple of 2: unchanged
    assert _same(_net_weights(trainer), first)
    trainer.redraw(2)
    second = _net_weights(trainer)
    assert not _same(first, built) and not _same(second, first)
    # Drawn from the initialisation distribution: same biases' bound as PyTorch's default.
    weight = next(v for k, v in second.items() if v.dim() == 2)
    assert weight.abs().max() <= 1 / 64**0.5


def test_reinit_runs_are_seeded_and_resume_identically(tmp_path):
    overrides = ("nodes.net.reinit_every=1", "train.steps=4", "train.checkpoint_every=2",
                 "train.eval.every=2", "train.keep_checkpoints=5")
    first = _trainer(tmp_path, "a", *overrides)
    built = _net_weights(first)
    first.run()
    second = _trainer(tmp_path, "b", *overrides)
    second.run()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert _same(_net_weights(first), _net_weights(second))
    assert not _same(_net_weights(first), built)  # a fresh network at every step
    # Resume from the step-2 checkpoint (evaluated just before it was written).
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "step_00000002.pt",
                resumed_dir / "checkpoints")
    resumed = _trainer(tmp_path, "resumed", *overrides)
    resumed.run(resume=True)
    assert _same(_net_weights(resumed), _net_weights(first))
    end = load_checkpoint(tmp_path / "a" / "checkpoints" / "step_00000004.pt")
    again = load_checkpoint(resumed_dir / "checkpoints" / "step_00000004.pt")
    for name in ("syn", "net"):  # the re-drawn network is checkpointed although frozen
        assert _same(end["modules"][name], again["modules"][name])


@pytest.mark.parametrize("node,extra,message", [
    ("g_real", "", "reinit_every re-draws weights, and a node of kind 'op' has none; put it "
     "on the model (or tensor) node"),
    ("net", "nodes.net.init.weights=w.safetensors", "reinit_every re-draws the node's own "
     "initial weights; it cannot be combined with 'init'"),
])
def test_reinit_every_is_refused_where_it_cannot_apply(tmp_path, node, extra, message):
    path = tmp_path / "gm_core.yaml"
    path.write_text(SPEC)
    overrides = [f"nodes.{node}.reinit_every=1", *([extra] if extra else [])]
    with pytest.raises(ValidationError) as info:
        load_spec(path, overrides)
    assert message in str(info.value)
