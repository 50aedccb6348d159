"""Soft labels: ``dd_evaluator`` training on probabilities (soft cross-entropy), the learnable
label logits of DATM (``learnable_soft_labels``), and an EMA target following a tensor node
(FTD's EMA of the synthetic set)."""

from __future__ import annotations

import math

import pytest
import torch
from dgraph.components.data.digits import digits, digits_split
from dgraph.components.dd.evaluate import SetEvaluator, random_real_subset, train_and_test
from dgraph.components.dd.soft_labels import LearnableSoftLabels
from dgraph.components.models.mlp import MLP
from dgraph.components.models.synthetic import SyntheticDigits
from dgraph.components.models.targets import EMATarget

from dgraph.registry import BuildContext

MLP16 = {"hidden": [16]}


@pytest.fixture(scope="module")
def split():
    return digits_split()


def _onehot(labels, classes=10):
    return torch.eye(classes)[labels]


def test_soft_labels_train_the_evaluator_networks_by_hand(split):
    x_train, y_train, test_x, test_y = split
    x, y = random_real_subset(x_train, y_train, dict.fromkeys(range(10), 5), seed=0)
    hard = train_and_test("mlp", x, y, test_x, test_y, seed=0, steps=40, params=MLP16)
    # One-hot soft labels: KL(onehot || q) = CE, the same training, the same accuracy.
    assert train_and_test("mlp", x, y, test_x, test_y, seed=0, steps=40, params=MLP16,
                          soft=_onehot(y)) == hard
    # Soft labels that put all the mass on the next class train the networks on that class,
    # whatever the hard labels say: as hard training with the shifted classes.
    shifted = (y + 1) % 10
    moved = train_and_test("mlp", x, y, test_x, test_y, seed=0, steps=40, params=MLP16,
                           soft=_onehot(shifted))
    assert moved == train_and_test("mlp", x, shifted, test_x, test_y, seed=0, steps=40,
                                   params=MLP16)
    assert hard > 0.7 and moved < 0.1
    # Half on each of two classes, for a single image: the trained network's probabilities
    # reach the soft label (the minimiser of KL(p || q) is q = p).
    torch.manual_seed(0)
    net = MLP.create(in_features=64, hidden=[16], num_classes=10)
    p = 0.5 * _onehot(torch.tensor([3])) + 0.5 * _onehot(torch.tensor([8]))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(100):
        log_q = torch.log_softmax(net(x[:1].flatten(1))["logits"], -1)
        loss = (torch.xlogy(p, p) - p * log_q).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        q = torch.softmax(net(x[:1].flatten(1))["logits"], -1)
    assert q[0, 3] == pytest.approx(0.5, abs=0.01) and q[0, 8] == pytest.approx(0.5, abs=0.01)
    # The value itself, by hand: p = [1/2, 1/2], q = [1/4, 3/4] -> 1/2 ln 2 + 1/2 ln 2/3.
    p2, log_q2 = torch.tensor([[0.5, 0.5]]), torch.log(torch.tensor([[0.25, 0.75]]))
    kl = (torch.xlogy(p2, p2) - p2 * log_q2).sum(-1).mean()
    assert float(kl) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-7)


def test_the_evaluator_trains_on_fed_soft_labels(split):
    x_train, y_train, test_x, test_y = split
    x, y = random_real_subset(x_train, y_train, dict.fromkeys(range(10), 3), seed=1)
    soft = torch.softmax(torch.randn(30, 10, generator=torch.Generator().manual_seed(0)), -1)
    evaluator = SetEvaluator.create(models={"mlp": MLP16}, seeds=[0, 1], steps=20)
    evaluator.reset()
    for tx, ty in zip(test_x.chunk(2), test_y.chunk(2), strict=True):
        evaluator.update(images=x, labels=y, test_x=tx, test_y=ty, soft_labels=soft)
    out = evaluator.compute()
    expected = [train_and_test("mlp", x, y, test_x, test_y, seed=s, steps=20, params=MLP16,
                               soft=soft) for s in (0, 1)]
    assert out["accuracy"] == pytest.approx(sum(expected) / 2, abs=1e-12)
    source = digits.component(digits.component.Params(), "data").build(
        BuildContext(node="data"))
    baseline = SetEvaluator.create(BuildContext(node="random_real",
                                                references={"real": source}),
                                   train_on="random_real", real="data", models={"mlp": MLP16})
    with pytest.raises(ValueError) as info:
        baseline.update(images=x, labels=y, test_x=test_x, test_y=test_y, soft_labels=soft)
    assert str(info.value) == ("soft_labels belong to the fed set; train_on: random_real "
                               "trains on real images with their classes: feed soft_labels "
                               "only to an evaluator with train_on: set")


def test_learnable_soft_labels_start_one_hot_and_learn_only_when_asked():
    torch.manual_seed(0)
    syn = SyntheticDigits.create(BuildContext(node="syn"), images_per_class=2, init="noise")

    def labels(**params):
        return LearnableSoftLabels.create(BuildContext(node="soft", references={"set": syn}),
                                          set="syn", **params)

    fixed = labels()
    out = fixed()
    assert torch.equal(out["probs"], _onehot(syn.labels))
    assert torch.equal(out["logits"], 5.0 * _onehot(syn.labels))
    assert not out["probs"].requires_grad  # a constant: the logits get no gradient
    learned = labels(learn=True, scale=2.0, temperature=2.0)
    probs = learned()["probs"]
    values = probs.detach()
    # softmax([1, 0, ..., 0]) (logit 2 / T 2): e / (e + 9) on the class, 1 / (e + 9) elsewhere.
    assert float(values[0, 0]) == pytest.approx(math.e / (math.e + 9), abs=1e-6)
    assert float(values[0, 1]) == pytest.approx(1 / (math.e + 9), abs=1e-6)
    assert probs.shape == (20, 10) and int(probs[5].argmax()) == 2  # image 5 is of class 2
    (probs[:, 0].sum()).backward()
    assert learned.logits.grad is not None and learned.logits.grad.abs().sum() > 0
    with pytest.raises(ValueError) as info:
        LearnableSoftLabels.create(BuildContext(node="soft", references={
            "set": MLP.create(in_features=4, num_classes=2)}), set="net")
    assert str(info.value) == ("set must name a tensor node holding its classes as a 1-D "
                               "integer tensor 'labels' (synthetic_digits, "
                               "dataset_quantization); it names a MLP")


def test_an_ema_target_follows_a_tensor_node():
    torch.manual_seed(0)
    syn = SyntheticDigits.create(BuildContext(node="syn"), images_per_class=1, init="noise")
    ema = EMATarget.create(BuildContext(node="syn_ema", references={"source": syn}),
                           source="syn", decay=0.75)
    start = syn.images.detach().clone()
    with torch.no_grad():
        syn.images.add_(1.0)
    ema.follow(syn)
    # 0.75 * S_0 + 0.25 * (S_0 + 1) = S_0 + 0.25; the labels are copied.
    assert torch.allclose(ema()["images"], start + 0.25, atol=1e-6)
    assert torch.equal(ema()["labels"], syn.labels)
