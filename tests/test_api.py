"""``dgraph.api.train``: a missing zoo run that a node starts from is trained first, beside
the run and announced; the Trainer itself only loads weights, and names where the spec asks
for a run that is missing."""

from __future__ import annotations

import pytest
import torch
from helpers import QUIET
from safetensors.torch import load_file

from dgraph import api
from dgraph.errors import CheckpointError
from dgraph.graph import validate
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec


@pytest.fixture
def short_teacher_runs(monkeypatch):
    """The teacher runs that api.train starts, shortened to 3 steps and recorded."""
    original = api.train
    started = []

    def shortened(spec_ref, **kwargs):
        started.append((spec_ref, kwargs.get("out")))
        kwargs["overrides"] = [*kwargs.get("overrides", []), "train.steps=3"]
        return original(spec_ref, **kwargs)

    monkeypatch.setattr(api, "train", shortened)
    return original, started


def test_a_missing_zoo_teacher_run_is_trained_first_and_announced(tmp_path, monkeypatch,
                                                                   short_teacher_runs):
    monkeypatch.chdir(tmp_path)  # runs/ of the working directory is a candidate too
    train, started = short_teacher_runs
    said: list[str] = []
    runs = tmp_path / "elsewhere"
    summary = train("kd", out=runs / "kd", overrides=["train.steps=2"], progress=False,
                    log=said.append)
    assert "student/accuracy" in summary
    target = runs / "teacher_digits"
    assert started == [("teacher_digits", target)]
    assert [m for m in said if "needs the run" in m] == [
        f"node 'teacher' needs the run of zoo spec 'teacher_digits', which is missing: "
        f"training it first into {target} (dgraph train teacher_digits --out {target})"]
    weights = load_file(str(target / "final" / "teacher.safetensors"))
    # The KD run started from those weights; a second run finds them and trains nothing.
    graph, _ = validate(load_spec("kd"))
    trainer = Trainer(graph, runs / "kd_again", **QUIET)
    loaded = trainer.instances.modules["teacher"].state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in weights.items())
    said.clear()
    train("kd", out=runs / "kd_again", overrides=["train.steps=2"], progress=False,
          log=said.append)
    assert started == [("teacher_digits", target)]
    assert not [m for m in said if "needs the run" in m]


def test_the_trainer_never_trains_a_missing_run_and_says_where_it_is_asked_for(tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    graph, _ = validate(load_spec("kd"))
    run = tmp_path / "runs" / "kd"
    with pytest.raises(CheckpointError) as info:
        Trainer(graph, run, **QUIET)
    where = graph.spec.source.where(("nodes", "teacher", "init", "run"))
    assert where.file.endswith("_digits_kd.yaml") and where.line > 0
    beside = tmp_path / "runs" / "teacher_digits"
    assert str(info.value) == (
        f"{where}: node 'teacher': no trained weights for node 'teacher' in run "
        f"'teacher_digits' (looked in teacher_digits/final, {beside / 'final'}, "
        "runs/teacher_digits/final). Train it with `dgraph train teacher_digits --out "
        f"{beside}` (`dgraph train` and dgraph.api.train do so before the run starts), or "
        "point init.run at the run directory")
    assert not beside.exists()


def test_a_missing_run_that_is_no_zoo_spec_is_reported_not_trained(tmp_path, monkeypatch,
                                                                    short_teacher_runs):
    monkeypatch.chdir(tmp_path)
    train, started = short_teacher_runs
    overrides = ["nodes.teacher.init.run=my_teacher", "train.steps=2"]
    with pytest.raises(CheckpointError) as info:
        train("kd", out=tmp_path / "kd", overrides=overrides, **QUIET)
    assert started == []
    message = str(info.value)
    assert message.startswith("<--set nodes.teacher.init.run=my_teacher>")
    assert message.endswith(
        f"Produce them with `dgraph train <spec> --out {tmp_path / 'my_teacher'}`, or point "
        "init.run at the run directory")
