"""Teacher-generated datasets: the arithmetic task, decoding constraints, verifiers and critics,
the generator's keep rule, the generated data source, and the validation of generating stages.

Real torch and transformers (a tiny GPT-2), no mocks; expected values from the formulas."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from dgraph.components.data.text import byte_tokenizer
from dgraph.components.generate._decoding import Candidate, decode, mean_loglik
from dgraph.components.generate.arithmetic import arithmetic_problems, arithmetic_task
from dgraph.components.generate.exact_match import exact_match_accuracy
from dgraph.components.generate.generated import generated_pairs
from dgraph.components.generate.generator import LMGenerator
from dgraph.components.generate.verifiers import ExactAnswer, LMLikelihood, RegexMatch
from dgraph.components.models.hf import HFCausalLM

from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.registry import BuildContext
from dgraph.spec import load_spec

CONFIG = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 258,
          "n_positions": 32, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}


def _task(**params):
    params = {"n_train": 40, "n_eval": 10, "max_operand": 9, "batch_size": 8, **params}
    return arithmetic_task.component(arithmetic_task.component.Params(**params),
                                     "data").build(BuildContext(node="data"))


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return HFCausalLM.create(config=CONFIG).eval()


def test_arithmetic_problems_are_seeded_distinct_and_correct():
    problems = arithmetic_problems(50, max_operand=9, ops="+-", seed=3)
    assert problems == arithmetic_problems(50, max_operand=9, ops="+-", seed=3)
    assert problems != arithmetic_problems(50, max_operand=9, ops="+-", seed=4)
    assert len(set(problems)) == 50
    for prompt, answer in problems:
        a, op, b = prompt[:-1].partition("+") if "+" in prompt else prompt[:-1].partition("-")
        assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0


def test_arithmetic_task_tensors_train_the_answer_and_eos_only():
    source = _task()
    prompts, answers = source.info["prompts"], source.info["answers"]
    assert not set(prompts["train"]) & set(prompts["eval"])  # disjoint splits
    tok = byte_tokenizer()
    p = tok.encode(prompts["train"][0], add_special_tokens=False).ids
    a = tok.encode(answers["train"][0], add_special_tokens=False).ids
    full = p + a + [1]
    row = {k: v[0] for k, v in source.train.items()}
    n = len(full) - 1
    assert row["input_ids"][:n].tolist() == full[:-1]
    assert row["targets"][:n].tolist() == full[1:]
    # position t predicts full[t + 1]: the answer's tokens and <eos> count, the prompt not
    assert row["loss_mask"].nonzero().flatten().tolist() == list(range(len(p) - 1, n))
    assert row["prompt_ids"][-len(p):].tolist() == p and row["prompt_mask"].sum() == len(p)
    with pytest.raises(ValueError, match=r"max_prompt_len \(4\) must hold the longest prompt "
                       r"\(6 tokens for operands up to 49\)"):
        arithmetic_task.component.Params(max_operand=49, max_prompt_len=4)


def test_decoding_keeps_required_and_never_writes_forbidden_strings():
    model, source = _model(), _task()
    tok = byte_tokenizer()
    ids, mask = source.train["prompt_ids"][:8], source.train["prompt_mask"][:8]
    plus, seven = [tok.token_to_id("+")], [tok.token_to_id("7")]
    nine_eight = tok.encode("98", add_special_tokens=False).ids
    torch.manual_seed(0)
    out = decode(model, ids, mask, max_new_tokens=5, decoding="sample", num_samples=3,
                 forbidden=[plus], required=[seven, nine_eight])
    assert out.shape == (24, 5)
    for row in out.tolist():
        text = row[:row.index(1)] if 1 in row else row
        assert plus[0] not in text
        assert seven[0] in text
        assert any(text[i:i + 2] == nine_eight for i in range(len(text) - 1)), text
    beams = decode(model, ids, mask, max_new_tokens=4, decoding="beam", num_samples=2,
                   num_beams=3, required=[seven])
    assert beams.shape == (16, 4) and all(seven[0] in r for r in beams.tolist())


def _candidate(index: int, output: str, answer: str | None = "12", prompt: str = "5+7=",
               ended: bool = True) -> Candidate:
    tok = byte_tokenizer()
    return Candidate(index=index, prompt=prompt, output=output, answer=answer,
                     prompt_ids=tok.encode(prompt, add_special_tokens=False).ids,
                     output_ids=tok.encode(output, add_special_tokens=False).ids, ended=ended)


def test_verifiers_score_exact_answers_and_patterns():
    cands = [_candidate(0, "12"), _candidate(0, " 12 "), _candidate(0, "13"),
             _candidate(0, "answer: 12.")]
    assert ExactAnswer.create().score(cands) == [1.0, 1.0, 0.0, 0.0]
    assert ExactAnswer.create(strip=False).score(cands) == [1.0, 0.0, 0.0, 0.0]
    assert ExactAnswer.create(extract=r"(\d+)").score(cands) == [1.0, 1.0, 0.0, 1.0]
    assert RegexMatch.create(pattern=r"\d+").score(cands) == [1.0, 0.0, 1.0, 0.0]
    assert RegexMatch.create(pattern=r"\d+", full=False).score(cands) == [1.0] * 4
    with pytest.raises(ValueError, match="exact_answer needs reference answers; the prompt "
                       r"'5\+7=' has none \(use a source with answers, e.g. arithmetic_task\)"):
        ExactAnswer.create().score([_candidate(0, "12", answer=None)])
    with pytest.raises(ValueError, match=re.escape("extract '(a)(b)' has 2 groups; give at "
                                                   "most one (the answer)")):
        ExactAnswer.create(extract="(a)(b)")


def test_likelihood_critic_is_the_mean_log_probability_of_the_output_and_eos():
    model = _model()
    cands = [_candidate(0, "12"), _candidate(1, "3", ended=False, prompt="1+2=")]
    critic = LMLikelihood.create(BuildContext(node="c", references={"model": model}),
                                 model="student")
    got = critic.score(cands)
    for c, value in zip(cands, got, strict=True):
        full = c.prompt_ids + c.output_ids + ([1] if c.ended else [])
        with torch.no_grad():
            logits = model.model(input_ids=torch.tensor([full[:-1]])).logits[0]
        logp = torch.log_softmax(logits, -1)
        start = len(c.prompt_ids) - 1
        terms = [float(logp[t, full[t + 1]]) for t in range(start, len(full) - 1)]
        assert value == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    assert mean_loglik(model, cands) == pytest.approx(got)
    assert not list(critic.parameters())  # the model is used by reference


def _generator(model, source, **params):
    refs = {"model": model, "prompts": source}
    if params.get("verifier") is not None:
        refs["verifier"] = params.pop("verifier_module")
    if params.get("critic") is not None:
        refs["critic"] = params.pop("critic_module")
    return LMGenerator.create(BuildContext(node="traces", references=refs),
                              model="m", prompts="data", **params)


def test_keep_rule_filters_ranks_caps_and_weights():
    class Fixed:  # a critic with given scores (the Scores protocol)
        def __init__(self, values):
            self.values = values

        def score(self, candidates):
            return [self.values[c.output] for c in candidates]

    model, source = _model(), _task()
    cands = [_candidate(0, "12"), _candidate(0, " 12"), _candidate(0, "13"),
             _candidate(1, "5", answer="5"), _candidate(2, "9", answer="8")]
    critic = Fixed({"12": -2.0, " 12": -0.5, "13": -0.1, "5": -1.0, "9": -0.2})
    gen = _generator(model, source, verifier="v", verifier_module=ExactAnswer.create(),
                     critic="c", critic_module=critic, prefer="shorter", keep_best=1,
                     weight="critic")
    kept = gen.select([_candidate(c.index, c.output, c.answer) for c in cands])
    assert [(c.index, c.output) for c in kept] == [(0, "12"), (1, "5")]  # 13 and 9 are wrong
    assert gen.weight_of(kept[0]) == pytest.approx(math.exp(-2.0))
    gen = _generator(model, source, verifier="v", verifier_module=ExactAnswer.create(),
                     critic="c", critic_module=critic, prefer="likelier", keep_best=2)
    kept = gen.select([_candidate(c.index, c.output, c.answer) for c in cands])
    # correct answers first, the likelier one first: "not all correct answers are equal"
    assert [(c.index, c.output) for c in kept] == [(0, " 12"), (0, "12"), (1, "5")]
    assert [gen.weight_of(c) for c in kept] == [1.0, 1.0, 1.0]
    gen = _generator(model, source, verifier="v", verifier_module=ExactAnswer.create(),
                     threshold=0.0)
    assert len(gen.select([_candidate(c.index, c.output, c.answer) for c in cands])) == 5
    with pytest.raises(ValueError, match="prefer: likelier ranks by the critic's score; name a "
                       r"critic node \(e.g. an lm_likelihood node\)"):
        LMGenerator.component.Params(model="m", prompts="d", prefer="likelier")
    with pytest.raises(ValueError, match="greedy decoding gives one output per prompt; "
                       r"num_samples is 4 \(use decoding: sample or beam\)"):
        LMGenerator.component.Params(model="m", prompts="d", decoding="greedy")


def test_generator_writes_the_kept_set_and_generated_pairs_trains_on_it(tmp_path):
    model, source = _model(), _task()
    gen = _generator(model, source, verifier="v", verifier_module=RegexMatch.create(
        pattern=r".*"), threshold=0.5, num_samples=3, max_prompts=6, max_new_tokens=3,
        forbidden=["+"])
    path = tmp_path / "generated" / "traces" / "round1.jsonl"
    torch.manual_seed(0)
    gen.generate(path=path, seed=0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    stats = json.loads(path.with_suffix(".stats.json").read_text())
    assert stats["prompts"] == 6 and stats["kept"] == len(lines) <= 18
    assert {e["index"] for e in lines} <= set(range(6))
    for e in lines:
        assert e["prompt"] == source.info["prompts"]["train"][e["index"]]
        assert e["answer"] == source.info["answers"]["train"][e["index"]]
        assert "+" not in e["response"] and e["scores"] == {"verifier": 1.0}
    params = generated_pairs.component.Params(generator="traces", max_len=12, max_prompt_len=8,
                                              batch_size=64)
    built = generated_pairs.component(params, "generated")
    gen.latest = None  # before any generation: padding rows, nothing trained
    empty = built.build(BuildContext(node="generated", references={"generator": gen}))
    assert len(empty) == 64 and not empty.train["loss_mask"].any()
    gen.latest = path
    data = built.build(BuildContext(node="generated", references={"generator": gen}))
    assert len(data) == len(lines) and data.batch_size == min(64, len(lines))
    tok = byte_tokenizer()
    first, response = lines[0]["prompt_ids"], lines[0]["response_ids"]
    assert tok.decode(first) == lines[0]["prompt"]
    assert tok.decode(response) == lines[0]["response"]  # exact ids, also for non-UTF-8 bytes
    full = first + response + [1]
    assert data.train["input_ids"][0, :len(full) - 1].tolist() == full[:-1]
    assert int(data.train["loss_mask"][0].sum()) == len(response) + 1
    # held out: the task's true answers
    assert len(data.eval["input_ids"]) == 10


def test_exact_match_accuracy_counts_greedy_answers():
    model, source = _model(), _task(n_eval=6)
    answers = source.info["answers"]["eval"]
    tok = byte_tokenizer()
    out = decode(model, source.eval["prompt_ids"], source.eval["prompt_mask"],
                 max_new_tokens=4)
    texts = [tok.decode(r[:r.index(1)] if 1 in r else r) for r in out.tolist()]
    expected = sum(t.strip() == a for t, a in zip(texts, answers, strict=True)) / 6
    assert exact_match_accuracy(model, source, max_new_tokens=4) == expected


def _problems(spec, *overrides):
    with pytest.raises(ValidationError) as info:
        validate(load_spec(spec, list(overrides)))
    return info.value.problems


def test_a_stage_generating_with_a_node_that_does_not_generate_is_located():
    [problem] = [p for p in _problems("selfimitation_rounds", "stages.1.generate=[exact]")
                 if p.code == "not-a-generator"]
    assert problem.message == ("stage 'round1' generate names node 'exact' (exact_answer), "
                               "which does not generate a dataset")
    assert problem.suggestion == "name one of the generators: traces"
    assert str(problem.location) == "<--set stages.1.generate=[exact]>"  # where it was set


def test_training_on_generated_data_before_its_generator_runs_is_located():
    problems = _problems("selfimitation_rounds", "stages.1.generate=[]",
                         "stages.0.updates=[main]")
    early = [p for p in problems if p.code == "generated-too-late"]
    assert sorted(p.message for p in early) == [
        "stage 'round1' trains on data node 'generated', whose generator 'traces' first runs "
        "in the later stage 'round2'",
        "stage 'warmup' trains on data node 'generated', whose generator 'traces' first runs "
        "in the later stage 'round2'"]
    never = _problems("selfimitation_rounds", "stages.1.generate=[]", "stages.2.generate=[]",
                      "stages.3.generate=[]")
    [problem] = [p for p in never if p.code == "never-generated"]
    assert problem.message == "data node 'generated' reads generator 'traces', which no stage runs"
    from dgraph.spec.source import zoo_dir

    lines = (zoo_dir() / "_arithmetic_student.yaml").read_text().splitlines()
    assert problem.location.file.endswith("_arithmetic_student.yaml")  # at generator: traces
    assert problem.location.line == next(n for n, line in enumerate(lines, 1)
                                         if "generator: traces" in line)


def test_a_verifier_that_does_not_score_is_a_located_error(tmp_path):
    from dgraph.cli import main

    spec = load_spec("selfimitation_rounds", ["nodes.traces.params.verifier=data"])
    graph, _ = validate(spec)
    from dgraph.compiler.dryrun import dry_run

    with pytest.raises(ValidationError) as info:
        dry_run(graph)
    [problem] = info.value.problems
    assert problem.code == "not-a-verifier"
    assert problem.message == ("params.verifier: names a node that does not score outputs "
                               "(DataSource)")
    assert "nodes.traces.params.verifier" in str(problem.location)
    del main, tmp_path


def test_weighted_token_ce_is_the_weighted_mean_over_unmasked_tokens():
    from dgraph.components.generate.weighted import weighted_token_ce

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.tensor([[1, 2, 3], [4, 0, 1]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    weight = torch.tensor([0.25, 2.0])
    out = {k: float(v.detach()) for k, v in
           weighted_token_ce.component.implementation(logits, targets, weight, mask).items()}
    with torch.no_grad():
        ce = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected_sum = float(0.25 * (ce[0, 0] + ce[0, 1]) + 2.0 * (ce[1, 1] + ce[1, 2]))
    assert out["sum"] == pytest.approx(expected_sum, rel=1e-6)
    assert out["count"] == pytest.approx(0.25 * 2 + 2.0 * 2)
    assert out["loss"] == pytest.approx(expected_sum / 4.5, rel=1e-6)
    ones = weighted_token_ce.component.implementation(logits, targets, torch.ones(2), mask)
    # all weights 1: token_ce's mean over the unmasked tokens
    assert float(ones["loss"].detach()) == pytest.approx(float(ce[mask].mean()), rel=1e-6)
    none = weighted_token_ce.component.implementation(logits, targets, torch.zeros(2), mask)
    assert float(none["loss"].detach()) == 0.0
    none["loss"].backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match=re.escape("weight [3] must hold one value per "
                                                   "example [2]")):
        weighted_token_ce.component.implementation(logits, targets, torch.ones(3), mask)
