"""Several teachers' verified traces ("Not All Correct Answers Are Equal"): ``lm_generator``
with ``models: [...]`` decodes with each teacher, tags every sample with its source, and the
keep rule chooses among the verified samples of a problem by length, then by perplexity under
a chosen model; the zoo spec ``seqkd_multi_teacher`` trains a student on the chosen traces.

Two real arithmetic teachers of different quality: a 1-layer GPT-2 trained for 60 steps on
16 problems (most of its samples are right), and the same network after 20 (few are)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from dgraph.components.generate.arithmetic import arithmetic_task
from dgraph.components.generate.generator import LMGenerator
from dgraph.components.generate.verifiers import ExactAnswer, LMLikelihood
from dgraph.components.models.hf import HFCausalLM
from helpers import QUIET, train_arithmetic_teacher

from dgraph.api import train
from dgraph.registry import BuildContext
from dgraph.spec import zoo_names

CONFIG = {"model_type": "gpt2", "n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 258,
          "n_positions": 16, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@pytest.fixture(scope="module")
def task_and_teachers():
    """The task (16 problems, operands 0..4) and two teachers: ``good`` after 60 AdamW steps
    on the true answers (next-token CE on answer + <eos>), ``weak`` the same network after 20."""
    params = arithmetic_task.component.Params(n_train=16, n_eval=1, max_operand=4,
                                              batch_size=16)
    source = arithmetic_task.component(params, "data").build(BuildContext(node="data"))
    torch.manual_seed(0)
    model = HFCausalLM.create(config=CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    t = source.train
    weak = None
    for step in range(60):
        if step == 20:
            weak = copy.deepcopy(model).eval()
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"])["logits"]
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), t["targets"].flatten(),
                                               reduction="none")
        loss = (ce * t["loss_mask"].flatten()).sum() / t["loss_mask"].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return source, model.eval(), weak


def _generator(source, teachers: dict, critic_model, **params):
    critic = LMLikelihood.create(BuildContext(node="lik", references={"model": critic_model}),
                                 model="good")
    refs = {"prompts": source, "verifier": ExactAnswer.create(), "critic": critic}
    names = {"prompts": "data", "verifier": "exact", "critic": "lik"}
    if "model" in params:
        refs["model"], names["model"] = teachers[params["model"]], params["model"]
    for i, name in enumerate(params.get("models", [])):
        refs[f"models[{i}]"], names[f"models[{i}]"] = teachers[name], name
    context = BuildContext(node="traces", references=refs, reference_names=names)
    settings = {"num_samples": 4, "max_new_tokens": 3, "verifier": "exact", "critic": "lik",
                **params}
    return LMGenerator.create(context, prompts="data", **settings)


def test_the_zoo_lists_the_multi_teacher_spec():
    assert "seqkd_multi_teacher" in zoo_names()


def test_two_teachers_verified_traces_are_tagged_and_chosen_by_length_then_perplexity(
        task_and_teachers, tmp_path):
    source, good, weak = task_and_teachers
    teachers = {"good": good, "weak": weak}
    gen = _generator(source, teachers, good, models=["weak", "good"],
                     prefer=["shorter", "likelier"], keep_best=1)
    path = tmp_path / "traces" / "distil.jsonl"
    torch.manual_seed(0)
    gen.generate(path=path, seed=0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    stats = json.loads(path.with_suffix(".stats.json").read_text())
    # the same decoding again gives the candidates the kept set was chosen from
    torch.manual_seed(0)
    candidates = gen.candidates()
    gen.select(candidates)  # fills in the scores
    by_source = {name: [c for c in candidates if c.source == name] for name in teachers}
    rate = {name: sum(c.scores["verifier"] == 1.0 for c in cands) / len(cands)
            for name, cands in by_source.items()}
    assert stats["good/verified_rate"] == pytest.approx(rate["good"])
    assert stats["weak/verified_rate"] == pytest.approx(rate["weak"])
    assert rate["good"] > rate["weak"] + 0.3  # two teachers of different quality
    assert stats["good/candidates"] + stats["weak/candidates"] == stats["candidates"] == \
        len(candidates)
    # one sample per problem with a verified one: the shortest, then the likeliest under
    # `good` (the highest mean log-probability, the lowest perplexity), then the first decoded
    # (the spec's order of models: weak before good)
    expected = {}
    for index in sorted({c.index for c in candidates}):
        verified = [c for c in candidates if c.index == index and c.scores["verifier"] >= 0.5]
        if verified:
            best = min(verified, key=lambda c: (len(c.output_ids), -c.scores["critic"]))
            expected[index] = (best.source, best.output)
    assert {e["index"]: (e["source"], e["response"]) for e in lines} == expected
    assert stats["good/kept"] + stats["weak/kept"] == stats["kept"] == len(expected)
    assert all(e["rank"] == 0 and e["answer"].strip() == e["response"].strip() for e in lines)
    covered = {name: {c.index for c in cands if c.scores["verifier"] == 1.0}
               for name, cands in by_source.items()}
    assert set(expected) == covered["good"] | covered["weak"]  # the union of both coverages
    # the good teacher answers each problem one way: the weak one's correct answers are the
    # same strings and come first (the order of models breaks exact ties)
    assert any(source == "weak" for source, _ in expected.values())


def test_the_single_model_form_decodes_as_a_one_item_list(task_and_teachers, tmp_path):
    source, good, weak = task_and_teachers
    teachers = {"good": good, "weak": weak}
    outputs = []
    for params in ({"model": "weak"}, {"models": ["weak"]}):
        gen = _generator(source, teachers, good, prefer="likelier", **params)
        torch.manual_seed(3)
        gen.generate(path=tmp_path / f"{len(outputs)}.jsonl", seed=3)
        outputs.append((tmp_path / f"{len(outputs)}.jsonl").read_text())
        assert "weak/candidates" not in gen.last_stats  # per-source counts: several models
    assert outputs[0] == outputs[1]
    assert {json.loads(line)["source"] for line in outputs[0].splitlines()} == {"weak"}
    with pytest.raises(ValueError, match=r"name the generating node with model: NODE, or "
                       r"several with models: \[NODE, ...\] \(not both\)"):
        LMGenerator.component.Params(model="a", models=["b"], prompts="d")
    with pytest.raises(ValueError, match=r"no generating node: give model: NODE, or models: "
                       r"\[NODE, ...\]"):
        LMGenerator.component.Params(prompts="d")
    with pytest.raises(ValueError, match=r"models names a node twice: \['a', 'a'\]"):
        LMGenerator.component.Params(models=["a", "a"], prompts="d")
    with pytest.raises(ValueError, match="prefer cannot rank by both shorter and longer"):
        LMGenerator.component.Params(model="a", prompts="d", prefer=["shorter", "longer"])


def test_an_unknown_teacher_in_the_list_is_located_at_its_item():
    from dgraph.errors import ValidationError
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    with pytest.raises(ValidationError) as info:
        validate(load_spec("seqkd_multi_teacher",
                           ["nodes.traces.params.models=[teacher, teacher_wek]"]))
    [problem] = [p for p in info.value.problems if p.code == "unknown-node"]
    assert problem.message == "parameter 'models[1]' names no node 'teacher_wek'"
    assert problem.node == "traces" and "teacher_weak" in problem.suggestion


def test_seqkd_multi_teacher_trains_a_few_steps_on_both_teachers_traces(tmp_path):
    train_arithmetic_teacher(tmp_path, steps=2)
    run = tmp_path / "seqkd_multi_teacher"
    summary = train("seqkd_multi_teacher", out=run, overrides=[
        "nodes.data.params.n_train=96", "nodes.data.params.n_eval=16",
        "nodes.traces.params.max_prompts=16", "nodes.traces.params.threshold=0.0",
        "nodes.exact_match.params.max_examples=16", "stages.0.steps=2", "stages.1.steps=3",
        "train.steps=5", "train.eval.every=5"], **QUIET)
    assert 0.0 <= summary["exact_match/accuracy"] <= 1.0
    lines = [json.loads(line) for line in
             (run / "generated" / "traces" / "distil.jsonl").read_text().splitlines()]
    assert sorted(e["index"] for e in lines) == list(range(16))  # keep_best: 1
    assert {e["source"] for e in lines} <= {"teacher", "teacher_weak"}
    stats = json.loads((run / "generated" / "traces" / "distil.stats.json").read_text())
    assert stats["teacher/candidates"] > 0 and stats["teacher_weak/candidates"] > 0
    assert stats["teacher/kept"] + stats["teacher_weak/kept"] == 16
