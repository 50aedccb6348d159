"""Evaluation does not generate unless the spec asks: a sampler declared ``evaluated=False``
(lm_sampler) and what only it feeds are skipped on held-out batches, except what a metric
reads; ``train.eval.samplers: true`` runs them."""

from __future__ import annotations

import pytest

from dgraph.api import train
from dgraph.graph import validate
from dgraph.runtime.evaluate import skipped_in_evaluation
from dgraph.spec import load_spec

TINY_LM = ("{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, vocab_size: 258, "
           "n_positions: 32, bos_token_id: 1, eos_token_id: 1, pad_token_id: 0}")

# Every step trains on the student's own continuations (on_policy: 1); the held-out
# perplexity is measured on the real text by the student's module (student_eval).
SPEC = f"""
dgraph: 1
name: eval_samplers
nodes:
  data:
    kind: data
    type: text_lm
    params: {{path: small.txt, seq_len: 16, prompt_len: 4, batch_size: 8,
             tokenizer: {{kind: byte}}}}
  rollout:
    kind: sampler
    type: lm_sampler
    params: {{source: student, on_policy: 1.0, max_new_tokens: 12}}
    inputs: {{prompt_ids: data.prompt_ids, prompt_mask: data.prompt_mask}}
  teacher:
    kind: teacher
    type: hf_causal_lm
    params: {{config: {TINY_LM}}}
    inputs: {{input_ids: rollout.input_ids, attention_mask: rollout.attention_mask}}
  student:
    kind: student
    type: hf_causal_lm
    params: {{config: {TINY_LM}}}
    inputs: {{input_ids: rollout.input_ids, attention_mask: rollout.attention_mask}}
  jsd:
    kind: loss
    type: token_jsd
    inputs: {{student: student.logits, teacher: teacher.logits, mask: rollout.loss_mask}}
  student_eval:
    kind: student
    shares: student
    inputs: {{input_ids: data.input_ids, attention_mask: data.attention_mask}}
  ppl:
    kind: metric
    type: lm_perplexity
    inputs: {{logits: student_eval.logits, targets: data.targets, mask: data.loss_mask}}
updates:
  main: {{params: [student], objective: {{jsd: 1.0}}}}
train: {{steps: 2, eval: {{every: 2, batch_size: 16}}, seed: 0, log_every: 1,
        checkpoint_every: 2}}
"""


@pytest.fixture
def spec_file(tmp_path):
    (tmp_path / "small.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    path = tmp_path / "gkd.yaml"
    path.write_text(SPEC)
    return path


def test_the_sampler_and_what_only_it_feeds_are_skipped(spec_file):
    graph, problems = validate(load_spec(spec_file))
    assert not problems
    assert skipped_in_evaluation(graph) == {"rollout", "teacher", "student", "jsd"}
    assert skipped_in_evaluation(graph, samplers=True) == set()


def test_a_metric_that_reads_a_sample_keeps_it(spec_file):
    graph, problems = validate(load_spec(spec_file, [
        "nodes.ppl.inputs.logits=student.logits", "nodes.ppl.inputs.targets=rollout.targets",
        "nodes.ppl.inputs.mask=rollout.loss_mask"]))
    assert not problems
    # The metric reads the student on samples: the rollout runs; the teacher and the loss,
    # which only the training objective reads, do not.
    assert skipped_in_evaluation(graph) == {"teacher", "jsd"}


def test_evaluation_reports_losses_on_samples_only_when_asked(spec_file, tmp_path):
    plain = train(spec_file, out=tmp_path / "plain", progress=False)
    assert "loss/jsd" not in plain
    assert "ppl/perplexity" in plain
    asked = train(spec_file, overrides=["train.eval.samplers=true"], out=tmp_path / "asked",
                  progress=False)
    assert asked["loss/jsd"] >= 0.0
    # The held-out perplexity does not depend on whether the samplers ran.
    assert asked["ppl/perplexity"] == plain["ppl/perplexity"]
