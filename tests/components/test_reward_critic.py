"""The ``reward_model`` critic: a transformers sequence classifier, loaded from a saved folder,
scores prompt + output texts (batched, padded, no gradient) with one of its logits; the folder,
architecture, pad token, label, template and length are checked with located errors.

Real tiny models (GPT-2 and BERT classifiers built from configs, saved with save_pretrained);
expected scores are the models' logits computed by hand, one unpadded text at a time."""

from __future__ import annotations

import pytest
import torch
from dgraph.components.data.text import byte_tokenizer
from dgraph.components.generate._decoding import Candidate
from dgraph.components.generate.generator import LMGenerator
from dgraph.components.generate.reward import RewardModel
from dgraph.components.generate.verifiers import ExactAnswer

from dgraph.errors import ValidationError
from dgraph.registry import BuildContext


def _gpt2(folder, *, pad: int | None = 0, num_labels: int = 1, head: str = "classifier"):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=258, n_positions=24,
                        num_labels=num_labels, pad_token_id=pad, bos_token_id=1,
                        eos_token_id=1)
    model = (GPT2ForSequenceClassification if head == "classifier" else GPT2LMHeadModel)(config)
    model.save_pretrained(folder)
    byte_tokenizer().save(str(folder / "tokenizer.json"))
    return model.eval()


def _bert(folder, *, num_labels: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    config = BertConfig(vocab_size=258, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, num_labels=num_labels, pad_token_id=0)
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    return model.eval()


def _cand(index: int, prompt: str, output: str) -> Candidate:
    return Candidate(index=index, prompt=prompt, output=output, answer=None, prompt_ids=[],
                     output_ids=[], ended=True)


CANDIDATES = [_cand(0, "1+2=", "3"), _cand(1, "10+20=", "30"), _cand(2, "7+8=", "15"),
              _cand(3, "40+9=", "49 or so")]


def _by_hand(model, texts, label):
    tok = byte_tokenizer()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok.encode(text, add_special_tokens=False).ids])
            out.append(float(model(input_ids=ids).logits[0, label]))
    return out


def test_scores_are_the_reward_models_logit_of_each_text(tmp_path):
    model = _gpt2(tmp_path / "rm")
    critic = RewardModel.create(BuildContext(node="rm"), path=str(tmp_path / "rm"),
                                max_length=16, batch_size=3)
    assert list(critic.parameters()) == []  # the folder's frozen weights, not the run's
    texts = ["1+2=3", "10+20=30", "7+8=15", "40+9=49 or so"]
    assert critic.texts(CANDIDATES) == texts
    scores = critic.score(CANDIDATES)  # batches of 3 and 1, right-padded with id 0
    assert scores == pytest.approx(_by_hand(model, texts, 0), abs=1e-5)
    assert not torch.is_grad_enabled() or all(
        not p.requires_grad for p in critic.model.parameters())
    templated = RewardModel.create(BuildContext(node="rm"), path=str(tmp_path / "rm"),
                                   max_length=20, template="Q {prompt} A {output}")
    texts = [f"Q {c.prompt} A {c.output}" for c in CANDIDATES]
    assert templated.score(CANDIDATES) == pytest.approx(_by_hand(model, texts, 0), abs=1e-5)


def test_a_chosen_label_of_a_bert_classifier_with_the_byte_tokenizer(tmp_path):
    model = _bert(tmp_path / "bert", num_labels=3)
    critic = RewardModel.create(BuildContext(node="rm"), path=str(tmp_path / "bert"),
                                tokenizer="byte", label=2, max_length=16, batch_size=2)
    texts = [c.prompt + c.output for c in CANDIDATES]
    assert critic.score(CANDIDATES) == pytest.approx(_by_hand(model, texts, 2), abs=1e-5)


def test_the_generator_ranks_verified_outputs_by_the_reward_model(tmp_path):
    model = _gpt2(tmp_path / "rm")
    critic = RewardModel.create(BuildContext(node="rm"), path=str(tmp_path / "rm"),
                                max_length=16)
    cands = [_cand(0, "1+2=", out) for out in ("3", " 3", "03", "4")]
    for c in cands:
        c.answer = "3"
    rewards = dict(zip((c.output for c in cands), _by_hand(model, [
        "1+2=" + c.output for c in cands], 0), strict=True))
    gen = LMGenerator.create(
        BuildContext(node="traces", references={"model": None, "prompts": None,
                                                "verifier": ExactAnswer.create(),
                                                "critic": critic}),
        model="m", prompts="data", verifier="v", critic="rm", prefer="likelier",
        keep_best=1, dedupe=False)
    [kept] = gen.select(cands)  # "3" and " 3" are correct; "03" and "4" are not
    assert kept.output == max(("3", " 3"), key=rewards.__getitem__)
    assert kept.scores["critic"] == pytest.approx(rewards[kept.output], abs=1e-5)


def _error(call) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        call()
    [problem] = info.value.problems
    return problem


def test_what_is_not_a_usable_reward_model_is_a_located_error(tmp_path):
    missing = _error(lambda: RewardModel.create(BuildContext(node="rm", spec_dir=tmp_path),
                                                path="no_such_rm", max_length=8))
    assert missing.code == "missing-file" and missing.node == "rm"
    assert missing.message == "params.path: 'no_such_rm' does not exist"
    _gpt2(tmp_path / "lm", head="lm")
    lm = _error(lambda: RewardModel.create(path=str(tmp_path / "lm"), max_length=8))
    assert lm.code == "not-a-reward-model"
    assert lm.message == f"params.path: {tmp_path / 'lm'} is not a sequence-classification model"
    assert lm.found == "config.json architectures: GPT2LMHeadModel"
    _gpt2(tmp_path / "nopad", pad=None)
    nopad = _error(lambda: RewardModel.create(path=str(tmp_path / "nopad"), max_length=8))
    assert nopad.code == "no-pad-token"
    assert nopad.message == f"params.path: the reward model in {tmp_path / 'nopad'} has no " \
        "pad token"
    _gpt2(tmp_path / "three", num_labels=3)
    unlabelled = _error(lambda: RewardModel.create(path=str(tmp_path / "three"), max_length=8))
    assert unlabelled.message == "params.label: the model has 3 outputs; say which one is " \
        "the reward"
    over = _error(lambda: RewardModel.create(path=str(tmp_path / "three"), label=3,
                                             max_length=8))
    assert over.message == "params.label: label 3 is not one of the model's 3 outputs"
    long = _error(lambda: RewardModel.create(path=str(tmp_path / "three"), label=0,
                                             max_length=25))
    assert long.message == "params.max_length: max_length 25 is over the model's 24 positions"
    (tmp_path / "three" / "tokenizer.json").unlink()
    untokenized = _error(lambda: RewardModel.create(path=str(tmp_path / "three"), label=0,
                                                    max_length=8))
    assert untokenized.message == (f"params.tokenizer: the model folder {tmp_path / 'three'} "
                                   "holds no tokenizer.json")


def test_a_text_over_max_length_is_an_error_never_cut(tmp_path):
    _gpt2(tmp_path / "rm")
    critic = RewardModel.create(path=str(tmp_path / "rm"), max_length=8)
    with pytest.raises(ValueError, match=r"^reward_model 'reward_model': the text of prompt 3 "
                       r"\('40\+9=49 or so'\) is 13 tokens, over max_length 8; raise "
                       r"max_length \(texts are never cut\) or generate fewer tokens$"):
        critic.score(CANDIDATES)
    with pytest.raises(ValueError, match=r"template 'Q: \{prompt\}' does not contain "
                       r"\{output\}: the reward model would not see the output it scores"):
        RewardModel.component.Params(path="rm", max_length=8, template="Q: {prompt}")
    with pytest.raises(ValueError, match=r"template '\{answer\}\{output\}' names \['answer'\]"):
        RewardModel.component.Params(path="rm", max_length=8, template="{answer}{output}")


def test_a_spec_naming_a_missing_reward_model_fails_validation_at_its_line(tmp_path):
    from dgraph.compiler.dryrun import dry_run
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    spec = tmp_path / "rm_critic.yaml"
    spec.write_text("dgraph: 1\nname: rm_critic\nextends: selfimitation_rounds\nnodes:\n"
                    "  rm:\n    kind: op\n    type: reward_model\n"
                    "    params:\n      path: rm_folder\n      max_length: 16\n"
                    "  traces:\n    params: {critic: rm, prefer: likelier}\n")
    graph, _ = validate(load_spec(str(spec)))
    problem = _error(lambda: dry_run(graph))
    assert problem.code == "missing-file" and problem.node == "rm"
    assert problem.location.file.endswith("rm_critic.yaml") and problem.location.line == 9
    _gpt2(tmp_path / "rm_folder")
    graph, _ = validate(load_spec(str(spec)))
    dry_run(graph)  # reads the folder's config.json and tokenizer only


TINY = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 258,
        "n_positions": 24, "num_labels": 2, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 1}


def test_an_in_graph_classifier_scores_as_probabilities_and_keeps_its_mode():
    from dgraph.components.generate.reward import SequenceClassifier

    torch.manual_seed(2)
    net = SequenceClassifier.create(config=TINY)
    net.train()
    context = BuildContext(node="rm", references={"model": net},
                           reference_names={"model": "reward_net"})
    critic = RewardModel.create(context, model="reward_net", tokenizer="byte", label=1,
                                output="prob", max_length=16, batch_size=3)
    assert list(critic.parameters()) == []  # the node's module, by reference
    texts = [c.prompt + c.output for c in CANDIDATES]
    net.eval()
    logits = torch.tensor([_by_hand(net.model, [t], label) for t in texts
                           for label in (0, 1)]).view(-1, 2)
    net.train()
    expected = torch.softmax(logits, -1)[:, 1].tolist()
    assert critic.score(CANDIDATES) == pytest.approx(expected, abs=1e-5)
    assert net.training  # put back in training mode after scoring
    ids = torch.tensor([byte_tokenizer().encode("1+2=3", add_special_tokens=False).ids])
    assert net(input_ids=ids)["logits"].shape == (1, 2)
    not_a_classifier = _error(lambda: RewardModel.create(
        BuildContext(node="rm", references={"model": torch.nn.Linear(2, 2)}),
        model="x", tokenizer="byte", max_length=8))
    assert not_a_classifier.code == "not-a-reward-model"
    assert not_a_classifier.message == ("params.model: names a node that is not a sequence "
                                        "classifier (Linear)")
    with pytest.raises(ValueError, match=r"give the reward model as path: FOLDER \(a saved "
                       r"model\) or model: NODE \(an hf_sequence_classifier node\), exactly "
                       "one"):
        RewardModel.component.Params(path="rm", model="net", max_length=8)
    with pytest.raises(ValueError, match="model: NODE scores with the node's own tokenizer: "
                       "name it"):
        RewardModel.component.Params(model="net", max_length=8)
    with pytest.raises(ValueError, match="config needs pad_token_id"):
        SequenceClassifier.component.Params(config={**TINY, "pad_token_id": None})


def test_arithmetic_judgements_hold_the_true_and_corrupted_answers():
    from dgraph.components.generate.arithmetic import arithmetic_problems
    from dgraph.components.generate.judgements import arithmetic_judgements

    params = arithmetic_judgements.component.Params(n_train=20, n_eval=5, max_operand=9,
                                                    wrong_per_problem=2, max_offset=3,
                                                    batch_size=8)
    source = arithmetic_judgements.component(params, "j").build(BuildContext(node="j"))
    problems = arithmetic_problems(25, max_operand=9, ops="+", seed=0)
    tok = byte_tokenizer()
    t = source.train
    assert t["input_ids"].shape == (60, 12) and t["labels"].tolist() == [1, 0, 0] * 20
    for row in range(60):
        prompt, answer = problems[row // 3]
        n = int(t["attention_mask"][row].sum())
        text = tok.decode(t["input_ids"][row, :n].tolist())
        assert text.startswith(prompt) and not t["attention_mask"][row, n:].any()
        given = int(text[len(prompt):])
        if row % 3 == 0:
            assert given == int(answer)
        else:
            assert 1 <= abs(given - int(answer)) <= 3 and given >= 0
    assert source.eval["labels"].shape == (15,)
    with pytest.raises(ValueError, match=r"max_len \(6\) must hold the longest text"):
        arithmetic_judgements.component.Params(max_operand=49, max_len=6)
