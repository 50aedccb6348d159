"""The zoo spec ``dd_gm``: gradient matching with DSA validates, learns its images, resumes.

Also the DSA op ``siamese_shift`` it uses: one draw per example index for both batches.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import QUIET
from safetensors.torch import load_file

from dgraph.api import train
from dgraph.cli import main
from dgraph.registry import COMPONENTS, BuildContext, load_plugins
from dgraph.spec import load_spec

load_plugins()

# One evaluation seed of a few steps, a small real batch and a small net: fast on a CPU.
FAST = [f"nodes.{node}.params.{value}" for node in ("synthetic", "random_real")
        for value in ("seeds=[0]", "steps=5")] + [
    "nodes.data.params.batch_size=32", "nodes.net.params.width=8"]


def _shift():
    component = COMPONENTS.get("siamese_shift")
    declared = component(component.Params.model_validate({"max_shift": 1}), "aug")
    return declared.build(BuildContext(node="aug"))


def test_siamese_shift_gives_example_i_of_both_batches_the_same_translation():
    real = torch.arange(4 * 9, dtype=torch.float32).view(4, 1, 3, 3)
    syn = real[:2].clone().requires_grad_(True)
    torch.manual_seed(0)
    out = _shift()(x=real, x2=syn)
    torch.manual_seed(0)
    rows, cols = torch.randint(0, 3, (2, 4)) - 1  # offsets of the 4 (= max(4, 2)) draws
    for i in range(4):
        padded = torch.nn.functional.pad(real[i, 0], (1, 1, 1, 1))
        expected = padded[1 + rows[i]:4 + rows[i], 1 + cols[i]:4 + cols[i]]
        assert torch.equal(out["y"][i, 0], expected)
    assert torch.equal(out["y2"], out["y"][:2])  # same images, same draws
    out["y2"].sum().backward()
    assert syn.grad is not None and syn.grad.sum() > 0


def test_dd_gm_validates(capsys):
    spec = load_spec("dd_gm")
    assert spec.nodes["net"].reinit_every == 10
    assert main(["validate", "dd_gm"]) == 0
    assert main(["validate", "dd_gm", "--set", "nodes.syn.params.images_per_class=1",
                 "--set", "nodes.net.reinit_every=1"]) == 0
    capsys.readouterr()


def test_dd_gm_trains_the_images(tmp_path):
    run = tmp_path / "run"
    summary = train("dd_gm", out=run, overrides=["train.steps=3", "train.eval.every=3", *FAST],
                    **QUIET)
    assert 0.0 <= summary["synthetic/accuracy"] <= 1.0
    assert 0.0 <= summary["random_real/accuracy"] <= 1.0
    images = load_file(str(run / "final" / "syn.safetensors"))["images"]
    torch.manual_seed(0)  # train.seed: syn's init draws first
    start = COMPONENTS.get("synthetic_digits")
    declared = start(start.Params.model_validate({"images_per_class": 10}), "syn")
    initial = declared.build(BuildContext(node="syn")).images.detach()
    assert images.shape == initial.shape == (100, 1, 8, 8)
    assert not torch.equal(images, initial)


def _run(out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "dgraph.cli", "train", "dd_gm", "--out", str(out), "--quiet",
         "--set", "train.steps=12", "--set", "train.checkpoint_every=2",
         "--set", "train.eval.every=1000", "--set", "nodes.syn.params.images_per_class=1",
         "--set", "nodes.net.reinit_every=3",  # re-drawn between checkpoints
         *[a for value in FAST for a in ("--set", value)], *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # 22 s; the other zoo resume tests cover the same runtime path
def test_dd_gm_resume_after_sigkill_is_bit_identical(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done, proc = _run(reference), _run(killed)  # side by side: the reference runs through
    deadline = time.monotonic() + 120
    folder = killed / "checkpoints"
    while not (folder.exists() and any(int(p.stem.split("_")[1]) >= 4
                                       for p in folder.glob("step_*.pt"))):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    assert done.wait(timeout=120) == 0, done.stderr.read()
    resumed = _run(killed, "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert "resuming from" in resumed.stderr.read()
    for name in ("syn", "net"):
        expected = load_file(str(reference / "final" / f"{name}.safetensors"))
        found = load_file(str(killed / "final" / f"{name}.safetensors"))
        assert expected.keys() == found.keys() and expected
        for key, value in expected.items():
            assert torch.equal(found[key], value), f"{name}.{key} differs after resume"
