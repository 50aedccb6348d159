"""The zoo's blackbox_kd (a teacher that is only a file) and ddk_mixture (DDK domain
weights) train a few steps; DDK's weights are logged, reported and resumed bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _kill_resume import assert_same_final, kill_and_resume
from helpers import QUIET

from dgraph.api import train
from dgraph.spec import zoo_names

DDK_FAST = ["train.steps=12", "train.checkpoint_every=2", "train.eval.every=12",
            "train.log_every=2", "nodes.ddk.params.every=2", "nodes.ddk.params.eval_batches=1",
            "nodes.ddk.params.batch_size=8", "nodes.data.params.batch_size=8"]
DOMAINS = ("tempest", "dream", "dialogue")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bbx")
    # ddk_mixture's teacher (init: {run: llm_teacher}) is looked for beside its runs.
    train("llm_teacher", out=root / "llm_teacher", overrides=["train.steps=3"], **QUIET)
    return root


def test_the_zoo_lists_both():
    assert {"blackbox_kd", "ddk_mixture"} <= set(zoo_names())


def test_blackbox_kd_trains_from_the_shipped_file(tmp_path):
    run = tmp_path / "blackbox_kd"
    summary = train("blackbox_kd", out=run, overrides=[
        "train.steps=3", "train.eval.every=3", "train.log_every=1"], **QUIET)
    assert math.isfinite(summary["ppl/perplexity"]) and summary["ppl/perplexity"] > 1
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = logged[0]
    # Both terms train: the teacher's text (kept by the ranking filter) and its top-4.
    assert first["loss/seq_ce"] > 0 and first["loss/topk"] > 0
    assert first["loss/total/main"] == pytest.approx(first["loss/seq_ce"] + first["loss/topk"])


def test_ddk_mixture_logs_reports_and_moves_its_weights(runs):
    run = runs / "ddk_mixture"
    summary = train("ddk_mixture", out=run, overrides=DDK_FAST, **QUIET)
    weights = [summary[f"ddk/weight_{d}"] for d in DOMAINS]
    assert sum(weights) == pytest.approx(1.0)
    assert weights != pytest.approx([1 / 3] * 3)  # 6 updates moved them
    assert summary["ddk/updates"] == 6.0
    for d in DOMAINS:
        assert summary[f"ddk/student_ppl_{d}"] > 1 and summary[f"ddk/teacher_ppl_{d}"] > 1
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "ddk/weight/tempest" in r]
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10, 12]
    assert all(sum(r[f"ddk/weight/{d}"] for d in DOMAINS) == pytest.approx(1.0) for r in steps)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert {f"ddk/weight/{d}" for d in DOMAINS} <= set(events.Tags()["scalars"])
    uniform = train("ddk_mixture", out=runs / "ddk_uniform",
                    overrides=[*DDK_FAST, "nodes.ddk.params.adapt=false"], **QUIET)
    assert [uniform[f"ddk/weight_{d}"] for d in DOMAINS] == pytest.approx([1 / 3] * 3)


def test_ddk_mixture_resumes_bit_identically_after_sigkill(runs):
    reference, killed = runs / "ddk_reference", runs / "ddk_killed"
    kill_and_resume("ddk_mixture", reference, killed, DDK_FAST, kill_after=4)
    assert_same_final(reference, killed, ("student",))
    expected = json.loads((reference / "summary.json").read_text())
    found = json.loads((killed / "summary.json").read_text())
    assert {k: v for k, v in found.items() if k.startswith("ddk/")} == \
        {k: v for k, v in expected.items() if k.startswith("ddk/")}
