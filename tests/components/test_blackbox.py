"""blackbox_teacher (a teacher known only by a JSONL file of its outputs) and the
CycleAlign-style ranking_agreement filter."""

from __future__ import annotations

import json
import math

import pytest
import torch
from dgraph.components.data.blackbox import blackbox_teacher
from dgraph.components.data.text import byte_tokenizer
from dgraph.components.ops.ranking import kendall_tau, ranking_agreement

from dgraph.errors import ValidationError
from dgraph.registry import BuildContext

TOK = byte_tokenizer()


def _id(ch: str) -> int:
    return TOK.encode(ch, add_special_tokens=False).ids[0]


def _files(tmp_path, entries=None, pairs=("ab", "cd", "ef")):
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": p, "response": "zz"}) + "\n" for p in pairs))
    if entries is None:
        entries = [{"prompt": "ab", "response": "xy",
                    "topk": {"ids": [[_id("x"), _id("q")], [_id("y"), _id("r")]],
                             "logprobs": [[-0.1, -2.5], [-0.2, -3.0]]},
                    "candidates": ["xy", "qq", "r"], "ranking": [1, 2, 0]},
                   {"prompt": "cd", "response": "w",
                    "topk": {"tokens": [["w", "v"], ["<eos>", "w"]],
                             "logprobs": [[-0.5, -1.0], [-0.01, -5.0]]},
                    "candidates": ["a", "b", "c"], "ranking": [0, 1, 2]}]
    (tmp_path / "teacher.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def _source(build, tmp_path, **params):
    prompts = build("jsonl_pairs", spec_dir=tmp_path, path="pairs.jsonl", max_len=8,
                    max_prompt_len=4, eval_fraction=0.34, batch_size=1)
    cls = blackbox_teacher.component
    values = {"prompts": "prompts", "path": "teacher.jsonl", "max_len": 8,
              "max_prompt_len": 4, "batch_size": 1, **params}
    node = cls(cls.Params.model_validate(values), "data")
    return prompts, node.build(BuildContext(node="data", spec_dir=tmp_path,
                                            references={"prompts": prompts}))


def test_the_file_is_joined_with_the_prompts(build, tmp_path):
    _files(tmp_path)
    prompts, source = _source(build, tmp_path, k=2, candidates=3)
    train = source.train
    eos = 1
    # "ab" + "xy" + <eos>: input a b x y, targets b x y <eos>; response targets from position 1.
    assert train["input_ids"][0, :4].tolist() == [_id("a"), _id("b"), _id("x"), _id("y")]
    assert train["targets"][0, :4].tolist() == [_id("b"), _id("x"), _id("y"), eos]
    assert train["loss_mask"][0].tolist() == [False, True, True, True] + [False] * 4
    # Top-k of response token j sits at the position predicting it: 1 + j.
    assert train["topk_mask"][0].tolist() == [False, True, True] + [False] * 5
    assert train["topk_indices"][0, 1].tolist() == [_id("x"), _id("q")]
    assert train["topk_logprobs"][0, 2].tolist() == pytest.approx([-0.2, -3.0])
    # Token strings are looked up in the tokenizer; one entry more covers <eos>.
    assert train["topk_indices"][1, 1:3].tolist() == [[_id("w"), _id("v")], [eos, _id("w")]]
    assert train["topk_mask"][1].tolist() == [False, True, True] + [False] * 5
    # ranking [1, 2, 0] (best first) -> ranks: candidate 0 third, 1 first, 2 second.
    assert train["teacher_rank"].tolist() == [[2, 0, 1], [0, 1, 2]]
    assert train["cand_ids"][0, 1, :4].tolist() == [_id("a"), _id("b"), _id("q"), _id("q")]
    assert train["cand_loss_mask"][0, 2].tolist() == [False, True, True] + [False] * 5
    assert train["cand_targets"][0, 2, :3].tolist() == [_id("b"), _id("r"), eos]
    # The held-out split is the prompts node's real data ("ef" + "zz"), without teacher parts.
    assert torch.equal(source.eval["input_ids"], prompts.eval["input_ids"])
    assert not source.eval["topk_mask"].any() and not source.eval["cand_loss_mask"].any()


def test_a_prompt_the_file_lacks_is_a_located_error(build, tmp_path):
    _files(tmp_path, pairs=("ab", "cd", "gh", "ef"))
    with pytest.raises(ValidationError) as info:
        _source(build, tmp_path, k=2)
    text = str(info.value)
    assert "params.prompts: the teacher file" in text
    assert "has no line for training prompt 2 of the prompts node (reading pairs.jsonl)" \
        in text
    assert "no line with prompt 'gh'" in text
    assert "(3 prompts; the file has 2 lines)" in text


def test_malformed_lines_and_unknown_tokens_name_the_line(build, tmp_path):
    _files(tmp_path)
    path = tmp_path / "teacher.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValidationError) as info:
        _source(build, tmp_path)
    problem = info.value.problems[0]
    assert (problem.location.line, problem.location.file) == (3, str(path))
    assert problem.message == f"line 3 of {path} is not JSON"
    entry = {"prompt": "ab", "response": "x",
             "topk": {"tokens": [["x", "not-a-token"]], "logprobs": [[-0.1, -2.0]]}}
    _files(tmp_path, entries=[{"prompt": "cd", "response": "w"}, entry])
    with pytest.raises(ValidationError) as info:
        _source(build, tmp_path, k=2)
    problem = info.value.problems[0]
    assert problem.location.line == 2
    assert problem.message == (f"line 2 of {path}: top-k entry 0: token 'not-a-token' is not "
                               "in the tokenizer's vocabulary")
    _files(tmp_path, entries=[{"prompt": "ab", "response": "x"}, {"prompt": "cd", "response": "w"}])
    with pytest.raises(ValidationError) as info:
        _source(build, tmp_path, candidates=2)
    assert info.value.problems[0].message == f"line 1 of {path} has no 'candidates'"


def test_kendall_tau_by_hand():
    ranks = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 0, 2]])
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0], [2.0, 3.0, 1.0]])
    # row 2: pairs (0,1) disagree, (0,2) and (1,2) agree -> (2 - 1) / 3.
    assert kendall_tau(ranks, scores).tolist() == pytest.approx([1.0, -1.0, 1 / 3, 1.0])
    assert kendall_tau(ranks[:1], torch.tensor([[1.0, 1.0, 0.0]])).tolist() == \
        pytest.approx([2 / 3])  # a tie counts 0


class _Bigram(torch.nn.Module):
    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.table[input_ids]}


def test_ranking_agreement_keeps_the_examples_where_the_rankings_agree(build, tmp_path):
    _files(tmp_path)
    _, source = _source(build, tmp_path, candidates=3)
    table = torch.zeros(258, 258)
    table[_id("b"), _id("q")] = 3.0   # after "b" the model expects "q" ...
    table[_id("q"), _id("q")] = 1.0
    model = _Bigram(table)
    t = source.train
    out = ranking_agreement(t["cand_ids"], t["cand_targets"], t["cand_attention"],
                            t["cand_loss_mask"], t["teacher_rank"], t["loss_mask"],
                            model=model, threshold=0.3)
    # Example 0: candidates "xy", "qq", "r" (+ <eos>) after "ab"; mean log-likelihoods:
    z_b = math.log(257 + math.exp(3.0))          # normaliser after "b"
    z_q = math.log(257 + math.exp(1.0))
    z0 = math.log(258)
    xy = (-z_b - z0 - z0) / 3
    qq = ((3.0 - z_b) + (1.0 - z_q) + (0.0 - z_q)) / 3
    r = (-z_b - z0) / 2
    assert out["scores"][0].tolist() == pytest.approx([xy, qq, r], rel=1e-5)
    # Model: qq > xy > r (-4.25, -5.58, -5.59); teacher: qq (rank 0), r (1), xy (2). Pairs
    # (xy, qq) and (qq, r) agree, (xy, r) does not: tau = 1/3 >= 0.3, kept.
    assert qq > xy > r
    assert out["tau"][0] == pytest.approx(1 / 3)
    assert out["keep"].tolist()[0] is True
    assert torch.equal(out["mask"][0], t["loss_mask"][0])
    # Example 1: "a", "b", "c" after "cd": a = c > b (<eos> after "b" is less likely);
    # teacher a, b, c: (a, b) agrees, (a, c) ties, (b, c) disagrees: tau 0 < 0.3, dropped.
    assert out["tau"][1] == pytest.approx(0.0)
    assert not out["mask"][1].any()
