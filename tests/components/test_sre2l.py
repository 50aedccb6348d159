"""SRe2L's recover step (``dd_sre2l``): BN-statistics matching through hooks on a frozen
teacher's BN layers, the image priors, the per-step clamp of learnable images (the
``Projected`` protocol) and the zoo spec, trained a few steps on a briefly trained teacher."""

from __future__ import annotations

import pytest
import torch
from dgraph.components.dd.sre2l import BNStatMatch, l2_prior, total_variation
from dgraph.components.models.synthetic import SyntheticDigits
from helpers import QUIET

from dgraph.api import train
from dgraph.declare import Projected
from dgraph.graph import validate
from dgraph.registry import BuildContext
from dgraph.runtime.checkpoint import load_weights
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec

FAST = [f"nodes.{node}.params.{value}" for node in ("synthetic", "random_real")
        for value in ("seeds=[0]", "steps=10")]


def _bn_net() -> torch.nn.Module:
    """BN2d(2) -> flatten -> BN1d(2), eps 0, with chosen running statistics, eval mode."""
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(2, eps=0.0), torch.nn.Flatten(),
                              torch.nn.BatchNorm1d(2, eps=0.0))
    with torch.no_grad():
        net[0].running_mean.copy_(torch.tensor([1.0, 2.0]))
        net[0].running_var.copy_(torch.tensor([1.0, 1.0]))
        net[2].running_mean.zero_()
        net[2].running_var.fill_(1.0)
    return net.eval()


def _match(net: torch.nn.Module) -> torch.nn.Module:
    return BNStatMatch.create(BuildContext(node="bn", references={"model": net}),
                              model="teacher")


def test_bn_statistics_loss_follows_the_formula_by_hand():
    net = _bn_net()
    bn = _match(net)
    # x [2, 2, 1, 1]: channel 0 holds 1, 3 (mean 2, var 1); channel 1 holds 0, 4 (mean 2,
    # var 4). Layer 1: ||(2, 2) - (1, 2)|| + ||(1, 4) - (1, 1)|| = 1 + 3 = 4.
    # Its output (x - running_mean) / 1: channel 0 is 0, 2 and channel 1 is -2, 2, so layer 2
    # sees mean (1, 0), var (1, 4): ||(1, 0)|| + ||(1, 4) - (1, 1)|| = 1 + 3 = 4. Sum 8.
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0]]).reshape(2, 2, 1, 1).requires_grad_()
    out = net(x)
    loss = bn(after=out)["loss"]
    assert loss.item() == pytest.approx(8.0, abs=1e-6)
    # Gradients reach the images through the teacher; the running statistics do not move.
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert net[0].running_mean.tolist() == [1.0, 2.0] and net[2].running_var.tolist() == [1, 1]
    # The statistics are consumed: a loss without a new forward is an error, not stale values.
    with pytest.raises(ValueError) as err:
        bn(after=out)["loss"]
    assert str(err.value) == ("bn_stat_match: no forward of the model reached BatchNorm layer "
                              "'0' since the last loss; wire 'after' to an output of the "
                              "model fed with the images")
    # The latest forward is the one matched: running statistics themselves give 0 at layer 1.
    net(torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(2, 2, 1, 1))  # means (1, 2), vars (1, 1)
    out = net(x.detach())
    assert bn(after=out)["loss"].item() == pytest.approx(8.0, abs=1e-6)


def test_bn_statistics_need_a_frozen_model_with_batch_norm():
    net = _bn_net().train()
    net[0].eps = net[2].eps = 1e-5  # torch refuses eps 0 in training mode
    bn = _match(net)
    net(torch.ones(2, 2, 1, 1))
    with pytest.raises(ValueError) as err:
        bn(after=torch.ones(2, 2))["loss"]
    assert str(err.value) == ("bn_stat_match: BatchNorm layer '0' of the model is in training "
                              "mode, so its forward changes the running statistics it is "
                              "matched to; make the model node frozen")
    with pytest.raises(ValueError) as err:
        _match(torch.nn.Linear(2, 2))
    assert str(err.value) == ("bn_stat_match: the model named by 'model' has no BatchNorm "
                              "layer (BatchNorm1d/2d/3d) to match")


def test_total_variation_and_l2_prior_by_hand():
    x = torch.tensor([[0.0, 1.0], [3.0, 5.0]]).reshape(1, 1, 2, 2)
    # Down differences 3, 4; right differences 1, 2.
    assert total_variation(x, norm="l1").item() == pytest.approx((3 + 4) / 2 + (1 + 2) / 2)
    assert total_variation(x, norm="l2").item() == pytest.approx((9 + 16) / 2 + (1 + 4) / 2)
    # One row: no vertical pairs, so only the horizontal mean (|2|, |1|) counts.
    row = torch.tensor([0.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    assert total_variation(row, norm="l1").item() == pytest.approx(1.5)
    assert total_variation(torch.ones(1, 1, 1, 1), norm="l2").item() == 0.0
    images = torch.tensor([[1.0, 2.0], [3.0, 0.0]]).reshape(2, 1, 1, 2)
    assert l2_prior(images).item() == pytest.approx((1 + 4 + 9 + 0) / 2)
    assert l2_prior(torch.empty(0, 1, 1, 2)).item() == 0.0


def test_clamp_is_a_projection_called_after_each_step():
    syn = SyntheticDigits.create(images_per_class=1, init="noise", clamp=[0.0, 1.0])
    assert isinstance(syn, Projected)
    with torch.no_grad():
        syn.images.fill_(2.0)
        syn.images[0].fill_(-1.0)
    syn.project()
    assert syn.images[0].unique().tolist() == [0.0] and syn.images[1:].unique().tolist() == [1.0]
    free = SyntheticDigits.create(images_per_class=1, init="noise")
    with torch.no_grad():
        free.images.fill_(2.0)
    free.project()  # no clamp: nothing changes
    assert free.images.unique().tolist() == [2.0]
    with pytest.raises(Exception) as err:
        SyntheticDigits.create(images_per_class=1, init="noise", clamp=[1.0, 0.0])
    assert "clamp must be [low, high] with low < high; found [1.0, 0.0]" in str(err.value)


def test_dd_sre2l_recovers_clamped_images_through_the_frozen_bn_teacher(tmp_path):
    train("teacher_digits_cnn", out=tmp_path / "teacher_digits_cnn",
          overrides=["train.steps=10"], **QUIET)
    run = tmp_path / "dd_sre2l"
    # A large step so that the clamp has work to do.
    graph, _ = validate(load_spec("dd_sre2l", ["train.steps=4", "train.eval.every=4",
                                               "updates.main.optimizer.lr=2.0", *FAST]))
    run.mkdir()
    trainer = Trainer(graph, run, **QUIET)
    syn, teacher = trainer.instances.modules["syn"], trainer.instances.modules["teacher"]
    saved_teacher = load_weights(tmp_path / "teacher_digits_cnn" / "final" /
                                 "teacher.safetensors")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    before = syn.images.detach().clone()
    assert before.min() < 0 or before.max() > 1  # noise init: outside [0, 1] at first
    summary = trainer.run()
    images = syn.images.detach()
    assert not torch.equal(images, before)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert (images == 0.0).any() and (images == 1.0).any()  # the clamp acted
    # The frozen teacher (running statistics included) is the squeezed run's, untouched.
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, saved_teacher[name]), name
    for key in ("loss/bn", "loss/ce", "loss/tv", "loss/l2", "synthetic/accuracy",
                "random_real/accuracy"):
        assert torch.isfinite(torch.tensor(summary[key])), key
    assert summary["loss/bn"] > 0
    # Relabel: the teacher's soft labels softmax(z / 4) on the recovered images.
    relabel = graph.nodes["relabel"].component
    assert relabel.kwargs()["temperature"] == 4.0
