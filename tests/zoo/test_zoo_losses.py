"""The zoo's losses against values computed by hand (numpy / math) from the published formulas.

Each expected number is derived here from the paper's formula, independently of the torch code
under test: never by calling that code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgraph.registry import COMPONENTS, BuildContext, load_plugins

load_plugins()


def build(type_name: str, **params):
    cls = COMPONENTS.get(type_name)
    return cls(cls.Params.model_validate(params), node=type_name).build(
        BuildContext(node=type_name))


def t(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


# -- KL ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_forward_and_reverse_kl_equal_0_8_ln_9(direction):
    p_s, p_t = [0.1, 0.9], [0.9, 0.1]
    loss = build("kl_div", direction=direction)(student=t([p_s]).log(), teacher=t([p_t]).log())
    assert float(loss["loss"]) == pytest.approx(0.8 * math.log(9), rel=1e-6)


def test_forward_and_reverse_kl_differ_on_asymmetric_distributions():
    s, te = np.log([[0.2, 0.3, 0.5]]), np.log([[0.7, 0.2, 0.1]])
    forward = build("kl_div", direction="forward")(student=t(s), teacher=t(te))["loss"]
    reverse = build("kl_div", direction="reverse")(student=t(s), teacher=t(te))["loss"]
    p_s, p_t = np.array([0.2, 0.3, 0.5]), np.array([0.7, 0.2, 0.1])
    assert float(forward) == pytest.approx(kl(p_t, p_s), rel=1e-5)
    assert float(reverse) == pytest.approx(kl(p_s, p_t), rel=1e-5)


def test_hinton_kd_t4_is_batchmean_kl_times_t_squared():
    zs = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = np.array([[3.0, 0.0, 1.0], [0.5, 0.5, 2.0]])
    expected = 16.0 * np.mean([kl(softmax(zt[b] / 4), softmax(zs[b] / 4)) for b in range(2)])
    loss = build("hinton_kd", temperature=4.0)(student=t(zs), teacher=t(zt))["loss"]
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# -- DKD -----------------------------------------------------------------------------------------
ZS = np.array([[1.0, 2.0, 3.0, 0.0], [0.5, -1.0, 2.0, 1.0]])
ZT = np.array([[3.0, 1.0, 0.0, 0.5], [0.0, 2.0, 1.5, -0.5]])
TARGET = [0, 2]


def _dkd_by_hand(T: float) -> tuple[float, float, float]:
    """(TCKD, NCKD, KL(p_t || p_s)) averaged over the batch, from the DKD paper's definitions."""
    tckd, nckd, full = [], [], []
    for zs, zt, g in zip(ZS / T, ZT / T, TARGET, strict=True):
        p_s, p_t = softmax(zs), softmax(zt)
        b_s, b_t = np.array([p_s[g], 1 - p_s[g]]), np.array([p_t[g], 1 - p_t[g]])
        tckd.append(kl(b_t, b_s))
        others = [c for c in range(len(zs)) if c != g]
        q_s = np.exp(zs[others]) / np.exp(zs[others]).sum()
        q_t = np.exp(zt[others]) / np.exp(zt[others]).sum()
        nckd.append(kl(q_t, q_s))
        full.append(kl(p_t, p_s))
    return float(np.mean(tckd)), float(np.mean(nckd)), float(np.mean(full))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_tckd_and_nckd_match_the_paper(T):
    tckd, nckd, _ = _dkd_by_hand(T)
    args = {"student": t(ZS), "teacher": t(ZT), "target": t(TARGET, torch.int64)}
    only_t = build("dkd", alpha=1.0, beta=0.0, temperature=T)(**args)["loss"]
    only_n = build("dkd", alpha=0.0, beta=1.0, temperature=T)(**args)["loss"]
    both = build("dkd", alpha=1.0, beta=8.0, temperature=T)(**args)["loss"]
    assert float(only_t) == pytest.approx(T * T * tckd, rel=1e-5)
    assert float(only_n) == pytest.approx(T * T * nckd, rel=1e-5)
    assert float(both) == pytest.approx(T * T * (tckd + 8 * nckd), rel=1e-5)


def test_dkd_decomposes_kd_per_example():
    # The paper's identity KD = TCKD + (1 - p_t[g]) NCKD, here checked for one example.
    zs, zt, g = ZS[:1], ZT[:1], TARGET[:1]
    loss = build("dkd", alpha=1.0, beta=0.0, temperature=1.0)(
        student=t(zs), teacher=t(zt), target=t(g, torch.int64))["loss"]
    nckd = build("dkd", alpha=0.0, beta=1.0, temperature=1.0)(
        student=t(zs), teacher=t(zt), target=t(g, torch.int64))["loss"]
    p_t = softmax(zt[0])
    assert float(loss) + (1 - p_t[g[0]]) * float(nckd) == pytest.approx(
        kl(p_t, softmax(zs[0])), rel=1e-5)


def test_dkd_uses_the_teacher_argmax_for_unlabelled_examples():
    args = {"student": t(ZS), "teacher": t(ZT)}
    unlabelled = build("dkd")(**args, target=t([-1, -1], torch.int64))["loss"]
    argmax = build("dkd")(**args, target=t(ZT.argmax(1).tolist(), torch.int64))["loss"]
    assert float(unlabelled) == pytest.approx(float(argmax), rel=1e-6)


# -- RKD -----------------------------------------------------------------------------------------
# A 3-4-5 right triangle (student) against a unit right isosceles triangle (teacher).
S3 = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]
T3 = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_rkd_distance_by_hand():
    # Pairs (0,1), (0,2), (1,2): student distances 3, 4, 5 (mean 4), teacher 1, 1, sqrt 2.
    mu_t = (2 + math.sqrt(2)) / 3
    psi_s = [3 / 4, 4 / 4, 5 / 4]
    psi_t = [1 / mu_t, 1 / mu_t, math.sqrt(2) / mu_t]
    # Every unordered pair appears twice among the B(B-1) = 6 ordered pairs.
    expected = sum(2 * huber(a - b) for a, b in zip(psi_s, psi_t, strict=True)) / 6
    loss = build("rkd_distance")(student=t(S3), teacher=t(T3))["loss"]
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_rkd_distance_ignores_scale():
    loss = build("rkd_distance")(student=t(S3) * 7.0, teacher=t(S3))["loss"]
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_rkd_angle_by_hand():
    # Cosines of the angles: student 0 (at the origin), 3/5 and 4/5; teacher 0, 1/√2, 1/√2.
    # Each vertex appears in 2 of the 6 ordered triplets (j, k swapped).
    diffs = [0.0, 3 / 5 - 1 / math.sqrt(2), 4 / 5 - 1 / math.sqrt(2)]
    expected = sum(2 * huber(d) for d in diffs) / 6
    loss = build("rkd_angle")(student=t(S3), teacher=t(T3))["loss"]
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_rkd_angle_with_large_differences_is_linear():
    loss = build("rkd_angle", delta=0.01)(student=t(S3), teacher=t(T3))["loss"]
    diffs = [0.0, 3 / 5 - 1 / math.sqrt(2), 4 / 5 - 1 / math.sqrt(2)]
    expected = sum(2 * (abs(d) - 0.005 if abs(d) >= 0.01 else 50 * d * d) for d in diffs) / 6
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# -- attention transfer ----------------------------------------------------------------------------
def test_attention_transfer_by_hand():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 3, 2, 2))
    te = rng.normal(size=(2, 5, 2, 2))

    def attention(f):
        q = (np.abs(f) ** 2).mean(axis=1).reshape(len(f), -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    diff = attention(s) - attention(te)
    norm = build("attention_transfer")(student=t(s), teacher=t(te))["loss"]
    squared = build("attention_transfer", reduction="mean_squared")(
        student=t(s), teacher=t(te))["loss"]
    assert float(norm) == pytest.approx(np.linalg.norm(diff, axis=1).mean(), rel=1e-5)
    assert float(squared) == pytest.approx((diff**2).mean(), rel=1e-5)


def test_attention_transfer_of_a_scaled_map_is_zero():
    f = torch.rand(2, 4, 3, 3)
    loss = build("attention_transfer")(student=f * 3.0, teacher=f)["loss"]
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_attention_transfer_refuses_different_sizes():
    with pytest.raises(ValueError) as info:
        build("attention_transfer")(student=torch.rand(2, 4, 4, 4), teacher=torch.rand(2, 4, 2, 2))
    assert str(info.value) == ("attention_transfer needs feature maps [B, C, H, W] of equal H, W;"
                               " found student [2, 4, 4, 4] and teacher [2, 4, 2, 2]")


# -- CRD -----------------------------------------------------------------------------------------
def _unit(rows):
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_crd_contrastive_term_and_bank_update_by_hand():
    tau, m = 0.5, 0.25
    loss_module = build("crd", num_data=5, dim=2, num_negatives=3, temperature=tau,
                        momentum=m)
    bank_s = _unit([[1, 0], [0, 1], [1, 1], [1, -1], [-1, 2]])
    bank_t = _unit([[0, 1], [1, 2], [-1, 0], [2, 1], [1, -3]])
    loss_module.memory_student.copy_(t(bank_s))
    loss_module.memory_teacher.copy_(t(bank_t))
    s = _unit([[1, 2], [3, -1]])
    te = _unit([[2, 1], [1, -1]])
    index = [4, 1]
    torch.manual_seed(123)
    negatives = torch.randint(5, (2, 3)).numpy()  # what the loss draws from the same state
    torch.manual_seed(123)
    loss = loss_module(student=t(s), teacher=t(te), index=t(index, torch.int64))["loss"]

    def info_nce(anchor, positive, bank):
        total = 0.0
        for i in range(len(anchor)):
            pos = math.exp(anchor[i] @ positive[i] / tau)
            neg = sum(math.exp(anchor[i] @ bank[j] / tau) for j in negatives[i])
            total += -math.log(pos / (pos + neg))
        return total / len(anchor)

    expected = info_nce(s, te, bank_t) + info_nce(te, s, bank_s)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # The banks moved towards this step's embeddings, at the two indices only.
    new_s = bank_s.copy()
    new_t = bank_t.copy()
    new_s[index] = _unit(m * bank_s[index] + (1 - m) * s)
    new_t[index] = _unit(m * bank_t[index] + (1 - m) * te)
    assert np.allclose(loss_module.memory_student.numpy(), new_s, atol=1e-6)
    assert np.allclose(loss_module.memory_teacher.numpy(), new_t, atol=1e-6)


def test_crd_banks_are_state_and_frozen_in_eval_mode():
    loss_module = build("crd", num_data=10, dim=4, num_negatives=5)
    assert set(loss_module.state_dict()) == {"memory_student", "memory_teacher"}
    before = loss_module.memory_teacher.clone()
    loss_module.eval()
    x = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    loss_module(student=x, teacher=x, index=t([0, 1, 2], torch.int64))
    assert torch.equal(loss_module.memory_teacher, before)


def test_crd_refuses_an_index_outside_the_bank():
    loss_module = build("crd", num_data=10, dim=4, num_negatives=5)
    x = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    with pytest.raises(ValueError) as info:
        loss_module(student=x, teacher=x, index=t([3, 10], torch.int64))
    assert str(info.value) == ("crd: example index 10 is outside the memory bank of num_data=10 "
                               "entries; set num_data to the training set's size")


# -- distribution matching -------------------------------------------------------------------------
def test_distribution_matching_by_hand():
    real = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0], [5.0, 5.0]])
    real_y = [0, 0, 1, -1]                       # the last one has no label: ignored
    syn = np.array([[2.0, 2.0], [1.0, 1.0], [4.0, 0.0]])
    syn_y = [0, 1, 2]                            # class 2 has no real example this step
    expected = np.sum((real[:2].mean(0) - syn[0]) ** 2) + np.sum((real[2] - syn[1]) ** 2)
    loss = build("distribution_matching", num_classes=3)(
        real=t(real), real_labels=t(real_y, torch.int64), synthetic=t(syn),
        synthetic_labels=t(syn_y, torch.int64))["loss"]
    assert float(loss) == pytest.approx(expected, rel=1e-6)
