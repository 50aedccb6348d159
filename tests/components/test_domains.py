"""domain_mixture (named text domains, a weighted BatchSampler) and ddk_weights (DDK)."""

from __future__ import annotations

import math

import pytest
import torch
from dgraph.components.data.domains import DDKWeights, DomainSampler, ddk_update
from dgraph.components.data.text import byte_tokenizer
from pydantic import ValidationError

from dgraph.registry import BuildContext
from dgraph.runtime.data import BatchLoader


def _texts(tmp_path):
    (tmp_path / "a.txt").write_text("a" * 400)          # 400 bytes: 360 train, 40 held out
    (tmp_path / "b.txt").write_text("line one\n" + "b" * 300 + "\nlast\n")
    (tmp_path / "c.jsonl").write_text('{"p": "x", "r": "yz"}\n' * 40)
    return {"a": {"path": "a.txt"}, "b": {"path": "b.txt", "lines": [2, 2]},
            "c": {"path": "c.jsonl", "jsonl_keys": ["p", "r"]}}


def test_domains_are_windowed_held_out_and_labelled(build, tmp_path):
    source = build("domain_mixture", spec_dir=tmp_path, domains=_texts(tmp_path),
                   seq_len=16, batch_size=4, eval_fraction=0.2)
    # Windows of 17 tokens every 16: n tokens -> (n - 17) // 16 + 1 windows.
    # a: 400 bytes -> 320 train (19 windows), 80 held out (4).
    # b: line 2 only ("b" * 300 + "\n", 301 bytes) -> 240 (14), 61 (3).
    # c: "xyz\n" * 40 (160 bytes) -> 128 (7), 32 (1).
    assert source.info["windows"] == {"a": [19, 4], "b": [14, 3], "c": [7, 1]}
    train, held = source.train, source.eval
    assert train["domain"].tolist() == [0] * 19 + [1] * 14 + [2] * 7
    assert held["domain"].tolist() == [0] * 4 + [1] * 3 + [2] * 1
    decode = byte_tokenizer().decode
    assert decode(train["input_ids"][19].tolist()) == "b" * 16
    assert decode(train["input_ids"][33].tolist()) == "xyz\n" * 4
    assert torch.equal(train["targets"][0, :-1], train["input_ids"][0, 1:])
    assert source.sampler.names == ["a", "b", "c"]
    assert torch.allclose(source.sampler.weights, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_a_domain_with_too_little_text_is_a_located_error(build, tmp_path):
    (tmp_path / "tiny.txt").write_text("abc")
    with pytest.raises(Exception) as info:
        build("domain_mixture", spec_dir=tmp_path, domains={"tiny": {"path": "tiny.txt"}},
              seq_len=16)
    assert "domain 'tiny'" in str(info.value) and "holds too little text" in str(info.value)
    assert "0 training and 0 held-out windows" in str(info.value)


def test_domain_names_and_weights_are_checked(make):
    with pytest.raises(ValidationError) as info:
        make("domain_mixture", domains={"bad name": {}})
    assert "domain names are [A-Za-z0-9_]+ (they name logged values); found ['bad name']" \
        in str(info.value)
    with pytest.raises(ValidationError) as info:
        make("domain_mixture", domains={"a": {}, "b": {}}, weights={"a": 1.0, "z": 1.0})
    assert "weights must give one value per domain (a, b); unknown: ['z'], missing: ['b']" \
        in str(info.value)


def test_sampler_draws_by_weight_and_is_a_function_of_its_arguments():
    groups = [torch.arange(0, 10), torch.arange(10, 12)]
    sampler = DomainSampler(["x", "y"], groups, [torch.arange(1), torch.arange(1, 2)],
                            [0.5, 0.5])
    first = sampler.indices(3, 0, 5, 64)
    assert torch.equal(first, sampler.indices(3, 0, 5, 64))  # same arguments, same batch
    assert not torch.equal(first, sampler.indices(3, 0, 6, 64))
    sampler.weights = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert set(sampler.indices(3, 0, 5, 64).tolist()) == {10, 11}
    sampler.weights = torch.tensor([0.9, 0.1], dtype=torch.float64)
    many = torch.cat([sampler.indices(0, 0, p, 100) for p in range(50)])
    share = float((many >= 10).double().mean())
    assert abs(share - 0.1) < 0.02  # 5000 draws: 3 standard deviations ~ 0.013
    # The batch loader asks the sampler (and draws it again for batch_at).
    loader = BatchLoader({"v": torch.arange(12) * 10}, 8, shuffle=True, drop_last=True,
                         seed=3, sampler=sampler)
    batch = loader.next()["v"]
    assert torch.equal(batch, sampler.indices(3, 0, 0, 8) * 10)
    assert torch.equal(loader.batch_at(0, 0)["v"], batch)


def test_ddk_update_follows_the_formula():
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    s_ce = torch.tensor([math.log(4.0), math.log(3.0), math.log(2.0)], dtype=torch.float64)
    t_ce = torch.tensor([math.log(2.0)] * 3, dtype=torch.float64)
    # ratios 2, 1.5, 1 -> v = softmax; psi = w * exp(v); w' = a psi / sum + (1 - a) / 3
    ratios = [2.0, 1.5, 1.0]
    v = [math.exp(r) / sum(math.exp(q) for q in ratios) for r in ratios]
    psi = [wi * math.exp(vi) for wi, vi in zip([0.5, 0.3, 0.2], v, strict=True)]
    expected = [0.4 * p / sum(psi) + 0.6 / 3 for p in psi]
    got = ddk_update(w, s_ce, t_ce, smoothing=0.4)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert float(got.sum()) == pytest.approx(1.0)
    gaps = [math.log(2.0), math.log(1.5), 0.0]
    v = [math.exp(g) / sum(math.exp(q) for q in gaps) for g in gaps]
    psi = [wi * math.exp(vi) for wi, vi in zip([0.5, 0.3, 0.2], v, strict=True)]
    got = ddk_update(w, s_ce, t_ce, smoothing=1.0, metric="ce_gap")
    assert got.tolist() == pytest.approx([p / sum(psi) for p in psi], rel=1e-12)
    v = [math.exp(g / 0.1) / sum(math.exp(q / 0.1) for q in gaps) for g in gaps]
    psi = [wi * math.exp(vi) for wi, vi in zip([0.5, 0.3, 0.2], v, strict=True)]
    got = ddk_update(w, s_ce, t_ce, smoothing=1.0, metric="ce_gap", temperature=0.1)
    assert got.tolist() == pytest.approx([p / sum(psi) for p in psi], rel=1e-12)


class _Bigram(torch.nn.Module):
    """A causal LM whose next-token scores depend on the current token only."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.table[input_ids]}


def test_ddk_node_measures_each_domain_and_moves_weights(build, tmp_path):
    source = build("domain_mixture", spec_dir=tmp_path, domains=_texts(tmp_path),
                   seq_len=16, batch_size=4, eval_fraction=0.2)
    vocab = 258
    teacher = _Bigram(torch.zeros(vocab, vocab))   # uniform: CE = log 258 everywhere
    table = torch.zeros(vocab, vocab)
    a = byte_tokenizer().token_to_id("a")
    table[a, a] = 5.0                              # the student knows that 'a' follows 'a'
    student = _Bigram(table)
    student.train()
    node = DDKWeights.component(DDKWeights.component.Params(
        data="data", teacher="teacher", student="student", every=2, smoothing=1.0,
        eval_batches=1, batch_size=4), "ddk").build(BuildContext(
            node="ddk", references={"data": source, "teacher": teacher, "student": student}))
    ce = node.domain_ce(student, None)
    held = source.eval
    for d in range(3):
        rows = held["domain"] == d
        logits = student.table.detach()[held["input_ids"][rows]]
        expected = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), held["targets"][rows].flatten())
        assert ce[d] == pytest.approx(float(expected), rel=1e-6)
    assert node.domain_ce(teacher, None) == pytest.approx([math.log(vocab)] * 3)
    assert student.training  # its mode is restored
    node.set_step(1)
    assert node.updates == 0
    node.set_step(2)
    node.set_step(2)  # evaluation at the same step does not update twice
    assert node.updates == 1
    # Domain a is where the student beats the teacher: its weight drops below uniform.
    w = node.sampler.weights
    assert float(w[0]) < 1 / 3 < float(w[2]) and float(w.sum()) == pytest.approx(1.0)
    logged = node.logged_scalars()
    assert set(logged) == {f"ddk/{k}/{d}" for k in ("weight", "gap") for d in "abc"}
    assert logged["ddk/weight/a"] == pytest.approx(float(w[0]))
    state = node.get_extra_state()
    torch.save(state, tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True) == state
    node.sampler.weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    node.set_extra_state(state)
    assert torch.equal(node.sampler.weights, w) and node.updated_at == 2
    report = node.compute()
    assert report["weight_a"] == pytest.approx(float(w[0]))
    assert report["teacher_ppl_b"] == pytest.approx(vocab, rel=1e-5)
    assert report["student_ppl_mean"] == pytest.approx(
        sum(math.exp(c) for c in ce) / 3, rel=1e-6)


def test_ddk_node_names_a_data_node_that_is_not_a_mixture(build):
    from dgraph.data import DataSource

    plain = DataSource(train={"x": torch.zeros(4, 2)})
    with pytest.raises(Exception) as info:
        DDKWeights.component(DDKWeights.component.Params(
            data="data", teacher="t", student="s"), "ddk").build(BuildContext(
                node="ddk", references={"data": plain, "teacher": None, "student": None}))
    assert "the node named by 'data' is not a domain mixture" in str(info.value)
    assert "a source whose sampler is NoneType" in str(info.value)
