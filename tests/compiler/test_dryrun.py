"""The meta-device dry run reports a component's runtime error at the node (and port) the
error names in its fields, not at whatever its message happens to quote first."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from dgraph.compiler.dryrun import dry_run
from dgraph.errors import ComponentRuntimeError, ValidationError
from dgraph.graph import validate
from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, component
from dgraph.spec import load_spec


class _Refuses(nn.Module):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise ComponentRuntimeError(f"values from 'data' cannot feed '{self.node}' yet",
                                    node=self.node, port="x")


@component("test_dryrun_refuses", roles=("model",))
class _RefusesComponent(Component):
    """Raises a located ComponentRuntimeError whose message quotes another node first."""

    inputs = {"x": Port("Features", "B, 64", "inputs")}
    outputs = {"y": Port("Features", "B, 64", "outputs")}

    def build(self, context: BuildContext):
        return _Refuses(context.node)


SPEC = """
dgraph: 1
name: dryrun_node
nodes:
  data: {kind: data, type: digits, params: {batch_size: 8}}
  picky:
    kind: model
    type: test_dryrun_refuses
    inputs: {x: data.x}
  student:
    kind: student
    type: mlp
    params: {in_features: 64, hidden: [8], num_classes: 10}
    inputs: {x: picky.y}
  ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
updates:
  main: {params: [student], objective: {ce: 1.0}}
"""


def test_the_failing_node_comes_from_the_error_fields(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(SPEC).lstrip())
    graph, _ = validate(load_spec(path))
    with pytest.raises(ValidationError) as info:
        dry_run(graph)
    [problem] = info.value.problems
    assert (problem.code, problem.node, problem.port) == ("dry-run-failed", "picky", "x")
    assert problem.location == graph.nodes["picky"].location
    assert problem.message == ("the meta-device dry run failed: values from 'data' cannot "
                               "feed 'picky' yet")
