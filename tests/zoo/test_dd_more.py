"""`dd_quantization`, `dd_committee` and the DATM / FTD options of `dd_mtt`, end to end on a
few steps (the measured accuracies are in benchmarks/dd_selection_labels.py's output)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dgraph.components.data.digits import digits_split
from helpers import QUIET
from safetensors.torch import load_file

from dgraph.api import train
from dgraph.graph import validate
from dgraph.runtime.setup import missing_runs
from dgraph.spec import load_spec

# One evaluation seed, a small MLP and few steps (the spec's evaluators train 12 networks).
FAST_EVAL = [f"nodes.{node}.params.{key}" for node in ("synthetic", "random_real")
             for key in ("seeds=[0]", "steps=10", "models={mlp: {hidden: [16]}}")]
# A random feature network: no teacher run to train first.
RANDOM_FEATURES = ["nodes.teacher.init=null"]


def _is_real_selection(images: torch.Tensor, labels: torch.Tensor) -> bool:
    x_train, y_train, _, _ = digits_split()
    flat = x_train.flatten(1)
    for image, label in zip(images.flatten(1), labels, strict=True):
        match = torch.nonzero((flat == image).all(1)).flatten()
        if not any(int(y_train[i]) == int(label) for i in match):
            return False
    return True


@pytest.mark.parametrize("ipc", [1, 10])
def test_dd_quantization_selects_a_real_subset_at_1_and_10_images_per_class(tmp_path, ipc):
    out = tmp_path / "run"
    summary = train("dd_quantization", out=out, overrides=[
        f"nodes.syn.params.images_per_class={ipc}", *RANDOM_FEATURES, *FAST_EVAL], **QUIET)
    assert {"synthetic/accuracy", "random_real/accuracy"} <= set(summary)
    saved = load_file(str(out / "final" / "syn.safetensors"))
    assert saved["labels"].tolist() == [c for c in range(10) for _ in range(ipc)]
    assert len(set(saved["index"].tolist())) == 10 * ipc  # distinct training images
    assert _is_real_selection(saved["images"], saved["labels"])
    written = json.loads((out / "summary.json").read_text())
    assert written == pytest.approx(summary)


def test_dd_committee_labels_the_selection_with_a_redrawn_committee(tmp_path):
    overrides = ["nodes.committee.params.run=null", "nodes.committee.params.members=[]",
                 "nodes.committee.params.redraw=2", "nodes.committee.params.steps=20",
                 "nodes.syn.params.images_per_class=1", *RANDOM_FEATURES, *FAST_EVAL]
    graph, _ = validate(load_spec("dd_committee", overrides))
    edge = next(e for e in graph.edges_into("synthetic") if e.dst_port == "soft_labels")
    assert (edge.src, edge.src_port) == ("committee", "probs")
    summary = train("dd_committee", out=tmp_path / "run", overrides=overrides, **QUIET)
    assert 0.0 <= summary["synthetic/accuracy"] <= 1.0
    assert 0.0 <= summary["random_real/accuracy"] <= 1.0
    # The default committee: 5 redrawn MLPs; or the experts of dd_mtt_experts, a run that
    # `dgraph train` trains first when it is missing.
    graph, _ = validate(load_spec("dd_committee"))
    assert graph.nodes["committee"].component.params.redraw == 5
    graph, _ = validate(load_spec("dd_committee", [
        "nodes.committee.params.redraw=null", "nodes.committee.params.run=dd_mtt_experts",
        "nodes.committee.params.members=[expert_0, expert_1, expert_2]",
        "nodes.committee.params.model_params={hidden: [32]}"]))
    assert ("committee", "dd_mtt_experts", tmp_path / "dd_mtt_experts") in missing_runs(
        graph, tmp_path / "other")


def test_dd_mtt_options_learn_soft_labels_and_evaluate_an_ema(tmp_path: Path) -> None:
    experts = tmp_path / "dd_mtt_experts"
    train("dd_mtt_experts", out=experts, overrides=[
        "train.steps=4", "train.eval.every=2", "train.checkpoint_every=4"], **QUIET)
    tiny = ["nodes.experts.params.max_start=0", "nodes.experts.params.max_start_end=0",
            "nodes.syn.params.images_per_class=1", "nodes.inner.params.steps=2",
            "train.steps=4", "train.log_every=1", "train.eval.every=4",
            "train.checkpoint_every=2", *FAST_EVAL]
    # Off (the defaults): one-hot labels, never changed; the EMA (decay 0) is a copy of syn.
    off = tmp_path / "off"
    train("dd_mtt", out=off, overrides=tiny, **QUIET)
    soft = load_file(str(off / "final" / "soft.safetensors"))
    assert torch.equal(soft["logits"], 5.0 * torch.eye(10))
    syn = load_file(str(off / "final" / "syn.safetensors"))
    ema = load_file(str(off / "final" / "syn_ema.safetensors"))
    assert torch.equal(ema["model.images"], syn["images"])
    # On: the label logits move with the trajectory-matching loss; the EMA lags syn.
    on = tmp_path / "on"
    options = [*tiny, "nodes.soft.params.learn=true", "nodes.syn_ema.params.decay=0.5"]
    train("dd_mtt", out=on, overrides=options, **QUIET)
    soft = load_file(str(on / "final" / "soft.safetensors"))
    assert not torch.equal(soft["logits"], 5.0 * torch.eye(10))
    syn = load_file(str(on / "final" / "syn.safetensors"))
    ema = load_file(str(on / "final" / "syn_ema.safetensors"))
    assert not torch.equal(ema["model.images"], syn["images"])
    # Resumed from the step-2 checkpoint (as after a kill), the learned labels, the set and
    # its EMA end bit-identical.
    again = tmp_path / "again"
    shutil.copytree(on, again)
    (again / "checkpoints" / "step_00000004.pt").unlink()
    shutil.rmtree(again / "final")
    train("dd_mtt", out=again, overrides=options, resume=True, **QUIET)
    for node in ("soft", "syn", "syn_ema", "lr"):
        first = load_file(str(on / "final" / f"{node}.safetensors"))
        second = load_file(str(again / "final" / f"{node}.safetensors"))
        assert first.keys() == second.keys()
        for key, value in first.items():
            assert torch.equal(second[key], value), (node, key)
