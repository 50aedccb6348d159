"""The zoo spec ``cyclealign_rounds``: blackbox_kd whose ranking-agreement filter ranks with a
judge that is the student frozen per round (a hard copy every ``copy_every`` updates), so the
pseudo-labels of a round come from the model the previous rounds fine-tuned."""

from __future__ import annotations

import torch
from helpers import QUIET
from safetensors.torch import load_file

from dgraph.api import train
from dgraph.runtime.checkpoint import load_checkpoint
from dgraph.spec import zoo_names


def test_the_judge_is_the_student_of_the_rounds_start(tmp_path):
    assert "cyclealign_rounds" in zoo_names()
    run = tmp_path / "cyclealign_rounds"
    summary = train("cyclealign_rounds", out=run, overrides=[
        "train.steps=3", "train.eval.every=3", "train.checkpoint_every=2",
        "nodes.judge.params.copy_every=2"], **QUIET)  # rounds of 2 updates
    assert summary["ppl/perplexity"] > 1.0
    at_2 = load_checkpoint(run / "checkpoints" / "step_00000002.pt")["modules"]["student"]
    judge = load_file(str(run / "final" / "judge.safetensors"))
    student = load_file(str(run / "final" / "student.safetensors"))
    keys = sorted(student)  # the judge holds the student's copy as `model`
    assert keys and all(f"model.{k}" in judge and k in at_2 for k in keys)
    # after step 3 the judge is still the student of step 2 (the round's start)
    assert all(torch.equal(judge[f"model.{k}"], at_2[k]) for k in keys)
    assert not all(torch.equal(judge[f"model.{k}"], student[k]) for k in keys)
