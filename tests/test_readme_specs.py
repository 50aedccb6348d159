"""The complete specs README.md shows are valid and train."""

from __future__ import annotations

import re
from pathlib import Path

from dgraph.api import train
from dgraph.graph import validate
from dgraph.spec import load_spec

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def _yaml_block_after(heading: str) -> str:
    section = README[README.index(heading):]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match is not None, heading
    return match.group(1)


def test_the_diffusion_section_spec_validates_and_trains(tmp_path):
    path = tmp_path / "my_diffusion_teacher.yaml"
    path.write_text(_yaml_block_after("## Diffusion distillation"), encoding="utf-8")
    graph, warnings = validate(load_spec(path))
    assert warnings == [] and "samples" in graph.nodes
    summary = train(path, out=tmp_path / "run", overrides=["train.steps=3"], progress=False,
                    log=lambda _: None)
    assert {f"samples/{m}@{k}" for m in ("energy_distance", "mode_coverage", "in_modes")
            for k in (1, 2, 4, 50)} <= set(summary)
