"""dgraph sweep: grid and TPE search over specs, located errors, the training-free score.

Trials are real `dgraph train` runs of the kd spec for 5 steps (the teacher: a 20-step run
of teacher_digits made once and placed beside the trials, where they look for it).
"""

from __future__ import annotations

import json
import math
import shutil
import struct

import pytest
import torch

from dgraph.cli import main
from dgraph.graph import validate
from dgraph.spec import load_spec

pytest.importorskip("optuna")

FAST = ["--set", "train.steps=5", "--set", "train.eval.every=5", "--set", "train.log_every=5"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from dgraph.api import train

    run = tmp_path_factory.mktemp("teacher") / "teacher_digits"
    train("teacher_digits", out=run, overrides=["train.steps=20", "train.eval.every=20"],
          progress=False, log=lambda _: None)
    return run


def _sweep_dir(tmp_path, teacher_run, name="sweep"):
    out = tmp_path / name
    out.mkdir()
    shutil.copytree(teacher_run, out / "teacher_digits")  # beside the trials: found there
    return out


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _results(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_grid_runs_every_combination_reports_failures_and_writes_the_best(
        tmp_path, teacher_run, capsys):
    out = _sweep_dir(tmp_path, teacher_run)
    code = main(["sweep", "kd", "--grid", "nodes.kd.params.temperature=2,4",
                 "--grid", "updates.main.optimizer.lr=0.003,1e30", "--objective",
                 "student/accuracy", "--jobs", "4", "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = _results(out)
    assert [r["trial"] for r in records] == [0, 1, 2, 3]
    combos = {(r["params"]["nodes.kd.params.temperature"],
               r["params"]["updates.main.optimizer.lr"]) for r in records}
    assert combos == {(2, 0.003), (2, 1e30), (4, 0.003), (4, 1e30)}
    for r in records:
        run = out / f"trial_{r['trial']:04d}"
        resolved = (run / "spec.resolved.yaml").read_text()
        assert f"temperature: {r['params']['nodes.kd.params.temperature']}" in resolved
        if r["params"]["updates.main.optimizer.lr"] == 1e30:  # a failing trial is recorded
            assert r["status"] == "failed" and r["objective"] is None
            assert r["error"].startswith("exit 1: error: step 1: update 'main' went "
                                         "non-finite (loss nan")
        else:
            assert r["status"] == "ok" and r["error"] is None
            summary = json.loads((run / "summary.json").read_text())
            assert r["objective"] == summary["student/accuracy"]
        assert r["seconds"] > 0
    # The table (rich) on stdout, one line per trial on stderr.
    assert "dgraph sweep kd: student/accuracy (max), 4 trials" in captured.out
    assert "│ ok" in captured.out and "│ failed: exit 1: error: step 1:" in captured.out
    assert "went non-finite" in captured.err and "best: trial " in captured.err
    assert _png_size(out / "results.png") == (640, 400)
    # The best spec: the best trial's values applied; it validates and trains as it is.
    ok = [r for r in records if r["status"] == "ok"]
    best = max(ok, key=lambda r: (r["objective"], -r["trial"]))
    text = (out / "best.yaml").read_text()
    assert text.startswith(f"# The best trial ({best['trial']}, student/accuracy = ")
    spec = load_spec(out / "best.yaml")
    validate(spec)
    kd = spec.nodes["kd"].params
    assert kd["temperature"] == best["params"]["nodes.kd.params.temperature"]
    assert spec.updates["main"].optimizer.lr == 0.003 and spec.train.steps == 5
    assert main(["train", str(out / "best.yaml"), "--out", str(out / "best_run"),
                 "--quiet"]) == 0
    assert json.loads((out / "best_run" / "summary.json").read_text())[
        "student/accuracy"] == pytest.approx(best["objective"])
    # Resuming a finished sweep runs nothing more; a changed sweep or a reused folder is
    # refused before anything runs.
    assert main(["sweep", "kd", "--grid", "nodes.kd.params.temperature=2,4",
                 "--grid", "updates.main.optimizer.lr=0.003,1e30", "--objective",
                 "student/accuracy", "--out", str(out), "--resume", *FAST]) == 0
    assert _results(out) == records
    capsys.readouterr()
    assert main(["sweep", "kd", "--grid", "nodes.kd.params.temperature=2,4",
                 "--objective", "student/accuracy", "--out", str(out), *FAST]) == 1
    assert capsys.readouterr().err == (
        f"{out}/sweep.json: error[sweep-exists]: {out} holds a sweep already\n"
        "    expected: a new or empty folder for --out\n"
        f"    found:    {out}/sweep.json\n"
        "    hint: continue it with --resume, or choose another --out\n")


SPACE = """\
nodes.kd.params.temperature: {low: 1.0, high: 8.0}
updates.main.optimizer.lr: {low: 0.0003, high: 0.03, log: true}
nodes.student.params.hidden: {choices: [[8], [16], [32, 16]]}
"""


@pytest.mark.slow  # two sweeps of 3 trial processes each: ~40 s on 2 idle cores
def test_search_under_a_fixed_seed_is_reproducible(tmp_path, teacher_run, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    runs = []
    for name in ("a", "b"):
        out = _sweep_dir(tmp_path, teacher_run, name)
        assert main(["sweep", "kd", "--search", str(space), "--trials", "3", "--seed", "7",
                     "--objective", "training_free", "--jobs", "3", "--out", str(out),
                     *FAST]) == 0, capsys.readouterr().err
        runs.append(_results(out))
    first, second = runs
    assert [r["params"] for r in first] == [r["params"] for r in second]
    assert [r["objective"] for r in first] == [r["objective"] for r in second]
    assert all(r["status"] == "ok" for r in first)
    for r in first:
        p = r["params"]
        assert 1.0 <= p["nodes.kd.params.temperature"] <= 8.0
        assert 0.0003 <= p["updates.main.optimizer.lr"] <= 0.03
        assert p["nodes.student.params.hidden"] in ([8], [16], [32, 16])
        score = json.loads((tmp_path / "a" / f"trial_{r['trial']:04d}" / "score.json")
                           .read_text())
        assert r["objective"] == score["score"] == score["relation"] + score["semantic"]
        assert r["objective"] < 0
    assert len({json.dumps(r["params"], sort_keys=True) for r in first}) == 3


@pytest.mark.parametrize("space, message", [
    ("train.steps: {low: 10, high: 20}\nnodes.kdd.params.temperature: {low: 1, high: 2}\n",
     "{space}:2:1: error[unknown-key]: the key 'nodes.kdd.params.temperature' names nothing "
     "in spec 'kd': 'nodes' has no 'kdd'\n"
     "    expected: one of: data, student, ce, teacher, kd\n"
     "    found:    'kdd'\n"
     "    hint: did you mean 'kd'?\n"),
    ("nodes.kd.params.temperature: {low: 4.0, hihg: 8.0}\n",
     "{space}:1:41: error[bad-space]: 'nodes.kd.params.temperature': unknown field 'hihg'\n"
     "    expected: one of: low, high, log, step, choices\n"
     "    found:    hihg: 8.0\n"
     "    hint: did you mean 'high'?\n"),
    ("nodes.kd.params.temperature: {low: 4.0, high: 2.0}\n",
     "{space}:1:47: error[bad-space]: 'nodes.kd.params.temperature': low must be below high\n"
     "    expected: high > low (4.0)\n"
     "    found:    high 2.0\n"
     "    hint: swap the bounds, or list one value as {{choices: [v]}}\n"),
    ("updates.main.optimizer.lr: {low: 0, high: 0.1, log: true}\n",
     "{space}:1:34: error[bad-space]: 'updates.main.optimizer.lr': a log range needs low > 0\n"
     "    expected: low > 0 with log: true\n"
     "    found:    low 0\n"
     "    hint: use a small positive low, e.g. 1e-5\n"),
    ("- train.steps\n",
     "{space}:1:1: error[bad-space]: the space file must be a mapping from --set paths to "
     "ranges or choices\n"
     "    expected: a non-empty mapping\n"
     "    found:    a list [\"train.steps\"]\n"
     "    hint: e.g. nodes.kd.params.temperature: {{low: 1.0, high: 8.0}} or "
     "nodes.student.params.hidden: {{choices: [[16], [32]]}}\n"),
])
def test_a_bad_space_file_is_located_before_any_trial(tmp_path, capsys, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    out = tmp_path / "sweep"
    assert main(["sweep", "kd", "--search", str(path), "--trials", "2", "--objective",
                 "student/accuracy", "--out", str(out)]) == 1
    assert capsys.readouterr().err == message.format(space=path)
    assert not out.exists()


def test_a_key_or_value_the_spec_rejects_is_located_at_the_grid_item(tmp_path, capsys):
    out = tmp_path / "sweep"
    # A parameter the component does not have: the validator's problem, at the --grid item.
    assert main(["sweep", "kd", "--grid", "nodes.kd.params.temprature=2,4", "--objective",
                 "student/accuracy", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (
        "<--grid nodes.kd.params.temprature=2,4>: error[unknown-param]: node 'kd': component "
        "type 'hinton_kd' has no parameter 'temprature'\n"
        "    expected: one of: direction, temperature, scale_by_t2\n"
        "    found:    temprature: 2\n"
        "    note: with nodes.kd.params.temprature=2\n"
        "    hint: did you mean 'temperature'?\n"
        "1 error: the spec is not valid\n")
    # One value of the grid out of range: every trial's spec is checked before any runs.
    assert main(["sweep", "kd", "--grid", "nodes.kd.params.temperature=2,-1", "--objective",
                 "student/accuracy", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("<--grid nodes.kd.params.temperature=2,-1>: error[")
    assert "    note: with nodes.kd.params.temperature=-1\n" in err
    assert main(["sweep", "kd", "--grid", "nodes.kd.params.temperature=2,,4", "--objective",
                 "student/accuracy", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (
        "<--grid nodes.kd.params.temperature=2,,4>: error[bad-grid]: value 2 of --grid "
        "'nodes.kd.params.temperature' is empty\n"
        "    expected: comma-separated YAML values, e.g. 2,4,8 or [16],[32]\n"
        "    found:    '2,,4'\n"
        "    hint: remove the doubled, leading or trailing ','\n")
    assert not out.exists()


def test_grid_values_split_outside_brackets():
    from dgraph.search import parse_grid

    (param,) = parse_grid(["nodes.student.params.hidden=[16],[32, 16],'a,b'"])
    assert param.choices == ([16], [32, 16], "a,b")
    assert param.override([32, 16]) == "nodes.student.params.hidden=[32, 16]"


def test_training_free_score_by_hand():
    from dgraph.search.training_free import training_free_score

    # Sample relation of the features: teacher F F^T = I; student [[1, 1], [1, 0]] gives
    # [[2, 1], [1, 1]], rows scaled to unit norm: [[2, 1] / sqrt 5, [1, 1] / sqrt 2].
    teacher = {"features": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
               "logits": torch.tensor([[2.0, 0.0], [0.0, 0.0]])}
    student = {"features": torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
               "logits": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    s5, s2 = math.sqrt(5), math.sqrt(2)
    relation = -((1 - 2 / s5) ** 2 + (1 / s5) ** 2 + (1 / s2) ** 2 + (1 - 1 / s2) ** 2) / 4
    # Class relation of the logits: teacher Z^T Z = [[4, 0], [0, 0]] -> [[1, 0], [0, 0]]
    # (a zero row stays zero); student Z^T Z = I.
    semantic = -(0 + 0 + 0 + 1) / 4
    score = training_free_score(teacher, student)
    assert score["relation"] == pytest.approx(relation, abs=1e-12)
    assert score["semantic"] == pytest.approx(semantic, abs=1e-12)
    assert score["score"] == pytest.approx(relation + semantic, abs=1e-12)
    # Equal relations score 0 (the best); a scale of the features changes nothing.
    same = training_free_score(teacher, {k: 3 * v for k, v in teacher.items()})
    assert same == {"relation": 0.0, "semantic": 0.0, "score": 0.0}
    # Widths may differ for the relation; the class relation needs equal class counts.
    wide = {"features": torch.randn(2, 7), "logits": torch.randn(2, 3)}
    assert set(training_free_score(teacher, wide)) == {"relation", "score"}


@pytest.mark.parametrize("argv, message", [
    (["--objective", "student/accuracy"], "give either --grid KEY=V1,V2 (repeatable) or "
     "--search SPACE.yaml --trials N"),
    (["--search", "space.yaml", "--objective", "student/accuracy"], "--search needs --trials N"),
    (["--grid", "train.steps=1,2", "--trials", "3", "--objective", "student/accuracy"],
     "--trials goes with --search; a grid runs every combination"),
])
def test_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "kd", *argv])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"dgraph sweep: error: {message}"
