"""Declarations: importable without torch, documented, and usable in a validated spec graph."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.registry import COMPONENTS, load_plugins
from dgraph.spec.model import load_spec

load_plugins()
# Every built-in component type: found, not listed by hand (a new file is a new component).
OURS = {name for name, _ in COMPONENTS.items()
        if COMPONENTS.origin(name).startswith(("dgraph.components.", "preset of "))}


def test_declarations_import_without_torch():
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import dgraph.components
        from dgraph.registry import COMPONENTS, load_plugins
        load_plugins()
        types = list(COMPONENTS)  # listing the types imports every built-in module
        leaked = sorted(m for m in sys.modules if m.split(".")[-1].startswith("_torch"))
        print(json.dumps({"types": types, "leaked": leaked,
                          "sklearn": "sklearn" in sys.modules}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert OURS <= set(report["types"])
    assert report["leaked"] == []
    assert not report["sklearn"]


@pytest.mark.parametrize("name", sorted(OURS))
def test_declaration_is_documented(name):
    cls = COMPONENTS.get(name)
    assert cls.doc() and cls.doc().splitlines()[0].endswith(".")
    assert cls.Params.__doc__
    for field_name, field in cls.Params.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"
    module = sys.modules[cls.__module__]
    # A declared component is exported under its function's or class's name.
    exported = getattr(cls, "implementation", None) or cls
    assert module.__doc__ and exported.__name__ in module.__all__


SPEC = """
dgraph: 1
name: kd-digits
nodes:
  data:
    kind: data
    type: digits
    params: {{flatten: false, labelled: 100}}
  teacher:
    kind: teacher
    type: cnn
    params: {{in_channels: 1, channels: [16, 32], num_classes: 10, image_size: {teacher_size}}}
    inputs: {{x: data.x}}
  student:
    kind: student
    type: cnn
    params: {{in_channels: 1, channels: [8, 16], num_classes: 10, image_size: 8}}
    inputs: {{x: data.x}}
  regressor:
    kind: projector
    type: conv1x1_projector
    params: {{in_channels: 16, out_channels: 32}}
    inputs: {{x: student.layer2}}
  hint:
    kind: loss
    type: feature_mse
    inputs: {{student: regressor.y, teacher: teacher.layer2}}
  kd:
    kind: loss
    type: hinton_kd
    params: {{temperature: 4.0}}
    inputs: {{student: student.logits, teacher: teacher.logits}}
  ce:
    kind: loss
    type: cross_entropy
    inputs: {{logits: student.logits, target: data.y, mask: data.labelled}}
  pooled:
    kind: projector
    type: linear_projector
    params: {{in_features: 16, out_features: 32}}
    inputs: {{x: student.features}}
  cos:
    kind: loss
    type: cosine_feature
    inputs: {{student: pooled.y, teacher: teacher.features}}
updates:
  main:
    params: [student, regressor, pooled]
    objective: {{kd: 1.0, ce: 1.0, hint: 0.5, cos: 0.1}}
"""


def test_components_validate_in_a_spec(tmp_path):
    path = tmp_path / "kd.yaml"
    path.write_text(SPEC.format(teacher_size=8))
    graph, problems = validate(load_spec(path))
    assert [p for p in problems if p.severity == "error"] == []
    assert graph.nodes["data"].outputs["x"].shape == "B, 1, 8, 8"


def test_component_shapes_are_checked_in_a_spec(tmp_path):
    path = tmp_path / "kd.yaml"
    path.write_text(SPEC.format(teacher_size=16))
    with pytest.raises(ValidationError) as info:
        validate(load_spec(path))
    mismatches = [p for p in info.value.problems if p.code == "shape-mismatch"]
    assert [(p.node, p.port) for p in mismatches] == [("teacher", "x")]
