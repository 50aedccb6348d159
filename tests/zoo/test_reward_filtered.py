"""The zoo spec ``seqkd_reward_filtered`` trains its reward model (a sequence classifier on
true vs corrupted arithmetic answers) in a first stage, then keeps the teacher's answers that
the reward model judges right, audited by the exact-answer checker; a few steps here (the
benchmark, benchmarks/seqkd_reward_filtered.py, trains it fully)."""

from __future__ import annotations

import json

from helpers import QUIET, train_arithmetic_teacher

from dgraph.api import train
from dgraph.spec import zoo_names


def test_the_zoo_lists_the_reward_filtered_spec():
    assert "seqkd_reward_filtered" in zoo_names()


def test_seqkd_reward_filtered_trains_its_judge_then_filters_with_it(tmp_path):
    train_arithmetic_teacher(tmp_path, steps=2)
    run = tmp_path / "seqkd_reward_filtered"
    summary = train("seqkd_reward_filtered", out=run, overrides=[
        "nodes.data.params.n_train=96", "nodes.data.params.n_eval=16",
        "nodes.judgements.params.n_train=96", "nodes.judgements.params.n_eval=16",
        "nodes.traces.params.max_prompts=16", "nodes.traces.params.threshold=0.0",
        "nodes.exact_match.params.max_examples=16", "stages.0.steps=3", "stages.1.steps=2",
        "train.steps=5", "train.eval.every=5", "train.log_every=1"], **QUIET)
    assert 0.0 <= summary["exact_match/accuracy"] <= 1.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss/reward_ce" in r] == [1, 2, 3]  # stage reward
    lines = [json.loads(line) for line in
             (run / "generated" / "traces" / "distil.jsonl").read_text().splitlines()]
    assert sorted(e["index"] for e in lines) == list(range(16))  # keep_best: 1
    for e in lines:  # the judge's probability, and the checker's verdict recorded beside it
        assert 0.0 <= e["scores"]["verifier"] <= 1.0
        assert e["scores"]["audit"] == float(e["response"].strip() == e["answer"])
    stats = json.loads((run / "generated" / "traces" / "distil.stats.json").read_text())
    assert stats["kept_audit_rate"] == sum(e["scores"]["audit"] for e in lines) / 16
    assert 0.0 <= stats["audit_rate"] <= 1.0
