"""``train.compile``: false | true | "auto" | "reduce-overhead", and the choice ``auto`` makes.

The choice is a pure function of the device, the graph (spec and declarations) and the built
data sources, so each case is tested here on CPU; a run with ``auto`` on CPU trains eagerly
and records why, in its log line and its summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dgraph.compiler.codegen import compile_graph
from dgraph.compiler.compile_mode import CompileChoice, choose_compile
from dgraph.data import DataSource
from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec

SAFE = "CUDA device, every batch the same shape, every node of the steps cuda_graph_safe"


def _graph(tmp_path: Path, extra: str = "", *overrides: str, base: str = "kd"):
    path = tmp_path / "spec.yaml"
    path.write_text(f"dgraph: 1\nname: choice\nextends: {base}\n{extra}")
    graph, _ = validate(load_spec(path, ["train.compile=auto", *overrides]))
    return graph


def _source(size: int = 128, batch: int = 64, *, drop_last: bool = True,
            sampler: object = None) -> DataSource:
    return DataSource(train={"x": torch.zeros(size, 64), "y": torch.zeros(size, dtype=torch.long)},
                      batch_size=batch, drop_last=drop_last, sampler=sampler)  # type: ignore[arg-type]


def _choose(graph, device: str = "cuda", data: dict | None = None, world_size: int = 1
            ) -> CompileChoice:
    return choose_compile(device, graph, data={"data": _source()} if data is None else data,
                          world_size=world_size)


def test_fixed_settings_are_taken_as_written(tmp_path: Path) -> None:
    for setting, mode in (("false", None), ("true", "default"),
                          ("reduce-overhead", "reduce-overhead")):
        graph = _graph(tmp_path, "", f"train.compile={setting}")
        for device in ("cpu", "cuda"):
            choice = choose_compile(device, graph)
            assert (choice.mode, choice.reason) == (mode, "as set in the spec")
    assert _graph(tmp_path).spec.train.compile == "auto"


def test_auto_on_cpu_stays_eager(tmp_path: Path) -> None:
    choice = _choose(_graph(tmp_path), device="cpu")
    assert choice == CompileChoice("auto", None,
                                   "the device is cpu: CUDA graphs need a CUDA device")
    assert choice.describe() == ("train.compile=auto: eager (the device is cpu: CUDA graphs "
                                 "need a CUDA device)")
    assert choice.summary() == {"setting": "auto", "mode": "eager", "reason": choice.reason}


def test_auto_on_cuda_takes_cuda_graphs_for_a_static_safe_step(tmp_path: Path) -> None:
    graph = _graph(tmp_path)  # kd: mlp teacher and student, hinton_kd, cross_entropy
    choice = _choose(graph, device=torch.device("cuda", 0))  # type: ignore[arg-type]
    assert (choice.mode, choice.reason, choice.cuda_graphs) == ("reduce-overhead", SAFE, True)
    # an equal split without drop_last is static too; so is a data-parallel (DDP-style) job
    assert _choose(graph, data={"data": _source(128, 64, drop_last=False)}).mode == \
        "reduce-overhead"
    assert _choose(graph, world_size=2).mode == "reduce-overhead"
    assert choose_compile("cuda", graph, plans=compile_graph(graph).plans,
                          data={"data": _source()}).mode == "reduce-overhead"


def test_auto_falls_back_for_changing_batch_shapes(tmp_path: Path) -> None:
    graph = _graph(tmp_path)
    ragged = _choose(graph, data={"data": _source(130, 64, drop_last=False)})
    assert ragged.mode is None
    assert ragged.reason == ("data node 'data': the last batch of each epoch holds 2 examples, "
                             "not 64 (130 examples, drop_last false), and a new shape records "
                             "a new graph")
    sampled = _choose(graph, data={"data": _source(sampler=object())})
    assert sampled.reason == ("data node 'data' draws its batches with a sampler, whose batch "
                              "sizes may vary")
    unknown = choose_compile("cuda", graph)
    assert (unknown.mode, unknown.reason) == (None, "the batch shapes of data node 'data' "
                                              "are not known")


def test_auto_falls_back_under_fsdp(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "", "train.distributed.strategy=fsdp")
    assert _choose(graph, world_size=2).reason == (
        "FSDP (train.distributed.strategy: fsdp) gathers the sharded parameters in hooks "
        "around every forward, which CUDA graphs cannot capture")
    assert _choose(graph, world_size=1).mode == "reduce-overhead"  # one process: no sharding


def test_auto_falls_back_for_an_undeclared_node(tmp_path: Path) -> None:
    graph = _graph(tmp_path, (
        "nodes:\n  hint:\n    kind: loss\n    type: feature_mse\n"
        "    inputs: {student: student.features, teacher: student.features}\n"
        "updates:\n  main:\n    objective: {kd: 0.9, ce: 0.1, hint: 0.5}\n"))
    choice = _choose(graph)
    assert (choice.mode, choice.reason) == (None, (
        "node 'hint' (type 'feature_mse') is not declared cuda_graph_safe: it may read values "
        "back to the host, branch on them or make data-dependent shapes"))


def test_auto_falls_back_for_taps_caches_and_schedules(tmp_path: Path) -> None:
    tapped = _graph(tmp_path, (
        "nodes:\n  hint:\n    kind: loss\n    type: feature_mse\n"
        "    inputs: {student: student.body.1, teacher: student.body.1}\n"
        "updates:\n  main:\n    objective: {kd: 0.9, ce: 0.1, hint: 0.5}\n"))
    assert _choose(tapped).reason == (
        "node 'student' (type 'mlp') is tapped (body.1): the recorded outputs outlive the "
        "step, and a CUDA graph replay would overwrite them")
    cached = _graph(tmp_path, "nodes:\n  teacher:\n    cache: {}\n")
    assert _choose(cached).reason == (
        "node 'teacher' (type 'mlp') caches its outputs across steps, and a CUDA graph replay "
        "would overwrite them")
    scheduled = _graph(tmp_path, (
        "updates:\n  main:\n    objective:\n      ce: 0.1\n"
        "      kd: {schedule: linear, start: 0.0, end: 0.9, steps: 10}\n"))
    assert _choose(scheduled).reason == (
        "the weight of loss 'kd' in update 'main' follows a schedule: a new number every "
        "step would recompile the step")
    constant = _graph(tmp_path, (
        "updates:\n  main:\n    objective:\n      ce: 0.1\n"
        "      kd: {schedule: constant, start: 0.9}\n"))
    assert _choose(constant).mode == "reduce-overhead"


def test_bad_settings_are_located_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dgraph: 1\nextends: kd\ntrain:\n  compile: fast\n")
    with pytest.raises(ValidationError) as info:
        load_spec(path)
    text = str(info.value)
    assert f"{path}:4:12: error[bad-value]: invalid value for 'train.compile': Input should " \
        "be false, true, 'auto' or 'reduce-overhead'" in text
    assert "found:    'fast'" in text
    for good in ("true", "false", "auto", "reduce-overhead"):
        value = load_spec("kd", [f"train.compile={good}"]).train.compile
        assert value == {"true": True, "false": False}.get(good, good)


def test_auto_trains_eagerly_on_cpu_and_records_why(tmp_path: Path) -> None:
    graph, _ = validate(load_spec("teacher_digits", ["train.device=cpu", "train.compile=auto",
                                                     "train.steps=2", "train.eval.every=2"]))
    said: list[str] = []
    (tmp_path / "run").mkdir()
    trainer = Trainer(graph, tmp_path / "run", progress=False, log=said.append)
    step = trainer.program.plans["main"].step
    assert not hasattr(step, "_torchdynamo_orig_callable")  # the generated function itself
    assert step.__name__ == trainer.program.plans["main"].function
    summary = trainer.run()
    reason = "the device is cpu: CUDA graphs need a CUDA device"
    assert said.count(f"train.compile=auto: eager ({reason})") == 1
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["compile"] == {"setting": "auto", "mode": "eager", "reason": reason}
    assert "compile" not in summary and written["teacher/accuracy"] == summary["teacher/accuracy"]
