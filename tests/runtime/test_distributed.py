"""Data-parallel training with torch.distributed: 2 processes on CPU (gloo), started by
`dgraph train --nproc 2` through torch's own launcher."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import cli_train, finish
from safetensors.torch import load_file

SHORT = ["--set", "train.steps=40", "--set", "train.eval.every=40",
         "--set", "train.checkpoint_every=5", "--set", "train.log_every=5"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "teacher.safetensors"))


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    single = cli_train("teacher_digits", tmp_path / "single", *SHORT, nproc=1)
    double = cli_train("teacher_digits", tmp_path / "double", *SHORT, nproc=2)
    finish(single)
    summary = finish(double)
    assert summary.count("teacher/accuracy") == 1  # only rank 0 prints the summary
    one, two = _weights(tmp_path / "single"), _weights(tmp_path / "double")
    assert one.keys() == two.keys()
    for key in one:
        # The same update from a mean over the global batch, summed in another order.
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)


def test_sigkill_then_resume_under_two_processes_is_bit_identical(tmp_path):
    reference = cli_train("teacher_digits", tmp_path / "reference", *SHORT)
    finish(reference)
    run = tmp_path / "interrupted"
    proc = cli_train("teacher_digits", run, *SHORT)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints").exists() or \
            len(list((run / "checkpoints").glob("step_*.pt"))) < 2:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists()
    finish(cli_train("teacher_digits", run, *SHORT, "--resume"))
    expected, found = _weights(tmp_path / "reference"), _weights(run)
    for key, value in expected.items():
        assert torch.equal(found[key], value), key


def test_a_global_batch_that_does_not_split_across_ranks_is_located(tmp_path):
    proc = cli_train("teacher_digits", tmp_path / "run", "--set", "nodes.data.params.batch_size=63",
                  *SHORT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0
    message = ("error: <--set nodes.data.params.batch_size=63>: node 'data': batch_size 63 is "
               "the global batch and must split evenly across the 2 ranks of this job; use a "
               "multiple of 2 (e.g. --set nodes.data.params.batch_size=62)")
    assert err.count(message) == 2  # each rank says it
    assert err.rstrip().endswith("error: dgraph train --nproc 2: rank(s) 0, 1 of 2 failed "
                                 "(their messages are above); the job was stopped")
    assert "Traceback" not in err


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_nproc_must_be_positive(tmp_path, bad, capsys):
    from dgraph.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "teacher_digits", "--out", str(tmp_path / "r"), "--nproc", bad])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"argument --nproc: {bad} is not a number of processes (1 or more)")


# -- strategy: fsdp (torch's fully_shard) --------------------------------------------------------

FSDP = ["--set", "train.distributed.strategy=fsdp"]


def test_fsdp_two_processes_match_one_and_save_whole_weights(tmp_path):
    # Two micro-batches per step: FSDP reduces the gradients in the second one's backward.
    accumulate = ["--set", "updates.main.accumulate=2"]
    single = cli_train("teacher_digits", tmp_path / "single", *SHORT, *accumulate, nproc=1)
    sharded = cli_train("teacher_digits", tmp_path / "sharded", *SHORT, *accumulate, *FSDP,
                     nproc=2)
    finish(single)
    finish(sharded)
    one, two = _weights(tmp_path / "single"), _weights(tmp_path / "sharded")
    assert {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in two.items()}
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
    # The checkpoint holds whole tensors too (one format at any world size), read safely.
    latest = sorted((tmp_path / "sharded" / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(latest, weights_only=True)
    assert state["modules"]["teacher"]["body.0.weight"].shape == (256, 64)
    exp_avg = state["optimizers"]["main"]["state"][0]["exp_avg"]
    assert type(exp_avg) is torch.Tensor and exp_avg.shape == (256, 64)


# Both checkpoint kinds resume the same way; the fast tier runs the sharded one (26 s each).
@pytest.mark.parametrize("checkpoint", [pytest.param("whole", marks=pytest.mark.slow),
                                        "sharded"])
def test_fsdp_sigkill_then_resume_is_bit_identical_and_resumes_on_one_process(tmp_path,
                                                                              checkpoint):
    extra = [*SHORT, *FSDP, "--set", "train.keep_checkpoints=20",
             "--set", f"train.distributed.checkpoint={checkpoint}"]
    reference = tmp_path / "reference"
    finish(cli_train("teacher_digits", reference, *extra))
    run = tmp_path / "interrupted"
    proc = cli_train("teacher_digits", run, *extra)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints").exists() or \
            len(list((run / "checkpoints").glob("step_*.pt"))) < 2:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finish(cli_train("teacher_digits", run, *extra, "--resume"))
    expected, found = _weights(reference), _weights(run)
    for key, value in expected.items():
        assert torch.equal(found[key], value), key

    # A checkpoint of the two-process job resumed by one process: the same weights, up to the
    # order in which the global batch's gradients were summed.
    alone = tmp_path / "alone"
    import shutil

    shutil.copytree(reference, alone)
    shutil.rmtree(alone / "final")
    for checkpoint in (alone / "checkpoints").glob("step_*.pt"):
        if int(checkpoint.stem.split("_")[1]) > 20:
            checkpoint.unlink()
    if checkpoint == "sharded":  # the teacher and its optimizer state are in the shards only
        state = torch.load(alone / "checkpoints" / "step_00000020.pt", weights_only=True)
        assert state["modules"] == {} and state["optimizers"] == {}
        assert state["shards"]["folder"] == "step_00000020.shards"
        assert sorted(p.name for p in (alone / "checkpoints" / "step_00000020.shards")
                      .iterdir()) == [f"shard-0000{r}-model-00001-of-00001.safetensors"
                                      for r in (1, 2)]
    err = cli_train("teacher_digits", alone, *extra, "--resume",
                    nproc=1).communicate(timeout=240)[1]
    assert "resuming from" in err and "(step 20)" in err
    for key, value in expected.items():
        torch.testing.assert_close(_weights(alone)[key], value, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec,message", [
    ("consistency_toy",
     "specs/consistency_toy.yaml:51:22: error[fsdp-followed]: node 'target': it follows the "
     "parameters of 'student' (param 'source'), which FSDP shards across ranks\n"
     "    expected: a followed node that every rank holds whole\n"
     "    found:    'student' sharded by strategy: fsdp\n"
     "    hint: use strategy: ddp for a spec with an EMA or other target node"),
    ("teacher_digits",
     "<--set train.distributed.checkpoint=sharded>: error[sharded-checkpoint]: "
     "checkpoint: sharded writes the shards of the modules FSDP shards, and strategy ddp "
     "shards none\n"
     "    expected: strategy: fsdp with checkpoint: sharded\n"
     "    found:    strategy: ddp\n"
     "    hint: use strategy: fsdp, or checkpoint: whole"),
    ("adversarial_toy",
     "<--set train.distributed.strategy=fsdp>: error[fsdp-shared]: node 'critic': its "
     "parameters are shared with critic_on_fake, and FSDP cannot shard parameters that two "
     "nodes use\n"
     "    expected: strategy: ddp for a spec whose trained nodes share parameters\n"
     "    found:    strategy: fsdp\n"
     "    hint: use strategy: ddp, or give the nodes their own parameters"),
])
def test_fsdp_mistakes_are_located_by_validation(spec, message, capsys):
    from dgraph.cli import main

    flags = ["--set", "train.distributed.checkpoint=sharded"] if spec == "teacher_digits" \
        else FSDP
    assert main(["validate", spec, "--static", *flags]) == 1
    err = capsys.readouterr().err
    assert message in err, err
