"""Run directories: dgraph deletes only what it wrote, one job per folder, located I/O errors,
no metrics logged twice after a resume, and strict JSON in summary.json."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dgraph.cli import main
from dgraph.errors import CheckpointError, SpecError
from dgraph.runtime import rundir
from dgraph.runtime.checkpoint import load_checkpoint, save_weights
from dgraph.runtime.logging import truncate_metrics
from dgraph.runtime.rundir import LOCK, MARKER, RunDirError, RunLock, spec_run_dir
from dgraph.spec import load_spec

SHORT = ["--quiet", "--set", "train.steps=4", "--set", "train.eval.every=100"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _train(run: Path, *extra: str) -> int:
    return main(["train", "teacher_digits", "--out", str(run), *SHORT, *extra])


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- --overwrite deletes only what dgraph wrote ----------------------------------------------
def test_overwrite_refuses_a_folder_dgraph_did_not_create(tmp_path, capsys):
    folder = tmp_path / "v"
    (folder / "final").mkdir(parents=True)
    (folder / "final" / "mine.txt").write_text("keep")
    (folder / "src").mkdir()
    (folder / "src" / "main.py").write_text("print('mine')\n")
    assert _train(folder, "--overwrite") == 1
    assert capsys.readouterr().err == (
        f"error: --overwrite refused: {folder} has no {MARKER} marker, so dgraph did not "
        "create it and deletes nothing in it; it holds final/ (names a run writes) and src/ "
        "(not dgraph's). Delete what you no longer need yourself, or choose another --out\n")
    assert (folder / "src" / "main.py").read_text() == "print('mine')\n"
    assert (folder / "final" / "mine.txt").read_text() == "keep"
    assert sorted(os.listdir(folder)) == ["final", "src"]  # nothing written either


def test_a_foreign_folder_holding_run_files_is_not_written_into(tmp_path, capsys):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "summary.json").write_text("{\"mine\": 1}\n")
    (folder / "notes.txt").write_text("mine")
    assert _train(folder) == 1
    assert capsys.readouterr().err == (
        f"error: run directory {folder} has no {MARKER} marker, so dgraph did not create it, "
        "and it already holds summary.json (names a run writes) and notes.txt (not dgraph's); "
        "a run would overwrite those. Choose another --out, or move them away\n")
    assert (folder / "summary.json").read_text() == "{\"mine\": 1}\n"


def test_overwrite_of_a_run_keeps_the_users_own_files(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "src").mkdir(parents=True)  # the user's folder: no run files in it, so it is used
    (run / "src" / "main.py").write_text("print('mine')\n")
    assert _train(run) == 0
    marker = json.loads((run / MARKER).read_text())
    assert marker["dgraph_run"] == 1 and marker["spec"] == "teacher_digits"
    (run / "notes.txt").write_text("mine")
    assert (run / "checkpoints" / "step_00000004.pt").exists()
    capsys.readouterr()
    assert _train(run, "--overwrite", "--set", "train.steps=3") == 0
    err = capsys.readouterr().err
    assert (f"--overwrite: removed the previous run (checkpoints, final, graph.mmd, graph.svg, "
            f"metrics.jsonl, spec.resolved.yaml, summary.json, tb) from {run}; kept notes.txt, "
            "src/ (not dgraph's)\n") in err
    assert (run / "src" / "main.py").read_text() == "print('mine')\n"
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003.pt"]
    assert [r["step"] for r in _rows(run) if "loss/ce" in r] == [3]


def test_a_run_of_an_older_dgraph_without_the_marker_can_be_resumed(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--set", "train.checkpoint_every=2") == 0
    (run / MARKER).unlink()
    (run / LOCK).unlink()
    shutil.rmtree(run / "final")
    capsys.readouterr()
    assert _train(run, "--set", "train.checkpoint_every=2") == 1
    assert capsys.readouterr().err == (
        f"error: run directory {run} has no {MARKER} marker, so dgraph did not create it, "
        "and it already holds checkpoints/, graph.mmd, graph.svg, metrics.jsonl, "
        "spec.resolved.yaml, summary.json, tb/ (names a run writes); a run would overwrite "
        "those. Choose another --out, or move them away (to continue a run an older dgraph "
        "wrote there, pass --resume)\n")
    assert _train(run, "--set", "train.checkpoint_every=2", "--resume") == 0
    assert (run / MARKER).exists() and (run / "final" / "teacher.safetensors").exists()


def test_overwrite_removes_a_link_not_what_it_points_to(tmp_path, capsys):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    assert _train(run) == 0
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine")
    (run / "tb").rename(tmp_path / "old_tb")
    (run / "tb").symlink_to(elsewhere, target_is_directory=True)
    assert _train(run, "--overwrite") == 0
    assert (elsewhere / "precious.txt").read_text() == "mine"
    assert (run / "tb").is_dir() and not (run / "tb").is_symlink()


def test_a_spec_cannot_put_its_run_outside_runs(tmp_path, monkeypatch, capsys):
    work = tmp_path.resolve() / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spec = work / "escape.yaml"
    spec.write_text((Path(__file__).parents[2] / "specs" / "teacher_digits.yaml").read_text()
                    .replace("name: teacher_digits\n", "name: ../../x\n", 1))
    line = spec.read_text().splitlines().index("name: ../../x") + 1
    assert main(["train", str(spec), *SHORT]) == 1
    assert capsys.readouterr().err == (
        f"error: {spec}:{line}:7: name '../../x' would put the run directory at "
        f"{tmp_path.resolve() / 'x'}, outside runs/ ({work / 'runs'}); a spec's name becomes "
        "the folder runs/<name>: use a plain name such as 'kd_small'; pass --out DIR on the "
        "command line to write elsewhere\n")
    assert sorted(os.listdir(tmp_path)) == ["work"]


@pytest.mark.parametrize("out", ["/elsewhere/run", "../run", "."])
def test_train_out_must_stay_in_the_working_directory(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    spec = load_spec("teacher_digits", [f"train.out={out}"])
    target = (tmp_path.resolve() / out).resolve()
    with pytest.raises(SpecError) as info:
        spec_run_dir(spec)
    assert str(info.value) == (
        f"<--set train.out={out}>: train.out '{out}' would put the run directory at {target}, "
        f"outside the working directory ({tmp_path.resolve()}); a spec may only choose a "
        "folder inside the working directory (such as runs/my_run); pass --out DIR on the "
        "command line to write elsewhere")
    assert spec_run_dir(load_spec("teacher_digits", ["train.out=runs/a/b"])) == \
        Path("runs/a/b")
    assert spec_run_dir(load_spec("teacher_digits")) == Path("runs/teacher_digits")


# -- one job per run directory -----------------------------------------------------------------
def test_a_second_job_into_the_same_folder_is_refused_and_sigkill_frees_it(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "dgraph", "train", "teacher_digits", "--out", str(run), "--quiet",
         "--set", "train.steps=1000000", "--set", "train.checkpoint_every=5"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints").is_dir() or not any((run / "checkpoints").iterdir()):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert (run / LOCK).read_text() == f"{first.pid}\n"
        busy = (f"error: run directory {run} is in use by another dgraph job (pid {first.pid}, "
                f"lock {run / LOCK}); wait for it to end or stop it, or choose another --out\n")
        for extra in ([], ["--resume"], ["--overwrite"]):
            capsys.readouterr()
            assert _train(run, *extra) == 1, extra
            assert capsys.readouterr().err == busy, extra
        assert first.poll() is None  # untouched by the refused jobs
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the lock with the process: the folder is free at once.
    assert _train(run, "--overwrite") == 0
    assert (run / "final" / "teacher.safetensors").exists()


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunDirError) as info:
            RunLock(tmp_path / "run").acquire()
        assert str(info.value) == (
            f"run directory {tmp_path / 'run'} is in use by another dgraph job (pid "
            f"{os.getpid()}, lock {tmp_path / 'run' / LOCK}); wait for it to end or stop it, "
            "or choose another --out")
    RunLock(tmp_path / "run").acquire().release()


# -- file-system failures are located ------------------------------------------------------
def test_out_is_a_file(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("mine")
    assert _train(file) == 1
    assert capsys.readouterr().err == (
        f"error: run directory {file} is an existing file, not a folder; choose another --out\n")
    assert _train(file / "run") == 1
    assert capsys.readouterr().err == (
        f"error: cannot create run directory {file / 'run'}: {file} is a file, not a folder; "
        "choose another --out\n")
    assert file.read_text() == "mine"


def test_out_in_a_read_only_folder(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        (parent / "probe").mkdir()
    except PermissionError:
        pass
    else:
        parent.chmod(0o755)
        pytest.skip("this process writes into read-only folders (root with CAP_DAC_OVERRIDE); "
                    "test_out_is_a_file covers a folder that cannot be made")
    try:
        assert _train(parent / "run") == 1
        assert capsys.readouterr().err == (
            f"error: cannot create run directory {parent / 'run'} (Permission denied); choose "
            "a writable --out\n")
    finally:
        parent.chmod(0o755)
    (parent / "run").mkdir()
    (parent / "run").chmod(0o555)
    try:
        assert _train(parent / "run") == 1
        assert capsys.readouterr().err == (
            f"error: cannot write in run directory {parent / 'run'} (Permission denied: "
            f"{parent / 'run' / LOCK}); choose a writable --out\n")
    finally:
        (parent / "run").chmod(0o755)


class _FullDisk:
    """A file handle on a disk that fills after 1000 bytes (torch.save turns the OSError into
    a RuntimeError of its own, as it does on a real full disk)."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.room = 1000

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.handle.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.handle.close()


def _disk_fills_for(monkeypatch, fragment: str) -> None:
    real = rundir._open_temp

    def open_temp(tmp: str, fd: int):
        handle = real(tmp, fd)
        return _FullDisk(handle) if fragment in Path(tmp).name else handle

    monkeypatch.setattr(rundir, "_open_temp", open_temp)


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _disk_fills_for(monkeypatch, "step_00000008")
    args = ["--set", "train.steps=8", "--set", "train.checkpoint_every=4"]
    assert _train(run, *args) == 1
    folder = run / "checkpoints"
    assert capsys.readouterr().err == (
        f"error: cannot write checkpoint {folder / 'step_00000008.pt'} (No space left on "
        f"device); the previous checkpoint {folder / 'step_00000004.pt'} is intact. Free space "
        "(or fix the folder's permissions), then continue with --resume\n")
    assert os.listdir(folder) == ["step_00000004.pt"]  # the temporary file is gone
    assert load_checkpoint(folder / "step_00000004.pt")["step"] == 4
    monkeypatch.undo()
    assert _train(run, *args, "--resume") == 0  # the lock was released on the way out
    assert (run / "final" / "teacher.safetensors").exists()


def test_disk_full_while_writing_weights_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "final" / "student.safetensors"
    save_weights(path, {"w": torch.ones(1000)}, {"node": "student"})
    before = path.read_bytes()
    _disk_fills_for(monkeypatch, "student.safetensors")
    with pytest.raises(CheckpointError) as info:
        save_weights(path, {"w": torch.zeros(1000)}, {"node": "student"})
    assert str(info.value) == (
        f"cannot write weights file {path} (No space left on device); no part of it was "
        "written. Free space (or fix the folder's permissions), then run again (with --resume "
        "to finish a run)")
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["student.safetensors"]


# -- metrics are not logged twice after a resume --------------------------------------------
def test_resume_drops_what_was_logged_after_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = ["--set", "train.steps=12", "--set", "train.checkpoint_every=6",
            "--set", "train.log_every=1"]
    assert _train(run, *args) == 0
    # As if killed after step 12 was logged but before its checkpoint was written.
    (run / "checkpoints" / "step_00000012.pt").unlink()
    (run / "summary.json").unlink()
    shutil.rmtree(run / "final")
    assert _train(run, *args, "--resume") == 0
    assert [r["step"] for r in _rows(run) if "loss/ce" in r] == list(range(1, 13))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/ce")] == list(range(1, 13))


def test_truncate_metrics_keeps_rows_up_to_the_step_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = "".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 6))
    path.write_text(rows + '{"step": 6, "lo')
    truncate_metrics(path, 3)
    assert path.read_text() == "".join(json.dumps({"step": s, "loss": s / 10}) + "\n"
                                       for s in range(1, 4))


# -- summary.json is strict JSON --------------------------------------------------------------
def test_nan_in_the_eval_split_gives_null_and_a_warning(tmp_path, capsys):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=generator)
    y = torch.randint(0, 3, (32,), generator=generator)
    torch.save({"x": x, "y": y}, tmp_path / "train.pt")
    held_out = x[:8].clone()
    held_out[2, 1] = float("nan")
    torch.save({"x": held_out, "y": y[:8]}, tmp_path / "eval.pt")
    spec = tmp_path / "nan_eval.yaml"
    spec.write_text(textwrap.dedent("""
        dgraph: 1
        nodes:
          data:
            kind: data
            type: tensor_file
            params:
              path: train.pt
              eval_path: eval.pt
              batch_size: 8
              keys: {x: {key: x, type: Features}, y: {key: y, type: Labels}}
          student:
            kind: student
            type: mlp
            params: {in_features: 4, hidden: [8], num_classes: 3}
            inputs: {x: data.x}
          ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
        updates:
          main: {params: [student], objective: {ce: 1.0}}
        train: {steps: 2, device: cpu, eval: {every: 100}}
        """))
    run = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert (f"warning: non-finite evaluation metrics, written as null in {run / 'summary.json'}"
            ": loss/ce = nan; check the evaluation split for NaN/inf values and the model's "
            "outputs\n") in err

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    summary = json.loads((run / "summary.json").read_text(), parse_constant=strict)
    assert summary["loss/ce"] is None and 0 <= summary["student/accuracy"] <= 1
    assert json.loads(out, parse_constant=strict) == summary
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=strict)
