"""Losses against hand computations from their published formulas (no torch loss functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgraph.ports import parse_shape


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


STUDENT = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
TEACHER = [[3.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_hinton_kd_matches_hand_computation_at_t4(build):
    temperature = 4.0
    expected = temperature**2 * sum(
        kl(softmax(t, temperature), softmax(s, temperature))
        for s, t in zip(STUDENT, TEACHER, strict=True)
    ) / len(STUDENT)
    assert expected == pytest.approx(1.246824, abs=1e-6)  # the same formula, evaluated once
    loss = build("hinton_kd", temperature=temperature)(
        student=torch.tensor(STUDENT), teacher=torch.tensor(TEACHER)
    )["loss"]
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hinton_kd_gradient_is_t_times_probability_gap(build):
    temperature = 4.0
    student = torch.tensor(STUDENT, requires_grad=True)
    build("hinton_kd", temperature=temperature)(
        student=student, teacher=torch.tensor(TEACHER)
    )["loss"].backward()
    # d/ds [T^2 * mean_b KL(p_t || p_s)] = T * (p_s - p_t) / B
    expected = [
        [temperature * (ps - pt) / len(STUDENT)
         for ps, pt in zip(softmax(s, temperature), softmax(t, temperature), strict=True)]
        for s, t in zip(STUDENT, TEACHER, strict=True)
    ]
    assert torch.allclose(student.grad, torch.tensor(expected), atol=1e-6)


def test_hinton_kd_is_forward_kl_teacher_to_student(build):
    # p_s = [0.1, 0.9], p_t = [0.9, 0.1]: KL(p_t || p_s) = 0.9 ln 9 + 0.1 ln(1/9) = 0.8 ln 9.
    student = torch.tensor([[math.log(0.1), math.log(0.9)]])
    teacher = torch.tensor([[math.log(0.9), math.log(0.1)]])
    loss = build("hinton_kd", temperature=1.0)(student=student, teacher=teacher)["loss"]
    assert loss.item() == pytest.approx(0.8 * math.log(9), rel=1e-6)
    unscaled = build("hinton_kd", temperature=2.0, scale_by_t2=False)
    scaled = build("hinton_kd", temperature=2.0)
    a = unscaled(student=student, teacher=teacher)["loss"].item()
    assert scaled(student=student, teacher=teacher)["loss"].item() == pytest.approx(4 * a)


def test_hinton_kd_does_not_detach_teacher(build):
    teacher = torch.tensor(TEACHER, requires_grad=True)
    build("hinton_kd")(student=torch.tensor(STUDENT), teacher=teacher)["loss"].backward()
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0


def test_kd_ports_share_symbols(make):
    comp = make("hinton_kd")
    shapes = {name: parse_shape(port.shape) for name, port in comp.inputs.items()}
    assert shapes["student"] == shapes["teacher"]
    assert [d.symbol for d in shapes["student"]] == ["B", "C"]
    assert comp.outputs["loss"].type == "Scalar" and comp.outputs["loss"].shape is None


LOGITS = [[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.5]]
TARGET = [0, 2, 1]


def nll(row: list[float], label: int) -> float:
    return -math.log(softmax(row)[label])


def test_cross_entropy_plain_and_masked(build):
    loss_fn = build("cross_entropy")
    logits, target = torch.tensor(LOGITS), torch.tensor(TARGET)
    expected_all = sum(nll(r, y) for r, y in zip(LOGITS, TARGET, strict=True)) / 3
    assert loss_fn(logits=logits, target=target)["loss"].item() == pytest.approx(expected_all)

    mask = torch.tensor([True, False, True])
    expected_masked = (nll(LOGITS[0], 0) + nll(LOGITS[2], 1)) / 2
    assert loss_fn(logits=logits, target=target, mask=mask)["loss"].item() == pytest.approx(
        expected_masked
    )
    # A negative label marks an unlabelled example even without a mask.
    unlabelled = torch.tensor([0, -1, 1])
    assert loss_fn(logits=logits, target=unlabelled)["loss"].item() == pytest.approx(
        expected_masked
    )


def test_cross_entropy_empty_mask_is_zero_and_differentiable(build):
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = build("cross_entropy")(
        logits=logits, target=torch.tensor(TARGET), mask=torch.zeros(3, dtype=torch.bool)
    )["loss"]
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 3))


def test_cross_entropy_label_smoothing(build):
    eps, classes = 0.1, 3
    expected = 0.0
    for row, label in zip(LOGITS, TARGET, strict=True):
        log_p = [math.log(p) for p in softmax(row)]
        expected += -(1 - eps) * log_p[label] - eps / classes * sum(log_p)
    expected /= len(LOGITS)
    loss = build("cross_entropy", label_smoothing=eps)(
        logits=torch.tensor(LOGITS), target=torch.tensor(TARGET)
    )["loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_declares_optional_mask(make):
    inputs = make("cross_entropy").inputs
    assert inputs["mask"].optional and inputs["mask"].type == "Mask"
    assert not inputs["logits"].optional and not inputs["target"].optional


def test_mse(build):
    prediction, target = torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3)
    assert build("mse")(prediction=prediction, target=target)["loss"].item() == pytest.approx(
        14 / 3
    )
    summed = build("mse", reduction="sum")(prediction=prediction, target=target)["loss"]
    assert summed.item() == pytest.approx(14.0)
    with pytest.raises(ValueError, match=r"'prediction' has shape \[1, 3\] but 'target' has"):
        build("mse")(prediction=prediction, target=torch.zeros(3))


def test_feature_mse_both_reductions(build):
    student = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]])
    teacher = torch.zeros(2, 3)
    mean = build("feature_mse")(student=student, teacher=teacher)["loss"]
    assert mean.item() == pytest.approx((1 + 4 + 4 + 0 + 9 + 16) / 6)
    half = build("feature_mse", reduction="half_squared_norm")(student=student, teacher=teacher)
    assert half["loss"].item() == pytest.approx(0.5 * (9 + 25) / 2)
    with pytest.raises(ValueError, match="projector"):
        build("feature_mse")(student=student, teacher=torch.zeros(2, 4))


def test_cosine_feature(build):
    loss_fn = build("cosine_feature")
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0], [3.0, 3.0], [-1.0, 0.0]])
    # cosines 0, 1, -1 -> distances 1, 0, 2
    assert loss_fn(student=student, teacher=teacher)["loss"].item() == pytest.approx(1.0)

    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 4, 3, 3)), rng.normal(size=(2, 4, 3, 3))
    cos = (s * t).sum(1) / (np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1))
    got = loss_fn(student=torch.tensor(s), teacher=torch.tensor(t))["loss"].item()
    assert got == pytest.approx(float((1 - cos).mean()), rel=1e-6)
