"""``list[NodeRef]`` parameters: a spec names several nodes in one parameter; validation checks
each item (a located error at the item), the graph has a reference per item, the build
receives the built modules in the spec's order (their names in ``reference_names``), and
``dgraph list`` / the schema show a list of nodes.

The test component is an ensemble model whose logits are the mean of its members' logits
(real MLPs, a few real training steps)."""

from __future__ import annotations

import pytest
import torch

from dgraph.declare import Features, Logits, Module, NodeRef, Outputs, model, param
from dgraph.errors import RegistryError, ValidationError
from dgraph.registry import BuildContext, load_plugins, reference_path

load_plugins()


@model("test_noderef_ensemble", roles=("teacher", "model"))
class Ensemble(Module):
    """The mean of the members' logits."""

    def __init__(self, *, members: list[NodeRef] = param(doc="the averaged models"),
                 context: BuildContext) -> None:
        super().__init__()
        self._members = tuple(members)  # by reference: not submodules
        self.names = [context.reference_names.get(f"members[{i}]") for i in range(len(members))]

    def forward(self, x: Features("B, D")) -> Outputs(logits=Logits("B, C")):
        return {"logits": torch.stack([m(x=x)["logits"] for m in self._members]).mean(0)}


SPEC = """\
dgraph: 1
name: ensemble_kd
extends: _digits_mlp
nodes:
  teacher_a:
    kind: teacher
    type: mlp
    params: {in_features: 64, hidden: [16], num_classes: 10}
    inputs: {x: data.x}
  teacher_b:
    kind: teacher
    type: mlp
    params: {in_features: 64, hidden: [8], num_classes: 10}
    inputs: {x: data.x}
  ensemble:
    kind: teacher
    type: test_noderef_ensemble
    params:
      members:
        - teacher_a
        - MEMBER_B
    inputs: {x: data.x}
  kd:
    kind: loss
    type: hinton_kd
    params: {temperature: 2.0}
    inputs: {student: student.logits, teacher: ensemble.logits}
updates:
  main:
    objective: {kd: 0.9, ce: 0.1}
train: {steps: 3, log_every: 1, checkpoint_every: 3, eval: {every: 3}}
"""


def _spec(tmp_path, member_b: str = "teacher_b"):
    from dgraph.spec import load_spec

    path = tmp_path / "ensemble_kd.yaml"
    path.write_text(SPEC.replace("MEMBER_B", member_b))
    return load_spec(str(path))


def _line(tmp_path, text: str) -> int:
    lines = (tmp_path / "ensemble_kd.yaml").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip() == text)


def test_each_item_is_a_reference_located_at_its_line(tmp_path):
    from dgraph.graph import validate

    graph, _ = validate(_spec(tmp_path))
    refs = sorted((r.param, r.src, r.location.line) for r in graph.references
                  if r.dst == "ensemble")
    assert refs == [("members[0]", "teacher_a", _line(tmp_path, "- teacher_a")),
                    ("members[1]", "teacher_b", _line(tmp_path, "- teacher_b"))]
    assert graph.nodes["ensemble"].component.references() == {
        "members[0]": "teacher_a", "members[1]": "teacher_b"}
    assert reference_path("members[1]") == ("members", 1)
    assert reference_path("source") == ("source",)


def test_an_unknown_item_is_a_located_error_at_that_item(tmp_path):
    from dgraph.graph import validate

    with pytest.raises(ValidationError) as info:
        validate(_spec(tmp_path, "techer_b"))
    [problem] = [p for p in info.value.problems if p.code == "unknown-node"]
    assert problem.message == "parameter 'members[1]' names no node 'techer_b'"
    assert problem.node == "ensemble" and problem.found == "members[1]: techer_b"
    assert problem.location.file.endswith("ensemble_kd.yaml")
    assert problem.location.line == _line(tmp_path, "- techer_b")
    assert "teacher_b" in problem.suggestion
    with pytest.raises(ValidationError) as info:  # an item that is not a node name
        validate(_spec(tmp_path, "'no such'"))
    [problem] = info.value.problems
    assert problem.location.line == _line(tmp_path, "- 'no such'")


def test_the_build_receives_the_members_in_order_and_training_runs(tmp_path):
    from dgraph.api import train
    from dgraph.compiler.instantiate import instantiate
    from dgraph.graph import validate

    graph, _ = validate(_spec(tmp_path))
    inst = instantiate(graph)
    ensemble = inst.modules["ensemble"]
    a, b = inst.modules["teacher_a"], inst.modules["teacher_b"]
    assert ensemble._members[0] is a and ensemble._members[1] is b
    assert ensemble.names == ["teacher_a", "teacher_b"]
    assert list(ensemble.parameters()) == []
    x = torch.randn(5, 64)
    expected = (a(x=x)["logits"] + b(x=x)["logits"]) / 2
    assert torch.allclose(ensemble(x=x)["logits"], expected)
    summary = train(str(tmp_path / "ensemble_kd.yaml"), out=tmp_path / "run",
                    progress=False, log=lambda _m: None)
    import json

    kd = [json.loads(line).get("loss/kd") for line in
          (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kd = [v for v in kd if v is not None]
    assert len(kd) == 3 and kd[2] < kd[0]  # the student moves towards the members' mean
    assert summary["student/agreement/ensemble"] > max(
        summary["student/agreement/teacher_a"], summary["student/agreement/teacher_b"])


def test_listing_schema_and_declaration_rules():
    from dgraph.cli import _is_node_ref

    fields = Ensemble.component.Params.model_fields
    from dgraph.components.generate.generator import LMGenerator

    assert _is_node_ref(fields["members"], listed=True)
    generator = LMGenerator.component.Params.model_fields
    assert _is_node_ref(generator["models"], listed=True)
    assert _is_node_ref(generator["verifier"])  # an optional reference: the mark is inside
    assert not _is_node_ref(generator["verifier"], listed=True)
    assert not _is_node_ref(generator["threshold"])
    assert Ensemble.component.node_ref_lists == ("members",)
    schema = Ensemble.component.Params.model_json_schema()["properties"]["members"]
    assert schema["type"] == "array" and schema["items"]["x-dgraph-node-ref"] is True
    with pytest.raises(ValueError, match="pattern"):
        Ensemble.component.Params(members=["a b"])
    with pytest.raises(RegistryError, match=r"follows='sources' must name a NodeRef parameter "
                       r"\(one node, not a list\)"):
        @model("test_noderef_bad_follow", roles=("target",), follows="sources")
        class Bad(Module):
            def __init__(self, *, sources: list[NodeRef] = param([])) -> None:
                super().__init__()

            def forward(self, x: Features("B, D")) -> Logits("B, C"):
                return x
