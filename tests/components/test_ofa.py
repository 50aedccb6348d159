"""OFA-KD's loss and branch heads, and the ground-truth-weighted self-distillation loss:
values hand-computed from the formulas in components/losses/ofa.py and guided.py."""

from __future__ import annotations

import math

import pytest
import torch
from dgraph.components.losses.guided import (
    GuidedSelfDistill,
    closed_form_alpha,
    kernel_ridge_alpha,
    mixed_target,
)
from dgraph.components.losses.ofa import LogitBranch

from dgraph.data import DataSource
from dgraph.registry import COMPONENTS, BuildContext, load_plugins

load_plugins()

LN2, LN3 = math.log(2.0), math.log(3.0)


def ofa_loss(student, teacher, target, mask=None, **params):
    """The built ``ofa_loss`` node with ``params``, called on the inputs; its ``loss``."""
    cls = COMPONENTS.get("ofa_loss")
    built = cls(cls.Params.model_validate(params), node="ofa").build(BuildContext(node="ofa"))
    inputs = {"student": student, "teacher": teacher, "target": target}
    if mask is not None:
        inputs["mask"] = mask
    return built(**inputs)["loss"]


def _ofa(student, teacher, target, mask=None, **params):
    return ofa_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(target),
                    None if mask is None else torch.tensor(mask), **params)


# p_s = [0.5, 0.5], p_t = softmax([ln 3, 0]) = [0.75, 0.25], target class 0.
@pytest.mark.parametrize(("params", "expected"), [
    ({"gamma": 1.0}, (1.75 + 0.25) * LN2),                       # CE + soft-label KD
    ({"gamma": 2.0}, (1.75 ** 2 + 0.25) * LN2),                  # 3.3125 ln 2
    ({"gamma": 2.0, "variant": "reference"}, (1.75 ** 2 - 1 + 0.25 ** 2) * LN2),  # 2.125 ln 2
    ({"gamma": 1.0, "variant": "reference"}, (0.75 + 0.25) * LN2),  # soft-label KD only
])
def test_ofa_loss_matches_the_hand_computed_value(params, expected):
    value = _ofa([[0.0, 0.0]], [[LN3, 0.0]], [0], **params)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_ofa_loss_enhances_the_teacher_class_where_there_is_no_label():
    # Row 1 has no label (-1): its target class is the teacher's arg-max, class 1
    # (p_t = [0.25, 0.75]); row 2's label is masked out the same way. Student
    # p_s = softmax([0, ln 3]) = [0.25, 0.75].
    student, teacher = [[0.0, LN3]] * 2, [[0.0, LN3]] * 2
    value = _ofa(student, teacher, [-1, 0], mask=[True, False], gamma=2.0)
    per_row = -(0.25 * math.log(0.25) + 1.75 ** 2 * math.log(0.75))
    assert value.item() == pytest.approx(per_row, rel=1e-6)
    # The label wins where there is one: class 0 enhanced instead.
    labelled = _ofa(student, teacher, [0, 0], gamma=2.0)
    assert labelled.item() == pytest.approx(-(1.25 ** 2 * math.log(0.25) + 0.75 * math.log(0.75)),
                                            rel=1e-6)


def test_ofa_loss_temperature_softens_both_sides_and_trains_the_student():
    student = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 4.0, 0.0]])
    value = ofa_loss(student, teacher, torch.tensor([1]), temperature=2.0,
                     gamma=1.0)
    p_t = torch.softmax(teacher / 2.0, -1)[0]
    log_s = torch.log_softmax(student.detach() / 2.0, -1)[0]
    expected = -((p_t * log_s).sum() + log_s[1])
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert student.grad[0, 1] < 0 < student.grad[0, 0]  # towards the (enhanced) class 1


def test_ofa_loss_empty_batch_is_zero_and_mismatched_classes_are_refused():
    empty = ofa_loss(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 3),
                     torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0
    empty.backward()
    with pytest.raises(ValueError) as info:
        ofa_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    assert str(info.value) == (
        "'student' has shape [2, 3] but 'teacher' has shape [2, 4]; they must be equal (both "
        "must score the same classes; give the branch num_classes equal to the teacher's)")
    with pytest.raises(ValueError) as info:
        ofa_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    assert str(info.value) == ("ofa_loss expects student and teacher [B, C] and target [B]; "
                               "found student [2, 3] and target [3]")


def test_logit_branch_pools_feature_maps_and_maps_flat_features():
    torch.manual_seed(0)
    branch = LogitBranch.create(in_features=4, num_classes=3)
    maps = torch.randn(2, 4, 5, 5)
    linear = branch.head[0]
    expected = maps.mean(dim=(2, 3)) @ linear.weight.T + linear.bias
    assert torch.allclose(branch(x=maps)["y"], expected, atol=1e-6)
    flat = torch.randn(2, 4)
    assert torch.allclose(branch(x=flat)["y"], flat @ linear.weight.T + linear.bias, atol=1e-6)
    deep = LogitBranch.create(in_features=4, num_classes=3, hidden=[8])
    assert [type(m).__name__ for m in deep.head] == ["Linear", "ReLU", "Linear"]
    assert deep(x=maps)["y"].shape == (2, 3)


def test_mixed_target_and_closed_form_weight_by_hand():
    p = torch.tensor([[0.3, 0.7], [0.9, 0.1]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    q = mixed_target(p, torch.tensor([0, -1]), 0.25)
    assert torch.allclose(q, torch.tensor([[0.25 + 0.75 * 0.3, 0.75 * 0.7], [0.9, 0.1]],
                                          dtype=torch.float64))
    # Row 1: 1 - ||p||^2 = 0.42, ||y - p||^2 = 0.98 -> alpha = 1 - 0.42/0.98 = 4/7.
    assert closed_form_alpha(p[:1], y[:1]).item() == pytest.approx(4 / 7)
    # Both rows: noise mean(0.42, 0.18) = 0.30, Brier mean(0.98, 0.02) = 0.50 -> 0.4.
    assert closed_form_alpha(p, y).item() == pytest.approx(0.4)
    # A teacher whose arg-max is the label everywhere is trusted (clipped at 0); one that
    # reproduces the labels exactly, or no label at all, gives 1.
    assert closed_form_alpha(p[1:], y[1:]).item() == 0.0
    assert closed_form_alpha(torch.tensor([[1.0, 0.0]]), y[:1]).item() == 1.0
    assert closed_form_alpha(p, torch.tensor([-1, -1])).item() == 1.0


def test_kernel_ridge_weight_by_hand():
    # Features [1], [-1] (+ a constant): F^T F = 2 I, ridge 0.5 -> c = 0.5 * 4 / 2 = 1, so
    # M = F^T / 3. P = 0.5 everywhere, labels 0 and 1; one held-out row [2] (+ 1) of class 0:
    # a = [1/3, 1/3], b = [2/3, -2/3], Y_v - a = [2/3, -1/3] -> alpha = (2/3) / (8/9) = 3/4.
    features = torch.tensor([[1.0], [-1.0]])
    probs = torch.full((2, 2), 0.5)
    alpha = kernel_ridge_alpha(features, probs, torch.tensor([0, 1]), torch.tensor([[2.0]]),
                               torch.tensor([0]), ridge=0.5)
    assert alpha.dtype == torch.float64 and alpha.item() == pytest.approx(0.75)
    # A teacher that reproduces the training labels leaves nothing to weigh: 1. No labelled
    # held-out row: 1. Unlabelled training rows keep the teacher's distribution (b = 0): 1.
    onehot = torch.eye(2)
    assert kernel_ridge_alpha(features, onehot, torch.tensor([0, 1]), torch.tensor([[2.0]]),
                              torch.tensor([0])).item() == 1.0
    assert kernel_ridge_alpha(features, probs, torch.tensor([0, 1]), torch.tensor([[2.0]]),
                              torch.tensor([-1])).item() == 1.0
    assert kernel_ridge_alpha(features, probs, torch.tensor([-1, -1]), torch.tensor([[2.0]]),
                              torch.tensor([0])).item() == 1.0


def test_kernel_ridge_weight_minimises_the_held_out_error_of_the_ridge_fit():
    # The closed form against a direct search: fit the ridge regression to the mixed target
    # for 1,001 weights and score each on the held-out rows.
    g = torch.Generator().manual_seed(0)
    feats, feats_v = torch.randn(60, 5, generator=g), torch.randn(30, 5, generator=g)
    labels, labels_v = feats[:, :3].argmax(1), feats_v[:, :3].argmax(1)  # learnable classes
    probs = torch.softmax(feats[:, :3] + torch.randn(60, 3, generator=g), -1)  # a noisy teacher
    alpha = kernel_ridge_alpha(feats, probs, labels, feats_v, labels_v, ridge=0.1).item()
    phi = torch.cat([feats, torch.ones(60, 1)], 1).double()
    phi_v = torch.cat([feats_v, torch.ones(30, 1)], 1).double()
    gram = phi.T @ phi
    c = 0.1 * gram.diagonal().sum() / 6
    y = torch.nn.functional.one_hot(labels, 3).double()
    y_v = torch.nn.functional.one_hot(labels_v, 3).double()

    def held_out_error(a: float) -> float:
        w = torch.linalg.solve(gram + c * torch.eye(6, dtype=torch.float64),
                               phi.T @ (a * y + (1 - a) * probs.double()))
        return float((phi_v @ w - y_v).square().sum())

    grid = [i / 1000 for i in range(1001)]
    best = min(grid, key=held_out_error)
    assert 0.0 < alpha < 1.0 and abs(alpha - best) <= 1e-3


def _guided(**params):
    torch.manual_seed(0)
    teacher = torch.nn.Linear(3, 2)
    teacher.forward = lambda x, _f=teacher.forward: {"logits": _f(x)}
    x = torch.randn(40, 3)
    source = DataSource(train={"x": x, "y": (x[:, 0] > 0).long()}, batch_size=8)
    context = BuildContext(node="guided", references={"model": teacher, "data": source})
    loss = GuidedSelfDistill.create(context, model="teacher", data="data", **params)
    return loss, teacher, source


def test_guided_loss_values_with_a_fixed_weight():
    loss, _, _ = _guided(alpha=0.5)
    # p_s = softmax([ln 3, 0]) = [0.75, 0.25], p_t = [0.5, 0.5], y = 0:
    # q = 0.5 [1, 0] + 0.5 [0.5, 0.5] = [0.75, 0.25] -> the entropy of q.
    value = loss(student=torch.tensor([[LN3, 0.0]]), teacher=torch.zeros(1, 2),
                 target=torch.tensor([0]))["loss"]
    assert value.item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    mse, _, _ = _guided(alpha=0.5, form="mse")
    # p_s = [0.5, 0.5] against q = [0.75, 0.25]: mean of squares = 0.0625.
    value = mse(student=torch.zeros(1, 2), teacher=torch.zeros(1, 2),
                target=torch.tensor([0]))["loss"]
    assert value.item() == pytest.approx(0.0625)
    assert loss.alpha.item() == 0.5


def test_guided_closed_form_follows_the_teacher_weights():
    loss, teacher, source = _guided()
    batch = {"student": torch.zeros(4, 2), "teacher": torch.zeros(4, 2),
             "target": torch.tensor([0, 1, 0, 1])}
    loss(**batch)

    def expected():
        with torch.no_grad():
            probs = torch.softmax(teacher(source.train["x"])["logits"], -1)
        return closed_form_alpha(probs, source.train["y"]).item()

    first = loss.alpha.item()
    assert first == pytest.approx(expected()) and 0.0 <= first <= 1.0
    with torch.no_grad():  # a new round: the teacher's weights change -> recomputed
        teacher.weight.mul_(-1.0)
    loss(**batch)
    assert loss.alpha.item() == pytest.approx(expected())
    assert loss.alpha.item() != pytest.approx(first)
    # The weight and the fingerprint are buffers: a checkpoint restores them.
    assert set(loss.state_dict()) == {"alpha", "teacher_fingerprint"}


def test_guided_closed_form_names_missing_data_ports():
    loss, _, _ = _guided(input="pixels")
    with pytest.raises(ValueError) as info:
        loss(student=torch.zeros(1, 2), teacher=torch.zeros(1, 2), target=torch.tensor([0]))
    assert str(info.value) == ("guided_self_distill: the data's train split has no 'pixels' "
                               "and 'y' ports (it has ['x', 'y']); set input/labels to its ports")


def test_guided_kernel_ridge_estimate_reads_features_and_the_held_out_split():
    torch.manual_seed(0)
    body, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    teacher = torch.nn.ModuleDict({"body": body, "head": head})
    teacher.forward = lambda x: {"logits": head(torch.tanh(body(x))),
                                 "features": torch.tanh(body(x))}
    x, x_v = torch.randn(40, 3), torch.randn(20, 3)
    source = DataSource(train={"x": x, "y": (x[:, 0] > 0).long()},
                        eval={"x": x_v, "y": (x_v[:, 0] > 0).long()}, batch_size=8)
    context = BuildContext(node="guided", references={"model": teacher, "data": source})
    batch = {"student": torch.zeros(2, 2), "teacher": torch.zeros(2, 2),
             "target": torch.tensor([0, 1])}
    with torch.no_grad():
        out, out_v = teacher(x), teacher(x_v)
    feats, probs, y = out["features"], torch.softmax(out["logits"], -1), source.train["y"]
    # split: eval -> the ridge fits the training split and is scored on the eval split.
    on_eval = GuidedSelfDistill.create(context, model="teacher", data="data",
                                       estimate="kernel_ridge", ridge=0.01, split="eval")
    on_eval(**batch)
    expected = kernel_ridge_alpha(feats, probs, y, out_v["features"], source.eval["y"], 0.01)
    assert on_eval.alpha.item() == pytest.approx(expected.item())
    # The default (split: train) holds out a fixed seeded 20 % of the training rows.
    loss = GuidedSelfDistill.create(context, model="teacher", data="data",
                                    estimate="kernel_ridge", ridge=0.01)
    loss(**batch)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    held, rest = order[:8], order[8:]
    expected = kernel_ridge_alpha(feats[rest], probs[rest], y[rest], feats[held], y[held], 0.01)
    assert loss.alpha.item() == pytest.approx(expected.item())
    assert loss.alpha.item() != pytest.approx(on_eval.alpha.item())
    # A teacher without the feature port, and data without a held-out split: located errors.
    plain, _, train_only = _guided(estimate="kernel_ridge")
    with pytest.raises(ValueError) as info:
        plain(student=torch.zeros(1, 2), teacher=torch.zeros(1, 2), target=torch.tensor([0]))
    assert str(info.value) == ("guided_self_distill: estimate kernel_ridge reads the "
                               "teacher's 'features' output, but it has ['logits']; set "
                               "features to one of them")
    featured = GuidedSelfDistill.create(
        BuildContext(node="guided", references={"model": teacher, "data": train_only}),
        model="teacher", data="data", estimate="kernel_ridge", split="eval")
    with pytest.raises(ValueError) as info:
        featured(student=torch.zeros(1, 2), teacher=torch.zeros(1, 2), target=torch.tensor([0]))
    assert str(info.value) == ("guided_self_distill: the data's eval split has no 'x' and 'y' "
                               "ports (it has []); set input/labels to its ports")
