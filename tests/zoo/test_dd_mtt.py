"""Trajectory matching end to end: the expert buffer (``dd_mtt_experts``: ``snapshot``
metrics), the pair sampler (``expert_trajectories``) and ``dd_mtt`` on a tiny buffer."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from dgraph.components.dd.expert_trajectories import (
    ExpertTrajectories,
    read_trajectory,
    window_upper,
)
from safetensors.torch import load_file

from dgraph.api import train
from dgraph.graph import validate
from dgraph.registry import BuildContext
from dgraph.runtime.setup import missing_runs
from dgraph.spec import load_spec

TINY_EXPERTS = ["train.steps=6", "train.eval.every=2", "train.checkpoint_every=6",
                "train.log_every=2"]


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-step dd_mtt_experts run: snapshots at steps 0, 2, 4, 6 of 3 experts."""
    out = tmp_path_factory.mktemp("buffer") / "dd_mtt_experts"
    train("dd_mtt_experts", overrides=TINY_EXPERTS, out=out, progress=False,
          log=lambda _m: None)
    return out


def test_snapshots_are_written_and_read_back_exactly(experts: Path) -> None:
    folders = sorted(p.name for p in (experts / "snapshots").iterdir())
    assert folders == ["expert_0", "expert_1", "expert_2"]
    names = sorted(p.name for p in (experts / "snapshots" / "expert_1").iterdir())
    assert names == [f"step_{s:08d}.safetensors" for s in (0, 2, 4, 6)]
    # The last snapshot is the expert's final weights, exactly.
    final = load_file(str(experts / "final" / "expert_1.safetensors"))
    last = load_file(str(experts / "snapshots" / "expert_1" / "step_00000006.safetensors"))
    assert last.keys() == final.keys()
    for key, value in final.items():
        assert torch.equal(last[key], value), key
    steps, flat = read_trajectory(experts / "snapshots" / "expert_1")
    assert steps == [0, 2, 4, 6]
    # named_parameters() order of the MLP: body.0.weight, body.0.bias, head.weight, head.bias
    order = ["body.0.weight", "body.0.bias", "head.weight", "head.bias"]
    assert flat.shape == (4, 64 * 32 + 32 + 32 * 10 + 10)
    assert torch.equal(flat[3], torch.cat([final[k].reshape(-1) for k in order]))
    # the experts differ (own initialisations) and move during training
    first = read_trajectory(experts / "snapshots" / "expert_0")[1]
    assert not torch.equal(first[0], flat[0])
    assert not torch.equal(flat[0], flat[3])
    summary = json.loads((experts / "summary.json").read_text())
    assert summary["snap_0/saved"] == 6.0


def _sampler(run: Path, **params: object) -> ExpertTrajectories:
    return ExpertTrajectories.create(BuildContext(node="experts"), run=str(run),
                                     **{"max_start": 0, **params})


def test_the_curriculum_window_grows_linearly() -> None:
    # upper = 1 + floor((5 - 1) * min(step, 8) / 8)
    assert [window_upper(s, 1, 5, 8) for s in (0, 1, 2, 4, 7, 8, 100)] == [1, 1, 2, 3, 4, 5, 5]
    assert window_upper(50, 3, None, 0) == 3


def test_pairs_respect_the_window_and_repeat_per_seed(experts: Path) -> None:
    sampler = _sampler(experts, span=1, min_start=1, max_start=1, max_start_end=3,
                       grow_steps=10)
    flats = [read_trajectory(experts / "snapshots" / f"expert_{k}")[1] for k in range(3)]

    def draws(seed: int, step: int, n: int = 60) -> list[tuple[int, int]]:
        torch.manual_seed(seed)
        sampler.set_step(step)
        out = []
        for _ in range(n):
            pair = sampler()
            expert, start = sampler.last
            assert torch.equal(pair["start"], flats[expert][start])
            assert torch.equal(pair["target"], flats[expert][start + 1])
            out.append(sampler.last)
        return out

    early = draws(0, 0)
    assert {start for _, start in early} == {1}          # window [1, 1] at step 0
    late = draws(0, 10)
    # window [1, min(3, 4 - 1 - 1)] = [1, 2]: the last start keeps a target one later
    assert {start for _, start in late} == {1, 2}
    assert {expert for expert, _ in late} == {0, 1, 2}
    assert draws(0, 10) == late                          # the same seed draws the same pairs
    assert draws(1, 10) != late


def test_misuse_is_explained(experts: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        _sampler(experts, span=4)
    assert str(info.value) == ("an expert has 4 snapshots: too few for a start at index 0 "
                               "and a target 4 later")
    other = torch.nn.Linear(3, 2)  # 8 parameters
    with pytest.raises(ValueError) as info:
        ExpertTrajectories.create(BuildContext(node="experts", references={"model": other}),
                                  run=str(experts), model="net", max_start=0)
    assert str(info.value) == (f"the snapshots in {experts / 'snapshots'} hold 2410 "
                               "parameters, but the network named by model has 8")
    with pytest.raises(ValueError) as info:
        _sampler(tmp_path / "nowhere")
    assert str(info.value).startswith(f"no expert snapshots for run '{tmp_path / 'nowhere'}': "
                                      f"looked for a snapshots folder in {tmp_path / 'nowhere'}")


def test_dd_mtt_trains_on_a_tiny_buffer(experts: Path, tmp_path: Path) -> None:
    # run: dd_mtt_experts, found beside this run (where `dgraph train` trains a missing one).
    run_dir = experts.parent / "mtt"
    graph, _ = validate(load_spec("dd_mtt"))
    assert missing_runs(graph, run_dir) == []
    assert missing_runs(graph, tmp_path / "run") == [("experts", "dd_mtt_experts",
                                                      tmp_path / "dd_mtt_experts")]
    overrides = ["nodes.experts.params.max_start=1",
                 "nodes.experts.params.max_start_end=1", "nodes.syn.params.images_per_class=2",
                 "nodes.inner.params.steps=3", "nodes.inner.params.batch_size=10",
                 "train.steps=4", "train.log_every=1", "train.eval.every=4",
                 "train.checkpoint_every=2", "nodes.synthetic.params.steps=5",
                 "nodes.synthetic.params.seeds=[0]", "nodes.random_real.params.steps=5",
                 "nodes.random_real.params.seeds=[0]"]
    validate(load_spec("dd_mtt", overrides))
    summary = train("dd_mtt", overrides=overrides, out=run_dir, progress=False,
                    log=lambda _m: None)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss/tm"] for row in rows if "loss/tm" in row]
    assert len(losses) == 4 and all(math.isfinite(v) and v > 0 for v in losses)
    assert 0.0 <= summary["synthetic/accuracy"] <= 1.0
    assert "random_real/accuracy" in summary
    # Resumed from the step-2 checkpoint (as after a kill), the run ends bit-identical: the
    # pairs and the inner minibatches come from the checkpointed generator.
    again = experts.parent / "again"  # beside the experts too
    shutil.copytree(run_dir, again)
    (again / "checkpoints" / "step_00000004.pt").unlink()
    shutil.rmtree(again / "final")
    train("dd_mtt", overrides=overrides, out=again, resume=True, progress=False,
          log=lambda _m: None)
    for node in ("syn", "lr"):
        first = load_file(str(run_dir / "final" / f"{node}.safetensors"))
        second = load_file(str(again / "final" / f"{node}.safetensors"))
        assert first.keys() == second.keys()
        for key, value in first.items():
            assert torch.equal(second[key], value), (node, key)
