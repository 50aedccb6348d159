"""Every loss at its edges: ``-inf`` logits, empty batches, fp16 inputs, near-cancellation.

The expected values are computed here in plain Python floats (float64) from the published
formulas, with the sums written out: never by calling the code under test. Where the true value
is finite the gradients must be finite too (``torch.autograd.grad``).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.registry import COMPONENTS, BuildContext, load_plugins
from dgraph.spec import load_spec, resolve_spec_path

load_plugins()

INF = math.inf


def build(type_name: str, **params):
    cls = COMPONENTS.get(type_name)
    component = cls(cls.Params.model_validate(params), node=type_name)
    # Nodes a loss refers to (lelp's teacher and data) are read only by its fit, which an
    # empty batch never reaches: they are absent here.
    absent = dict.fromkeys(component.references())
    return component.build(BuildContext(node=type_name, references=absent))


def leaf(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).requires_grad_(True)


def grads_finite(loss: torch.Tensor, *inputs: torch.Tensor) -> None:
    for grad in torch.autograd.grad(loss, inputs):
        assert torch.isfinite(grad).all(), grad


# -- the formulas, in plain Python --------------------------------------------------------------
def softmax(z: list[float], temperature: float = 1.0) -> list[float]:
    """``exp(z_c / T) / sum_k exp(z_k / T)``; a ``-inf`` logit has probability exactly 0."""
    top = max(z) / temperature
    e = [math.exp(v / temperature - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


def kl(p: list[float], q: list[float]) -> float:
    """``sum_c p_c log(p_c / q_c)`` with ``0 log 0 = 0``; ``inf`` where ``p_c > 0 = q_c``."""
    total = 0.0
    for pc, qc in zip(p, q, strict=True):
        if pc == 0.0:
            continue
        if qc == 0.0:
            return INF
        total += pc * math.log(pc / qc)
    return total


def jsd(p_s: list[float], p_t: list[float], beta: float) -> float:
    m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s, strict=True)]
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


def dkd_parts(z_s: list[float], z_t: list[float], g: int, temperature: float
              ) -> tuple[float, float]:
    """(TCKD, NCKD) of one example, from the DKD paper's definitions."""
    p_s, p_t = softmax(z_s, temperature), softmax(z_t, temperature)
    rest_s = sum(p for c, p in enumerate(p_s) if c != g)  # 1 - p_g, summed without cancelling
    rest_t = sum(p for c, p in enumerate(p_t) if c != g)
    tckd = kl([p_t[g], rest_t], [p_s[g], rest_s])
    q_s = [p / rest_s for c, p in enumerate(p_s) if c != g]
    q_t = [p / rest_t for c, p in enumerate(p_t) if c != g] if rest_t > 0 else [0.0] * len(q_s)
    return tckd, kl(q_t, q_s)


# Student and teacher class scores with -inf entries: column 1 is -inf on both sides (a masked
# class), column 3 only in the teacher (a class the teacher rules out).
ZS = [[1.0, -INF, 0.5, 2.0], [0.0, -INF, -1.0, 3.0]]
ZT = [[2.0, -INF, 1.0, -INF], [1.0, -INF, 0.5, -INF]]


# -- hinton_kd and kl_div ------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_hinton_kd_is_exact_with_teacher_and_shared_minus_inf(temperature):
    s, t = leaf(ZS), leaf(ZT)
    loss = build("hinton_kd", temperature=temperature)(student=s, teacher=t)["loss"]
    expected = temperature**2 * sum(
        kl(softmax(b, temperature), softmax(a, temperature)) for a, b in zip(ZS, ZT, strict=True)
    ) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    grads_finite(loss, s, t)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_div_is_exact_with_minus_inf_where_the_weight_is_zero(direction):
    # forward weighs by the teacher (zero at columns 1, 3); reverse by the student, so the
    # reverse case swaps the inputs to keep every weight-zero entry on the weighting side.
    zs, zt = (ZS, ZT) if direction == "forward" else (ZT, ZS)
    s, t = leaf(zs), leaf(zt)
    loss = build("kl_div", direction=direction, temperature=2.0, scale_by_t2=True)(
        student=s, teacher=t)["loss"]
    pairs = [(softmax(b, 2.0), softmax(a, 2.0)) for a, b in zip(zs, zt, strict=True)]
    if direction == "reverse":
        pairs = [(q, p) for p, q in pairs]
    expected = 4.0 * sum(kl(p, q) for p, q in pairs) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    grads_finite(loss, s, t)


@pytest.mark.parametrize(("type_name", "params"), [
    ("hinton_kd", {}), ("kl_div", {}), ("kl_div", {"direction": "reverse"}),
])
def test_a_zero_probability_where_the_weight_is_positive_gives_plus_inf(type_name, params):
    # KL(p || q) with p_c > 0 = q_c is infinite: reported as +inf, never NaN.
    weighted, zero = [[0.0, 1.0]], [[0.0, -INF]]
    student, teacher = (zero, weighted) if params.get("direction") != "reverse" else (
        weighted, zero)
    loss = build(type_name, **params)(student=leaf(student), teacher=leaf(teacher))["loss"]
    assert loss.item() == INF


# -- token losses --------------------------------------------------------------------------------
# [B=1, T=3, V=4]: entry 0 is -inf on both sides everywhere (a padded vocabulary row);
# position 1 has a teacher -inf at entry 3; position 2 is masked out below.
TS = [[[-INF, 1.0, 0.0, 2.0], [-INF, 0.5, 0.5, 1.0], [-INF, 3.0, 1.0, 0.0]]]
TT = [[[-INF, 2.0, 1.0, 0.0], [-INF, 1.0, 0.0, -INF], [-INF, 0.0, 0.0, 4.0]]]
MASK = [[True, True, False]]


def _token_expected(per_position, mask=None) -> float:
    kept = [v for v, m in zip(per_position, mask or [True] * len(per_position), strict=True)
            if m]
    return sum(kept) / max(len(kept), 1)


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_kl_forward_is_exact_with_shared_minus_inf(use_mask, temperature):
    s, t = leaf(TS), leaf(TT)
    mask = torch.tensor(MASK) if use_mask else None
    out = build("token_kl", temperature=temperature)(student=s, teacher=t, mask=mask)
    per = [temperature**2 * kl(softmax(b, temperature), softmax(a, temperature))
           for a, b in zip(TS[0], TT[0], strict=True)]
    expected = _token_expected(per, MASK[0] if use_mask else None)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    grads_finite(out["loss"], s, t)


def test_token_kl_reverse_is_exact_with_shared_minus_inf():
    # reverse weighs by the student: give the student the extra -inf (entry 3 at position 1).
    s, t = leaf(TT), leaf(TS)
    out = build("token_kl", direction="reverse")(student=s, teacher=t)
    per = [kl(softmax(a), softmax(b)) for a, b in zip(TT[0], TS[0], strict=True)]
    assert out["loss"].item() == pytest.approx(_token_expected(per), rel=1e-6)
    grads_finite(out["loss"], s, t)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_token_jsd_is_exact_with_minus_inf_on_either_side(beta):
    # For 0 < beta < 1 the JSD is finite even where only one side is -inf (position 1, entry
    # 3 of the teacher). beta = 0 is the forward KL, finite as it weighs by the teacher;
    # beta = 1 the reverse KL, weighing by the student, so that case swaps the inputs.
    zs, zt = (TS, TT) if beta < 1.0 else (TT, TS)
    s, t = leaf(zs), leaf(zt)
    out = build("token_jsd", beta=beta)(student=s, teacher=t)
    per = []
    for a, b in zip(zs[0], zt[0], strict=True):
        p_s, p_t = softmax(a), softmax(b)
        per.append(kl(p_t, p_s) if beta == 0.0 else kl(p_s, p_t) if beta == 1.0
                   else jsd(p_s, p_t, beta))
    assert out["loss"].item() == pytest.approx(_token_expected(per), rel=1e-6)
    grads_finite(out["loss"], s, t)


def test_token_kl_where_only_the_student_is_minus_inf_is_plus_inf():
    # KL(p_t || p_s) with the teacher's mass on a -inf student entry is infinite.
    out = build("token_kl")(student=leaf(TT), teacher=leaf(TS))
    assert out["loss"].item() == INF


def test_token_jsd_mixture_where_both_sides_are_minus_inf_has_zero_gradient():
    # Entry 0 is -inf on both sides: it must neither add to the loss nor send NaN backwards.
    s, t = leaf(TS), leaf(TT)
    out = build("token_jsd", beta=0.5)(student=s, teacher=t)
    g_s, g_t = torch.autograd.grad(out["loss"], (s, t))
    assert torch.equal(g_s[..., 0], torch.zeros(1, 3))
    assert torch.equal(g_t[..., 0], torch.zeros(1, 3))


def test_token_topk_kl_with_minus_inf_cached_logprobs():
    # The cache holds -inf for a token the teacher rules out (probability 0).
    student = leaf([[[0.5, 1.0, -1.0, 2.0]]])
    p_t = [0.7, 0.3, 0.0]
    logprobs = torch.tensor([[[math.log(0.7), math.log(0.3), -INF]]])
    indices = torch.tensor([[[3, 1, 0]]])
    out = build("token_topk_kl")(student=student, topk_logprobs=logprobs, topk_indices=indices)
    q = softmax([0.5, 1.0, -1.0, 2.0])
    expected = kl(p_t, [q[3], q[1], q[0]])
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    grads_finite(out["loss"], student)


def test_token_topk_kl_other_bucket_does_not_cancel():
    # The student puts all but ~1e-9 of its mass on the top-2 tokens: 1 - sum_K q cancels in
    # float32 (to 0 or a rounding error), while the teacher keeps 10% outside its top 2.
    z = [30.0, 30.0, 10.0, 9.0]
    student = leaf([[z]])
    p_top = [0.6, 0.3]
    logprobs = torch.tensor([[[math.log(0.6), math.log(0.3)]]])
    indices = torch.tensor([[[0, 1]]])
    out = build("token_topk_kl", missing_mass="other")(
        student=student, topk_logprobs=logprobs, topk_indices=indices)
    q = softmax(z)
    expected = kl(p_top + [0.1], [q[0], q[1], q[2] + q[3]])
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    grads_finite(out["loss"], student)


# -- DKD -----------------------------------------------------------------------------------------
def _dkd(zs, zt, target, temperature, alpha, beta):
    s, t = leaf(zs), leaf(zt)
    loss = build("dkd", alpha=alpha, beta=beta, temperature=temperature)(
        student=s, teacher=t, target=torch.tensor(target))["loss"]
    return loss, s, t


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_is_exact_with_minus_inf_logits(temperature):
    zs = [[1.0, -INF, 0.5, 2.0], [0.0, -INF, -1.0, 3.0]]
    zt = [[2.0, -INF, 1.0, -INF], [1.0, -INF, 0.5, -INF]]
    target = [0, 2]
    parts = [dkd_parts(a, b, g, temperature) for a, b, g in zip(zs, zt, target, strict=True)]
    tckd = sum(p[0] for p in parts) / 2
    nckd = sum(p[1] for p in parts) / 2
    for alpha, beta, expected in [(1.0, 0.0, tckd), (0.0, 1.0, nckd),
                                  (1.0, 8.0, tckd + 8 * nckd)]:
        loss, s, t = _dkd(zs, zt, target, temperature, alpha, beta)
        assert loss.item() == pytest.approx(temperature**2 * expected, rel=1e-5)
        grads_finite(loss, s, t)


def test_dkd_teacher_with_no_mass_outside_the_target_has_zero_nckd():
    # A one-hot teacher: q_t is undefined (0/0) but weighs 0 in KD = TCKD + (1 - p_g) NCKD.
    zs, zt = [[1.0, 0.0, -1.0]], [[0.0, -INF, -INF]]
    nckd, s, t = _dkd(zs, zt, [0], 1.0, 0.0, 1.0)
    assert nckd.item() == 0.0
    grads_finite(nckd, s, t)
    tckd, s, t = _dkd(zs, zt, [0], 1.0, 1.0, 0.0)
    assert tckd.item() == pytest.approx(-math.log(softmax(zs[0])[0]), rel=1e-6)
    grads_finite(tckd, s, t)


def test_dkd_tckd_does_not_cancel_when_p_g_is_near_one():
    # p_g^s = 1 - 4.6e-8 and p_g^t = 1 - 1.1e-5 at T = 4: in float32 1 - p_g^s rounds to 0 or
    # 6e-8, which made TCKD 2.7e-3 where the true value is 8.06e-4.
    zs, zt, target, temperature = [[72.0, 0.0, 0.0, 0.0]], [[50.0, 0.0, 0.0, 0.0]], [0], 4.0
    expected = temperature**2 * dkd_parts(zs[0], zt[0], 0, temperature)[0]
    assert expected == pytest.approx(8.0568e-4, rel=1e-4)
    loss, s, t = _dkd(zs, zt, target, temperature, 1.0, 0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-3)
    grads_finite(loss, s, t)


# -- cross-entropy and perplexity ----------------------------------------------------------------
def test_cross_entropy_with_minus_inf_non_target_logits():
    z = [[-INF, 1.0, 2.0], [0.5, -INF, 0.0]]
    target = [2, 0]
    for mask in (None, torch.tensor([True, True])):
        logits = leaf(z)
        loss = build("cross_entropy")(logits=logits, target=torch.tensor(target),
                                      mask=mask)["loss"]
        expected = -sum(math.log(softmax(row)[y]) for row, y in zip(z, target, strict=True)) / 2
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        grads_finite(loss, logits)


@pytest.mark.parametrize("params", [{}, {"label_smoothing": 0.1}])
def test_cross_entropy_is_plus_inf_where_the_target_distribution_meets_minus_inf(params):
    # The target class at -inf, or label smoothing (mass eps/C on a -inf class): infinite.
    z, target = ([[0.0, -INF]], [1]) if not params else ([[0.0, -INF]], [0])
    loss = build("cross_entropy", **params)(logits=leaf(z), target=torch.tensor(target))["loss"]
    assert loss.item() == INF


def test_token_ce_and_perplexity_with_minus_inf_logits():
    z = [[[-INF, 1.0, 2.0], [-INF, 0.0, 0.0]]]
    targets = [[2, 1]]
    logits = leaf(z)
    out = build("token_ce")(logits=logits, targets=torch.tensor(targets))
    expected = -sum(math.log(softmax(row)[y]) for row, y in zip(z[0], targets[0], strict=True)) / 2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    grads_finite(out["loss"], logits)
    ppl = build("lm_perplexity")(logits=logits.detach(), targets=torch.tensor(targets))
    assert ppl["perplexity"].item() == pytest.approx(math.exp(expected), rel=1e-6)


# -- GAN -----------------------------------------------------------------------------------------
def test_gan_losses_at_infinite_logits():
    # softplus(-inf) = 0 exactly; softplus(+inf) = +inf (the critic is certain and wrong).
    real, fake = leaf([[INF], [1.0]]), leaf([[-INF], [0.5]])
    critic = build("gan_critic_loss")(real=real, fake=fake)["loss"]
    expected = (math.log1p(math.exp(-1.0)) + 0.0) / 2 + (0.0 + math.log1p(math.exp(0.5))) / 2
    assert critic.item() == pytest.approx(expected, rel=1e-6)
    grads_finite(critic, real, fake)
    generator = build("gan_generator_loss")(fake=leaf([[-INF], [0.5]]))["loss"]
    assert generator.item() == INF


# -- attention transfer --------------------------------------------------------------------------
def test_attention_transfer_refuses_p_below_one_with_a_located_error():
    spec = load_spec(resolve_spec_path("at"), ["nodes.at1.params.p=0.5"])
    message = (
        "1 problem found in the spec:\n"
        "<--set nodes.at1.params.p=0.5>: error[bad-param]: node 'at1': parameter 'p' of "
        "'attention_transfer': Input should be greater than or equal to 1\n"
        "    expected: greater than or equal to 1\n"
        "    found:    0.5\n"
        "    hint: `dgraph list loss` shows the parameters of 'attention_transfer' and their "
        "defaults"
    )
    with pytest.raises(ValidationError, match=re.escape(message)):
        validate(spec)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("reduction", ["norm", "mean_squared"])
def test_attention_transfer_gradients_are_finite_at_zero_features(p, reduction):
    # ReLU features: many exact zeros, a whole zero map, and student map == teacher map.
    torch.manual_seed(0)
    f = torch.relu(torch.randn(2, 3, 4, 4))
    f[0] = 0.0
    s, t = f.clone().requires_grad_(True), f.clone().requires_grad_(True)
    loss = build("attention_transfer", p=p, reduction=reduction)(student=s, teacher=t)["loss"]
    assert loss.item() == 0.0
    grads_finite(loss, s, t)


# -- empty batches -------------------------------------------------------------------------------
def _empty_cases():
    e2 = lambda c=5: torch.zeros(0, c)  # noqa: E731
    labels = torch.zeros(0, dtype=torch.int64)
    tok = lambda v=7: torch.zeros(0, 3, v)  # noqa: E731
    tok_ids = torch.zeros(0, 3, dtype=torch.int64)
    cases = [
        ("hinton_kd", {}, {"student": e2(), "teacher": e2()}),
        ("kl_div", {}, {"student": e2(), "teacher": e2()}),
        ("kl_div", {"direction": "reverse"}, {"student": e2(), "teacher": e2()}),
        ("dkd", {}, {"student": e2(), "teacher": e2(), "target": labels}),
        ("cross_entropy", {}, {"logits": e2(), "target": labels}),
        ("cross_entropy", {"label_smoothing": 0.1},
         {"logits": e2(), "target": labels, "mask": torch.zeros(0, dtype=torch.bool)}),
        ("mse", {}, {"prediction": e2(), "target": e2()}),
        ("mse", {"reduction": "sum"}, {"prediction": e2(), "target": e2()}),
        ("feature_mse", {}, {"student": e2(), "teacher": e2()}),
        ("feature_mse", {"reduction": "half_squared_norm"}, {"student": e2(), "teacher": e2()}),
        ("cosine_feature", {}, {"student": e2(), "teacher": e2()}),
        ("gan_critic_loss", {}, {"real": e2(1), "fake": e2(1)}),
        ("gan_generator_loss", {}, {"fake": e2(1)}),
        ("attention_transfer", {}, {"student": torch.zeros(0, 2, 3, 3),
                                    "teacher": torch.zeros(0, 4, 3, 3)}),
        ("attention_transfer", {"reduction": "mean_squared"},
         {"student": torch.zeros(0, 2, 3, 3), "teacher": torch.zeros(0, 4, 3, 3)}),
        ("rkd_distance", {}, {"student": e2(), "teacher": e2(3)}),
        ("rkd_angle", {}, {"student": e2(), "teacher": e2(3)}),
        ("crd", {"num_data": 4, "dim": 5, "num_negatives": 2},
         {"student": e2(), "teacher": e2(), "index": labels}),
        ("distribution_matching", {"num_classes": 3},
         {"real": e2(), "real_labels": labels, "synthetic": e2(), "synthetic_labels": labels}),
        ("token_kl", {}, {"student": tok(), "teacher": tok()}),
        ("token_kl", {"direction": "reverse"}, {"student": tok(), "teacher": tok()}),
        ("token_jsd", {}, {"student": tok(), "teacher": tok()}),
        ("token_ce", {}, {"logits": tok(), "targets": tok_ids}),
        ("token_topk_kl", {}, {"student": tok(), "topk_logprobs": tok(2),
                               "topk_indices": torch.zeros(0, 3, 2, dtype=torch.int64)}),
        ("token_topk_kl", {"missing_mass": "other"},
         {"student": tok(), "topk_logprobs": tok(2),
          "topk_indices": torch.zeros(0, 3, 2, dtype=torch.int64)}),
        ("token_hidden", {}, {"student": tok(4), "teacher": tok(4)}),
        ("token_hidden", {"metric": "cosine"}, {"student": tok(4), "teacher": tok(4)}),
        ("ofa_loss", {}, {"student": e2(), "teacher": e2(), "target": labels}),
        ("ofa_loss", {"gamma": 2.0, "variant": "reference"},
         {"student": e2(), "teacher": e2(), "target": labels}),
        ("guided_self_distill", {"alpha": 0.5}, {"student": e2(), "teacher": e2(),
                                                 "target": labels}),
        ("guided_self_distill", {"alpha": 0.5, "form": "mse"},
         {"student": e2(), "teacher": e2(), "target": labels}),
        # An empty batch returns before the fit, which needs the teacher and the data.
        ("lelp", {"model": "teacher", "data": "data", "subclasses": 2},
         {"student": e2(4), "teacher": e2(2), "embeddings": e2(3)}),
    ]
    return [pytest.param(name, params, inputs,
                         id="-".join([name, *(f"{k}={v}" for k, v in params.items())]))
            for name, params, inputs in cases]


@pytest.mark.parametrize(("type_name", "params", "inputs"), _empty_cases())
def test_an_empty_batch_gives_zero_and_zero_gradients(type_name, params, inputs):
    inputs = {k: v.requires_grad_(True) if v.is_floating_point() else v
              for k, v in inputs.items()}
    loss = build(type_name, **params)(**inputs)["loss"]
    assert loss.item() == 0.0
    floats = [v for v in inputs.values() if v.is_floating_point()]
    for grad in torch.autograd.grad(loss, floats):  # connected: no allow_unused needed
        assert torch.equal(grad, torch.zeros_like(grad))


def test_every_loss_has_an_empty_batch_case():
    losses = {name for name in COMPONENTS
              if COMPONENTS.get(name).__module__.startswith("dgraph.components.losses.")
              and "loss" in COMPONENTS.get(name).roles}  # not a branch head living beside one
    covered = {case.values[0] for case in _empty_cases()}
    assert losses == covered


@pytest.mark.parametrize("type_name", ["rkd_distance", "rkd_angle"])
def test_rkd_with_too_few_examples_for_one_term_gives_zero(type_name):
    n = 1 if type_name == "rkd_distance" else 2
    s = leaf([[1.0, 2.0], [3.0, 4.0]][:n])
    t = leaf([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0]][:n])
    loss = build(type_name)(student=s, teacher=t)["loss"]
    assert loss.item() == 0.0
    for grad in torch.autograd.grad(loss, (s, t)):
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(("type_name", "port"), [
    ("token_kl", "teacher"), ("token_jsd", "teacher"), ("token_ce", "targets"),
    ("token_hidden", "teacher"),
])
def test_a_token_mask_with_no_true_entry_gives_zero_and_zero_gradients(type_name, port):
    torch.manual_seed(0)
    first = "logits" if type_name == "token_ce" else "student"
    s = torch.randn(2, 3, 5).requires_grad_(True)
    other = torch.randint(5, (2, 3)) if port == "targets" else torch.randn(2, 3, 5)
    out = build(type_name)(**{first: s, port: other, "mask": torch.zeros(2, 3, dtype=torch.bool)})
    assert (out["loss"].item(), out["sum"].item(), out["count"].item()) == (0.0, 0.0, 0.0)
    (grad,) = torch.autograd.grad(out["loss"], (s,))
    assert torch.equal(grad, torch.zeros_like(grad))


def test_lm_perplexity_of_no_token_is_one():
    out = build("lm_perplexity")(logits=torch.randn(1, 2, 4), targets=torch.zeros(1, 2).long(),
                                 mask=torch.zeros(1, 2, dtype=torch.bool))
    assert (out["perplexity"].item(), out["nll"].item(), out["count"].item()) == (1.0, 0.0, 0.0)


# -- fp16 inputs ---------------------------------------------------------------------------------
def _f64(x: torch.Tensor) -> list:
    return x.detach().double().tolist()


@pytest.mark.parametrize("type_name", ["hinton_kd", "kl_div", "dkd"])
def test_fp16_logits_with_minus_inf_are_computed_in_float32(type_name):
    s, t = leaf(ZS, torch.float16), leaf(ZT, torch.float16)
    args = {"student": s, "teacher": t}
    if type_name == "dkd":
        args["target"] = torch.tensor([0, 2])
    loss = build(type_name, temperature=2.0)(**args)["loss"]
    assert loss.dtype == torch.float32
    zs, zt = _f64(s), _f64(t)  # the fp16-rounded inputs, in float64
    if type_name == "dkd":
        parts = [dkd_parts(a, b, g, 2.0) for a, b, g in zip(zs, zt, [0, 2], strict=True)]
        expected = 4.0 * sum(p[0] + 8.0 * p[1] for p in parts) / 2
    else:
        scale = 4.0 if type_name == "hinton_kd" else 1.0  # kl_div's scale_by_t2 is off
        expected = scale * sum(kl(softmax(b, 2.0), softmax(a, 2.0))
                               for a, b in zip(zs, zt, strict=True)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    g_s, g_t = torch.autograd.grad(loss, (s, t))
    assert g_s.dtype == torch.float16 and torch.isfinite(g_s).all() and torch.isfinite(g_t).all()


@pytest.mark.parametrize("type_name", ["token_kl", "token_jsd"])
def test_fp16_token_logits_with_minus_inf(type_name):
    s, t = leaf(TS, torch.float16), leaf(TT, torch.float16)
    out = build(type_name)(student=s, teacher=t, mask=torch.tensor(MASK))
    assert out["loss"].dtype == torch.float32
    fn = (lambda a, b: kl(softmax(b), softmax(a))) if type_name == "token_kl" else (
        lambda a, b: jsd(softmax(a), softmax(b), 0.5))
    per = [fn(a, b) for a, b in zip(_f64(s)[0], _f64(t)[0], strict=True)]
    assert out["loss"].item() == pytest.approx(_token_expected(per, MASK[0]), rel=1e-5)
    grads_finite(out["loss"], s, t)


def test_fp16_cross_entropy_and_feature_losses_are_float32():
    torch.manual_seed(0)
    z = torch.randn(3, 4).half()
    z[0, 1] = -INF
    target = torch.tensor([0, 2, 3])
    logits = z.clone().requires_grad_(True)
    ce = build("cross_entropy")(logits=logits, target=target)["loss"]
    rows = _f64(z)
    expected = -sum(math.log(softmax(r)[y]) for r, y in zip(rows, [0, 2, 3], strict=True)) / 3
    assert ce.dtype == torch.float32
    assert ce.item() == pytest.approx(expected, rel=1e-5)
    grads_finite(ce, logits)
    a, b = torch.randn(3, 4).half(), torch.randn(3, 4).half()
    fa, fb = _f64(a), _f64(b)
    squares = [(x - y) ** 2 for ra, rb in zip(fa, fb, strict=True)
               for x, y in zip(ra, rb, strict=True)]
    cases = [
        ("mse", {"prediction": a, "target": b}, sum(squares) / 12),
        ("feature_mse", {"student": a, "teacher": b}, sum(squares) / 12),
        ("feature_mse", {"student": a, "teacher": b, "_": "half"}, 0.5 * sum(squares) / 3),
    ]
    for type_name, inputs, value in cases:
        params = {"reduction": "half_squared_norm"} if inputs.pop("_", None) else {}
        loss = build(type_name, **params)(**inputs)["loss"]
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(value, rel=1e-5)
    cosine = build("cosine_feature")(student=a, teacher=b)["loss"]
    cos = [sum(x * y for x, y in zip(ra, rb, strict=True))
           / math.sqrt(sum(x * x for x in ra) * sum(y * y for y in rb))
           for ra, rb in zip(fa, fb, strict=True)]
    assert cosine.dtype == torch.float32
    assert cosine.item() == pytest.approx(sum(1 - c for c in cos) / 3, rel=1e-5)
