"""The complete specs README.md shows are valid and train."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dgraph.api import train
from dgraph.graph import validate
from dgraph.spec import load_spec

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def _yaml_block_after(heading: str) -> str:
    section = README[README.index(heading):]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match is not None, heading
    return match.group(1)


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """The diffusion section's spec, validated and trained for 20 steps."""
    folder = tmp_path_factory.mktemp("readme")
    path = folder / "my_diffusion_teacher.yaml"
    path.write_text(_yaml_block_after("## Diffusion distillation"), encoding="utf-8")
    graph, warnings = validate(load_spec(path))
    assert warnings == [] and "samples" in graph.nodes
    summary = train(path, out=folder / "run", overrides=[
        "train.steps=20", "train.eval.every=20", "nodes.samples.params.num_samples=64"],
        progress=False, log=lambda _: None)
    return folder / "run", summary


def test_the_diffusion_section_spec_validates_and_trains(diffusion_run):
    _run, summary = diffusion_run
    assert {f"samples/{m}@{k}" for m in ("energy_distance", "mode_coverage", "in_modes")
            for k in (1, 2, 4, 50)} <= set(summary)


def test_the_readme_onnx_sampling_loop_matches_diffusers_ddim_in_torch(diffusion_run,
                                                                       tmp_path):
    """The README's numpy + onnxruntime K-step loop on an exported denoiser gives the samples
    of diffusers' DDIMScheduler driving the torch module, from the same noise."""
    import subprocess
    import sys

    import numpy as np
    import torch
    from dgraph.exporters.api import export_run
    from dgraph.exporters.source import load_subject
    from diffusers import DDIMScheduler

    run, _summary = diffusion_run
    export_run(run, tmp_path / "student.onnx")
    section = README[README.index("dgraph sample RUN --steps K"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    script = tmp_path / "loop.py"
    script.write_text(code.group(1) + "np.save('x.npy', x)\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = np.load(tmp_path / "x.npy")

    module = load_subject(run, "teacher").module
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                              prediction_type="v_prediction", timestep_spacing="trailing",
                              set_alpha_to_one=True, clip_sample=False)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1000, 2))
                         .astype(np.float32))
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = module(x, t.repeat(len(x)))
            v = out["prediction"] if isinstance(out, dict) else out
            x = scheduler.step(v, t, x).prev_sample
    assert np.abs(found - x.numpy()).max() < 1e-4
    assert np.abs(found).max() > 0.1  # moved from the noise, not all zeros
