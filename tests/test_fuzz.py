"""Fuzzing the spec reader and the static checks with mutated zoo specs.

Whatever a user writes, dgraph answers with a :class:`~dgraph.errors.DgraphError` (located
problems), never with another exception; and `dgraph validate --static` exits 0 or 1 without
a traceback. The mutations: keys dropped, renamed or added; values retyped (int -> str,
mapping -> list, None, ...) or replaced by wrong ones; the YAML text truncated or corrupted
with tabs, colons and brackets; and `--set` overrides of every shape.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from dgraph.cli import main
from dgraph.errors import DgraphError
from dgraph.graph import validate
from dgraph.registry import load_plugins
from dgraph.spec import apply_overrides, load_raw, load_spec, spec_from_raw, zoo_names
from dgraph.spec.source import resolve_spec_path

load_plugins()

ZOO = {name: resolve_spec_path(name).read_text(encoding="utf-8") for name in zoo_names()}
ZOO_DATA = {name: YAML(typ="safe", pure=True).load(text) for name, text in ZOO.items()}

# DGRAPH_FUZZ_EXAMPLES=5000 fuzzes longer (the default keeps the suite fast).
FUZZ = settings(
    max_examples=int(os.environ.get("DGRAPH_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Words that mean something to dgraph, so that mutations often reach the deeper checks.
WORDS = [
    "data", "teacher", "student", "kd", "ce", "main", "x", "y", "logits", "features",
    "data.x", "data.y", "student.logits", "teacher.logits", "teacher.layer9", "student.body.0",
    "a.b.c", ".", "x.", ".y", "", " ", "mlp", "cnn", "hinton_kd", "cross_entropy", "digits",
    "loss", "model", "projector", "op", "target", "ema", "adam", "cosine", "nodes", "updates",
    "params", "inputs", "objective", "kind", "type", "shares", "frozen", "init", "stages",
    "export", "train", "steps", "many", "true", "null", "1e400", "-1", "0", "${x}", "~",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(WORDS), st.text(max_size=5)), inner,
                        max_size=3),
    ),
    max_leaves=6,
)
KEYS = st.one_of(st.sampled_from(WORDS), st.text(min_size=1, max_size=8),
                 st.integers(min_value=0, max_value=3))
JUNK = ["\t", ":", ": ", "[", "]", "{", "}", "-", "- ", "#", "&a", "*a", "!", "!!python/none",
        "|", ">", "'", '"', "%", "@", "`", ",", "\n", "\n  ", "? ", "<<: ", "\x00", "\ufeff"]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``node`` (mapping keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


def _parent(doc: Any, path: tuple) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def _retyped(value: Any, how: str) -> Any:
    if how == "str":
        return str(value)
    if how == "int":
        return len(str(value))
    if how == "none":
        return None
    if how == "list":
        return list(value.items()) if isinstance(value, dict) else [value]
    if how == "dict":
        return dict(enumerate(value)) if isinstance(value, list) else {"value": value}
    if how == "float":
        return math.nan
    return value


def _mutate(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        paths = _paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = _parent(doc, path)
        key = path[-1]
        action = data.draw(st.sampled_from(
            ["drop", "rename", "retype", "replace", "insert"]), label="action")
        if action == "drop":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            new_key = data.draw(KEYS, label="new key")
            parent[new_key] = parent.pop(key)
        elif action == "retype":
            how = data.draw(st.sampled_from(["str", "int", "none", "list", "dict", "float"]),
                            label="retype")
            parent[key] = _retyped(parent[key], how)
        elif action == "replace":
            parent[key] = data.draw(VALUES, label="value")
        else:
            target = parent[key] if isinstance(parent[key], dict) else parent
            if isinstance(target, dict):
                target[data.draw(KEYS, label="new key")] = data.draw(VALUES, label="value")
            else:
                target.append(data.draw(VALUES, label="value"))
    return doc


def _dump(doc: Any) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False  # block style, like the zoo specs
    stream = io.StringIO()
    yaml.dump(doc, stream)
    return stream.getvalue()


def _corrupt(text: str, data: st.DataObject) -> str:
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="corruptions")):
        action = data.draw(st.sampled_from(["truncate", "insert", "delete", "duplicate"]),
                           label="corruption")
        at = data.draw(st.integers(min_value=0, max_value=len(text)), label="at")
        if action == "truncate":
            text = text[:at]
        elif action == "insert":
            text = text[:at] + data.draw(st.sampled_from(JUNK), label="junk") + text[at:]
        elif action == "delete":
            size = data.draw(st.integers(min_value=1, max_value=12), label="size")
            text = text[:at] + text[at + size:]
        else:
            lines = text.splitlines(keepends=True)
            if lines:
                index = min(at, len(lines) - 1)
                lines.insert(index, lines[index])
                text = "".join(lines)
    return text


def _check(path: Path, overrides: list[str] | None = None) -> None:
    """Load and statically validate; then the CLI. Only DgraphErrors, exit 0 or 1."""
    try:
        validate(load_spec(path, overrides or []))
    except DgraphError:
        pass
    argv = ["validate", "--static", str(path)]
    argv += [f"--set={item}" for item in overrides or []]  # '--set=-x' is not an option
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    text = out.getvalue() + err.getvalue()
    assert code in (0, 1), text
    assert "Traceback" not in text
    assert "internal error" not in text, text
    if code == 1:
        assert err.getvalue().endswith(": the spec is not valid\n"), text


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "spec.yaml"


@FUZZ
@given(name=st.sampled_from(sorted(ZOO)), data=st.data())
def test_mutated_specs_raise_only_dgraph_errors(name: str, data: st.DataObject,
                                                 spec_file: Path) -> None:
    doc = _mutate(ZOO_DATA[name], data)
    spec_file.write_text(_dump(doc), encoding="utf-8")
    _check(spec_file)


@FUZZ
@given(name=st.sampled_from(sorted(ZOO)), data=st.data())
def test_corrupted_yaml_raises_only_dgraph_errors(name: str, data: st.DataObject,
                                                  spec_file: Path) -> None:
    text = ZOO[name]
    if data.draw(st.booleans(), label="mutate first"):
        text = _dump(_mutate(ZOO_DATA[name], data))
    spec_file.write_text(_corrupt(text, data), encoding="utf-8")
    _check(spec_file)


OVERRIDE_KEYS = st.one_of(
    st.sampled_from([
        "train.steps", "train", "nodes", "nodes.kd", "nodes.kd.params.temperature",
        "nodes.student.params.hidden.0", "nodes.student.params.hidden.9", "nodes.student.inputs.x",
        "nodes.kd.type", "nodes.kd.kind", "updates.main.params.0", "updates.main.params.x",
        "updates.main.objective", "updates.main.objective.kd", "export.node", "dgraph",
        "train.steps.x", "nodes.new.kind", "stages", "stages.0.name", "name", "a..b", ".", "",
    ]),
    st.text(alphabet="abcdefghik.0123456789_-", max_size=20),
)
OVERRIDE_VALUES = st.one_of(
    st.sampled_from(["3", "true", "[1, 2]", "{a: 1}", "null", "many", "[", "{", "'", "a: b",
                     "- x", "data.y", "teacher.layer9", "studnet", "-1", "0", "1e9", "", "~"]),
    st.text(max_size=12),
)


@FUZZ
@given(
    items=st.lists(
        st.one_of(
            st.tuples(OVERRIDE_KEYS, OVERRIDE_VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
            st.text(max_size=15),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_overrides_raise_only_dgraph_errors(items: list[str]) -> None:
    raw = load_raw("kd")
    try:
        validate(spec_from_raw(apply_overrides(raw, items)))
    except DgraphError:
        pass
    _check(resolve_spec_path("kd"), items)


def test_zoo_specs_round_trip_through_the_dumper(spec_file: Path) -> None:
    """The fuzzer's starting points are valid, so mutations are what makes specs invalid."""
    for doc in ZOO_DATA.values():
        spec_file.write_text(_dump(doc), encoding="utf-8")
        validate(load_spec(spec_file))
