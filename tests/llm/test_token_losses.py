"""Token-level losses: values by hand, masking, and micro-batch invariance."""

from __future__ import annotations

import math

import pytest
import torch

from dgraph.registry import COMPONENTS, BuildContext, load_plugins

load_plugins()


def _loss(type_name: str, *ports: str, **params):
    """The built node of ``type_name``, called with its input ports in the order ``ports``."""
    cls = COMPONENTS.get(type_name)
    module = cls(cls.Params.model_validate(params), node=type_name).build(
        BuildContext(node=type_name))
    return lambda *tensors: module(**dict(zip(ports, tensors, strict=False)))


def token_kl(direction: str = "forward", **params):
    return _loss("token_kl", "student", "teacher", "mask", direction=direction, **params)


def token_jsd(**params):
    return _loss("token_jsd", "student", "teacher", "mask", **params)


def token_ce(**params):
    return _loss("token_ce", "logits", "targets", "mask", **params)


def token_topk_kl(missing_mass: str = "renormalize", **params):
    return _loss("token_topk_kl", "student", "topk_logprobs", "topk_indices", "mask",
                 missing_mass=missing_mass, **params)


def _logits(probs):
    return torch.tensor(probs, dtype=torch.float64).log().view(1, 1, -1)


def test_forward_and_reverse_kl_equal_0_8_ln_9():
    s, t = _logits([0.1, 0.9]), _logits([0.9, 0.1])
    expected = 0.8 * math.log(9)
    fwd = token_kl("forward")(s, t)["loss"]
    rev = token_kl("reverse")(s, t)["loss"]
    assert fwd.item() == pytest.approx(expected, abs=1e-6)
    assert rev.item() == pytest.approx(expected, abs=1e-6)


def test_jsd_beta_half_matches_the_formula_by_hand():
    ps, pt = [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]
    m = [0.5 * a + 0.5 * b for a, b in zip(pt, ps, strict=True)]
    kl_t = sum(a * math.log(a / c) for a, c in zip(pt, m, strict=True))
    kl_s = sum(b * math.log(b / c) for b, c in zip(ps, m, strict=True))
    expected = 0.5 * kl_t + 0.5 * kl_s
    got = token_jsd(beta=0.5)(_logits(ps), _logits(pt))["loss"].item()
    assert got == pytest.approx(expected, abs=1e-6)
    # beta = 0.3 too: JSD = b KL(t||m) + (1-b) KL(s||m), m = b t + (1-b) s
    b = 0.3
    m = [b * a + (1 - b) * c for a, c in zip(pt, ps, strict=True)]
    expected = b * sum(a * math.log(a / c) for a, c in zip(pt, m, strict=True)) + (1 - b) * sum(
        c * math.log(c / q) for c, q in zip(ps, m, strict=True))
    got = token_jsd(beta=b)(_logits(ps), _logits(pt))["loss"].item()
    assert got == pytest.approx(expected, abs=1e-6)


def test_jsd_endpoints_are_the_two_kls():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    fwd = token_kl("forward")(s, t)["loss"]
    rev = token_kl("reverse")(s, t)["loss"]
    torch.testing.assert_close(token_jsd(beta=0.0)(s, t)["loss"], fwd)
    torch.testing.assert_close(token_jsd(beta=1.0)(s, t)["loss"], rev)
    # ... and the limits of JSD/beta, JSD/(1 - beta)
    small = token_jsd(beta=1e-4)(s.double(), t.double())["loss"] / 1e-4
    assert small.item() == pytest.approx(fwd.item(), rel=1e-2)


def test_temperature_scales_like_hinton():
    s, t = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    soft = token_kl("forward", temperature=2.0)(s, t)["loss"]
    plain = token_kl("forward")(s / 2.0, t / 2.0)["loss"]
    torch.testing.assert_close(soft, 4.0 * plain)


def test_masking_excludes_prompt_and_padding_tokens():
    torch.manual_seed(1)
    s, t = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    out = token_kl("forward")(s, t, mask)
    # Changing masked positions changes nothing.
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = torch.randn(int((~mask).sum()), 9) * 10
    t2[~mask] = torch.randn(int((~mask).sum()), 9) * 10
    again = token_kl("forward")(s2, t2, mask)
    torch.testing.assert_close(out["loss"], again["loss"])
    assert out["count"].item() == 5.0
    per = token_kl("forward")(s[mask].view(1, 5, 9), t[mask].view(1, 5, 9))
    torch.testing.assert_close(out["loss"], per["loss"])


def test_masked_pairs_from_the_jsonl_source():
    from dgraph.components.data.text import encode_pairs

    enc = encode_pairs([([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11])], max_len=6,
                       max_prompt_len=4)
    # full: 5 6 7 8 9 <eos>; inputs 5 6 7 8 9, targets 6 7 8 9 eos: count targets 8 9 eos
    assert enc["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 0]
    assert enc["targets"][0].tolist() == [6, 7, 8, 9, 1, 0]
    assert enc["loss_mask"][0].tolist() == [False, False, True, True, True, False]
    assert enc["attention_mask"][0].tolist() == [True] * 5 + [False]
    assert enc["loss_mask"][1].tolist() == [True, True, True, True, True, False]
    assert enc["prompt_ids"][0].tolist() == [0, 5, 6, 7]
    assert enc["prompt_mask"][1].tolist() == [False, False, False, True]
    ce = token_ce()(torch.randn(2, 6, 12), enc["targets"], enc["loss_mask"])
    assert ce["count"].item() == 8.0


@pytest.mark.parametrize("make", [
    lambda: token_kl("forward"), lambda: token_kl("reverse", temperature=2.0),
    lambda: token_jsd(beta=0.5)])
def test_four_micro_batches_of_two_equal_one_batch_of_eight(make):
    torch.manual_seed(2)
    vocab, length = 11, 9
    s = torch.randn(8, length, vocab, dtype=torch.float64)
    t = torch.randn(8, length, vocab, dtype=torch.float64)
    lengths = torch.tensor([9, 2, 7, 1, 5, 9, 3, 4])  # sequences of different lengths
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    loss = make()
    whole = s.clone().requires_grad_(True)
    out = loss(whole, t, mask)
    out["loss"].backward()
    parts = s.clone().requires_grad_(True)
    sums, counts = [], []
    for i in range(0, 8, 2):
        o = loss(parts[i:i + 2], t[i:i + 2], mask[i:i + 2])
        o["sum"].backward()  # the runtime's contract: back-propagate the sums ...
        sums.append(o["sum"].detach())
        counts.append(o["count"])
    total = torch.stack(counts).sum()
    parts.grad /= total  # ... and divide the gradients by the total count
    assert abs((torch.stack(sums).sum() / total).item() - out["loss"].item()) < 1e-6
    assert (parts.grad - whole.grad).abs().max().item() < 1e-6
    # The naive mean of micro-batch means differs when lengths differ.
    naive = sum((s_ / c).item() for s_, c in zip(sums, counts, strict=True)) / 4
    assert abs(naive - out["loss"].item()) > 1e-3


def test_topk_with_k_equal_vocab_is_the_forward_kl():
    torch.manual_seed(3)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    top = torch.log_softmax(t, -1).topk(6, -1)
    fwd = token_kl("forward")(s, t)["loss"]
    for mode in ("renormalize", "other"):
        got = token_topk_kl(mode)(s, top.values, top.indices)["loss"]
        torch.testing.assert_close(got, fwd, atol=1e-5, rtol=1e-5)
    small = torch.log_softmax(t, -1).topk(2, -1)
    a = token_topk_kl("renormalize")(s, small.values, small.indices)["loss"]
    b = token_topk_kl("other")(s, small.values, small.indices)["loss"]
    assert torch.isfinite(a) and torch.isfinite(b) and a.item() != b.item()


def test_vocabulary_mismatch_at_run_time_names_both_sizes():
    with pytest.raises(ValueError, match="student vocabulary 5 != teacher vocabulary 6"):
        token_kl()(torch.randn(1, 2, 5), torch.randn(1, 2, 6))
