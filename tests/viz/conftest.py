"""Shared graphs for the viz tests, built from component types registered here (``viztest_``),
so that the drawings do not depend on which built-in components exist."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import Field

from dgraph.graph import Graph, validate
from dgraph.ports import Port
from dgraph.registry import COMPONENTS, Component, Params, component
from dgraph.spec import load_spec


class _NetParams(Params):
    in_features: int = Field(64, gt=0)
    num_classes: int = Field(10, gt=0)


class _FollowParams(Params):
    source: str = Field(..., description="the node whose weights this one follows")


def _register(name: str, roles: tuple[str, ...], **attrs: object) -> None:
    if name in COMPONENTS:  # the module may be imported twice; keep the first registration
        return
    doc = attrs.pop("doc", f"Test-only component {name}.")
    cls = type(f"_{name}", (Component,), {"__doc__": doc, **attrs})
    component(name, roles=roles)(cls)


_register(
    "viztest_data", ("data",),
    outputs={"x": Port("Features", "B, 64", "inputs"), "y": Port("Labels", "B", "labels")},
)
_register(
    "viztest_net", ("teacher", "student", "model"),
    Params=_NetParams,
    inputs={"x": Port("Features", "B, {in_features}")},
    outputs={"logits": Port("Logits", "B, {num_classes}"), "features": Port("Features", "B, 32")},
    tappable=True,
)
_register(
    "viztest_kd", ("loss",),
    inputs={"student": Port("Logits", "B, C"), "teacher": Port("Logits", "B, C")},
    outputs={"loss": Port("Scalar", "")},
)
_register(
    "viztest_ce", ("loss",),
    inputs={"logits": Port("Logits", "B, C"), "labels": Port("Labels", "B")},
    outputs={"loss": Port("Scalar", "")},
)
_register(
    "viztest_feat", ("loss",),
    inputs={"a": Port("Features", "B, ..."), "b": Port("Features", "B, ...")},
    outputs={"loss": Port("Scalar", "")},
)
_register(
    "viztest_relay", ("op", "model"),
    inputs={"x": Port("Features", "B, 64")},
    outputs={"x": Port("Features", "B, 64")},
)
_register(  # a node that names another node in a parameter (like an EMA target's source)
    "viztest_follow", ("model",),
    Params=_FollowParams,
    inputs={"x": Port("Features", "B, 64")},
    outputs={"logits": Port("Logits", "B, 10")},
    references=lambda self: {"source": self.params.source},
)

# The spec's name is free text full of XML, DOT and Mermaid special characters.
KD_TITLE = 'viz-kd <T=4> & "soft"'

KD_SPEC = """\
dgraph: 1
name: 'viz-kd <T=4> & "soft"'
description: Knowledge distillation drawn for the viz tests.
nodes:
  data: {kind: data, type: viztest_data}
  teacher:
    kind: teacher
    type: viztest_net
    params: {in_features: 64, num_classes: 10}
    inputs: {x: data.x}
  student:
    kind: student
    type: viztest_net
    params: {in_features: 64, num_classes: 10}
    inputs: {x: data.x}
  kd_soft:
    kind: loss
    type: viztest_kd
    inputs: {student: student.logits, teacher: teacher.logits}
  ce:
    kind: loss
    type: viztest_ce
    inputs: {logits: student.logits, labels: data.y}
  hint:
    kind: loss
    type: viztest_feat
    inputs: {a: student.features, b: teacher.head}
updates:
  main:
    params: [student]
    objective: {kd_soft: 0.9, ce: 0.1}
  aux:
    params: [student]
    objective: {hint: 0.5}
    every: 2
    repeat: 3
"""

# KD plus a node whose parameter 'source' names the student: a reference, not a port edge.
REF_SPEC = KD_SPEC.replace("nodes:\n", "nodes:\n  follower: {kind: model, type: viztest_follow, "
                           "params: {source: student}, inputs: {x: data.x}}\n", 1)


def graph_from(directory: Path, text: str, name: str = "spec.yaml") -> Graph:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    graph, _ = validate(load_spec(path))
    return graph


@pytest.fixture
def make_graph(tmp_path: Path) -> Callable[[str], Graph]:
    """Validate spec text written to a file in ``tmp_path``."""
    return lambda text: graph_from(tmp_path, text)


@pytest.fixture
def kd_graph(tmp_path: Path) -> Graph:
    return graph_from(tmp_path, KD_SPEC)


@pytest.fixture
def ref_graph(tmp_path: Path) -> Graph:
    return graph_from(tmp_path, REF_SPEC, "ref.yaml")


@pytest.fixture
def kd_spec() -> str:
    """The text of the KD spec (title ``KD_TITLE``), to vary in a test."""
    return KD_SPEC
