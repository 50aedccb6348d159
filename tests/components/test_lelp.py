"""LELP: the per-class projections, the pseudo-subclass target and loss by hand, the fit run
once and saved with the node, the subclass student, and digits reduced to odd/even."""

from __future__ import annotations

import math

import pytest
import torch
from dgraph.components.losses.lelp import (
    LELP,
    SubclassMLP,
    fit_projections,
    subclass_scores,
    subclass_target,
)

from dgraph.data import DataSource
from dgraph.registry import BuildContext

# Class 0 spreads along x around (2, 0), class 1 along y around (10, 12).
E = torch.tensor([[0.0, 0.0], [4.0, 0.0], [2.0, 1.0], [2.0, -1.0],
                  [10.0, 10.0], [10.0, 14.0], [11.0, 12.0], [9.0, 12.0]])
Y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
SIGMA = math.sqrt(8 / 3)  # std of (-2, 2, 0, 0) with n - 1 = 3


def test_the_fit_finds_each_class_mean_and_main_direction():
    means, vectors, scales = fit_projections(E, Y, classes=2, directions=1)
    assert means.tolist() == [[2.0, 0.0], [10.0, 12.0]]
    assert torch.allclose(vectors, torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64))
    assert torch.allclose(scales, torch.full((2, 1), SIGMA, dtype=torch.float64))
    # the sign is fixed (largest entry positive), whatever the SVD returns
    flipped, _, _ = fit_projections(torch.cat([E[:4] * -1 + 4, E[4:]]), Y, 2, 1)[1:2] + (0, 0)
    assert flipped[0, 0].tolist() == [1.0, 0.0]
    two = fit_projections(E, Y, classes=2, directions=2)
    assert torch.allclose(two[1][0, 1].abs(), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(two[2][0, 1], torch.tensor(math.sqrt(2 / 3), dtype=torch.float64))


def test_the_fit_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match=r"^lelp: class 1 has 1 labelled training examples; "
                       r"fitting its subspace needs at least 2$"):
        fit_projections(E[:5], Y[:5], classes=2, directions=1)
    with pytest.raises(ValueError, match=r"^lelp: 3 directions per class do not fit in the "
                       r"teacher's 2-dimensional embeddings; use subclasses <= 4$"):
        fit_projections(E, Y, classes=2, directions=3)


def test_scores_and_target_by_hand():
    fit = fit_projections(E, Y, classes=2, directions=1)
    scores = subclass_scores(torch.tensor([[4.0, 0.0]]), *fit)
    u0, u1 = 2 / SIGMA, -12 / SIGMA
    assert torch.allclose(scores, torch.tensor([[[u0, -u0], [u1, -u1]]], dtype=torch.float64))
    teacher = torch.tensor([[1.0, 0.0]])
    q = subclass_target(teacher, scores, temperature=2.0, sub_temperature=0.5)
    p0 = 1 / (1 + math.exp(-0.5))  # softmax([1, 0] / 2)[0]
    w0 = 1 / (1 + math.exp(-2 * u0 / 0.5))  # softmax([u0, -u0] / 0.5)[0]
    w1 = 1 / (1 + math.exp(-2 * u1 / 0.5))
    expected = [p0 * w0, p0 * (1 - w0), (1 - p0) * w1, (1 - p0) * (1 - w1)]
    assert q[0].tolist() == pytest.approx(expected)
    assert q.sum().item() == pytest.approx(1.0)
    hard = subclass_target(teacher, scores, 2.0, 0.5, assignment="hard")
    assert hard[0].tolist() == pytest.approx([p0, 0.0, 0.0, 1 - p0])


def _setup(subclasses: int = 2):
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh())

    class Teacher(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = teacher, torch.nn.Linear(3, 2)

        def forward(self, x):  # noqa: ANN001, ANN202
            features = self.body(x)
            return {"logits": self.head(features), "features": features}

    model = Teacher()
    data = DataSource(train={"x": E, "y": Y})
    context = BuildContext(node="lelp", references={"model": model, "data": data})
    loss = LELP.create(context, model="teacher", data="data", subclasses=subclasses,
                       temperature=2.0)
    return model, data, loss


def test_the_loss_by_hand_and_the_fit_runs_once():
    model, _data, loss = _setup()
    with torch.no_grad():
        out = model(E)
    student = torch.zeros(8, 4, requires_grad=True)
    value = loss(student=student, teacher=out["logits"], embeddings=out["features"])["loss"]
    assert loss.fits == 1
    fit = fit_projections(out["features"], Y, 2, 1)
    assert all(torch.equal(loss.fit[k], v) for k, v in zip(("means", "vectors", "scales"), fit,
                                                            strict=True))
    q = subclass_target(out["logits"], subclass_scores(out["features"], *fit), 2.0, 1.0)
    # T^2 * mean_b sum_k q (log q - log 1/4): the student is uniform over 4 outputs
    expected = 4.0 * (q * (q.log() - math.log(0.25))).sum(1).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    for _ in range(3):
        loss(student=student, teacher=out["logits"], embeddings=out["features"])
    assert loss.fits == 1  # the teacher did not change: no new fit
    with torch.no_grad():
        model.head.weight.add_(1.0)
        model.body[0].weight.mul_(2.0)
    loss.eval()
    loss(student=student, teacher=out["logits"], embeddings=out["features"])
    assert loss.fits == 1  # evaluation uses the fit it has
    loss.train()
    loss(student=student, teacher=out["logits"], embeddings=out["features"])
    assert loss.fits == 2  # training with a changed teacher fits again
    assert not torch.equal(loss.fit["means"], fit[0])


def test_the_fit_is_saved_with_the_node():
    model, _data, loss = _setup(subclasses=4)
    with torch.no_grad():
        out = model(E)
    student = torch.randn(8, 8)
    first = loss(student=student, teacher=out["logits"], embeddings=out["features"])["loss"]
    state = loss.state_dict()
    saved = torch.load(_roundtrip(state), weights_only=True)
    _, _, fresh = _setup(subclasses=4)
    fresh.load_state_dict(saved)
    again = fresh(student=student, teacher=out["logits"], embeddings=out["features"])["loss"]
    assert fresh.fits == 0 and torch.equal(first, again)
    assert fresh.fit["vectors"].shape == (2, 2, 3)


def _roundtrip(state):  # noqa: ANN001, ANN202
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_the_student_width_must_be_classes_times_subclasses():
    model, _data, loss = _setup(subclasses=4)
    out = model(E)
    with pytest.raises(ValueError, match=r"^lelp: the student has \[8, 6\] subclass scores; "
                       r"with the teacher's 2 classes and subclasses 4 it needs \[B, 8\] \(a "
                       r"subclass_mlp with the same num_classes and subclasses\)$"):
        loss(student=torch.zeros(8, 6), teacher=out["logits"], embeddings=out["features"])


def test_subclasses_must_be_even(make):
    with pytest.raises(ValueError, match="subclasses \\(3\\) must be even: each informative "
                       "direction splits a class into two halves"):
        make("lelp", model="teacher", data="data", subclasses=3)


def test_the_subclass_student_sums_its_subclass_probabilities():
    torch.manual_seed(0)
    net = SubclassMLP.create(in_features=5, hidden=[7], num_classes=3, subclasses=4)
    out = net(x=torch.randn(6, 5))
    assert out["subclass_logits"].shape == (6, 12) and out["features"].shape == (6, 7)
    grouped = out["subclass_logits"].softmax(-1).view(6, 3, 4).sum(-1)
    assert torch.allclose(out["logits"].softmax(-1), grouped, atol=1e-6)


def test_digits_parity_is_digit_mod_two(build):
    source = build("digits_parity", labelled=100)
    assert source.label_names == ["even", "odd"]
    for split in (source.train, source.eval):
        has = split["digit"] >= 0
        assert torch.equal(split["y"][has], split["digit"][has] % 2)
        assert (split["y"][~has] == -1).all()
    assert int((source.train["y"] >= 0).sum()) == 100
    plain = build("digits")
    assert torch.equal(source.eval["x"], plain.eval["x"])
    assert torch.equal(source.eval["digit"], plain.eval["y"])
