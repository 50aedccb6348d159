"""The spec layer against hostile and careless input: every failure is located, none runs code.

Names follow ``[A-Za-z_][A-Za-z0-9_]*``; YAML tags other than the core ones are refused before
anything is constructed; aliases may not multiply a spec's size ("billion laughs"); numbers
are finite and fit 64 bits; ``extends`` reads only regular spec files and never shows the
text of a file that is not a spec; ``dgraph validate --json`` prints JSON on every path.
The invalid specs live in tests/specs/invalid/hardening/, one per case.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import model_validator

import dgraph.registry
from dgraph.cli import main
from dgraph.errors import Location, SpecError, ValidationError
from dgraph.ports import Port
from dgraph.registry import COMPONENTS, Component, Params
from dgraph.spec import Spec, apply_overrides, load_raw, load_spec
from dgraph.spec.model import MAX_NAME_LENGTH, NAME_PATTERN, _clean_name
from dgraph.spec.source import MAX_SPEC_BYTES, SPEC_KEYS

HARDENING = Path(__file__).parent / "specs" / "invalid" / "hardening"
NAME_RULE = ("a name matching [A-Za-z_][A-Za-z0-9_]* (letters, digits, underscore; not "
             "starting with a digit), at most 64 characters")
NAME_HINT = ("and use the new name wherever the spec refers to it (Python keywords are "
             "allowed: generated code prefixes every name)")
TAG_EXPECTED = ("plain data: text, numbers, true/false, null, lists and mappings (explicit "
                "tags: only !!str, !!int, !!float, !!bool, !!null, !!seq, !!map)")
TAG_HINT = "remove the tag; a spec is plain data and never names Python objects"
NON_FINITE_HINT = ("a spec holds finite numbers only (NaN and infinities are refused); write "
                   "a finite value")
ALIAS_EXPECTED = (
    "at most {limit} {what} with every alias expanded (one value and two characters per byte "
    "of the file, at least 100,000 values and 1,000,000 characters)")
ALIAS_HINT = ("write repeated parts out or alias them fewer times; aliases that multiply a "
              "spec's size (a 'billion laughs' file) are refused")

# file -> the complete stderr of `dgraph validate FILE` ({path} = FILE).
CASES: dict[str, str] = {
    "bad_node_name.yaml": f"""\
{{path}}:10:3: error[bad-name]: the node name 'my-loss' is not allowed: it contains '-'
    expected: {NAME_RULE}
    found:    'my-loss'
    hint: rename it, e.g. to 'my_loss', {NAME_HINT}
1 error: the spec is not valid
""",
    "bad_update_and_stage_names.yaml": f"""\
{{path}}:15:3: error[bad-name]: the update name 'stage.one' is not allowed: it contains '.'
    expected: {NAME_RULE}
    found:    'stage.one'
    hint: rename it, e.g. to 'stage_one', {NAME_HINT}
{{path}}:17:12: error[bad-name]: the stage name 'warm up' is not allowed: it contains ' '
    expected: {NAME_RULE}
    found:    'warm up'
    hint: rename it, e.g. to 'warm_up', {NAME_HINT}
2 errors: the spec is not valid
""",
    "alias_bomb.yaml": f"""\
{{path}}:7:36: error[alias-expansion]: YAML aliases expand the spec to more than 100,000 values
    expected: {ALIAS_EXPECTED.format(limit="100,000", what="values")}
    found:    38 aliases so far; the alias *d brings the total to 101,241 values
    hint: {ALIAS_HINT}
1 error: the spec is not valid
""",
    "recursive_alias.yaml": """\
{path}:5:10: error[recursive-alias]: the alias *loop refers to a value that contains it
    expected: an alias to a value that ends before the alias
    found:    *loop inside the value anchored as &loop at {path}:3:8
    hint: a spec cannot contain itself; write the nested part out
1 error: the spec is not valid
""",
    "python_tag_on_list.yaml": f"""\
{{path}}:3:7: error[yaml-tag]: YAML tag '!!python/object/apply:os.system' is not allowed in \
a spec
    expected: {TAG_EXPECTED}
    found:    !!python/object/apply:os.system on a list
    hint: {TAG_HINT}
1 error: the spec is not valid
""",
    "python_tag_on_mapping.yaml": f"""\
{{path}}:3:8: error[yaml-tag]: YAML tag '!!python/object/apply:os.system' is not allowed in \
a spec
    expected: {TAG_EXPECTED}
    found:    !!python/object/apply:os.system on a mapping
    hint: {TAG_HINT}
1 error: the spec is not valid
""",
    "tag_value_mismatch.yaml": """\
{path}:4:18: error[yaml-tag]: the value does not read as its tag '!!bool'
    expected: a value of type !!bool, e.g. true
    found:    !!bool 'maybe'
    hint: remove the tag or correct the value
1 error: the spec is not valid
""",
    "seed_too_large.yaml": """\
{path}:4:15: error[bad-value]: invalid value for 'train.seed': the number is too large for a \
whole number
    expected: a valid integer; seed of every random generator, 0 to 4294967295 (2**32 - 1)
    found:    1e+23
    hint: `dgraph schema` describes every key and the values it accepts
1 error: the spec is not valid
""",
    "non_finite_numbers.yaml": f"""\
{{path}}:5:57: error[number-too-large]: node 'data': 'nodes.data.params.batch_size' is too \
large for a whole number
    expected: a whole number from -2**63 to 2**63 - 1
    found:    99999999999999999999
    hint: write a smaller number
{{path}}:9:57: error[non-finite]: node 'student': 'nodes.student.params.dropout' is not a \
finite number
    expected: a finite number
    found:    inf
    hint: {NON_FINITE_HINT}
{{path}}:17:33: error[non-finite]: 'updates.main.optimizer.lr' is not a finite number
    expected: a finite number
    found:    inf
    hint: {NON_FINITE_HINT}
{{path}}:17:53: error[bad-value]: invalid value for 'updates.main.optimizer.weight_decay': \
Input should be a finite number
    expected: a finite number
    found:    'NaN'
    hint: `dgraph schema` describes every key and the values it accepts
{{path}}:19:21: error[non-finite]: 'updates.main.objective.ce' is not a finite number
    expected: a finite number
    found:    nan
    hint: {NON_FINITE_HINT}
5 errors: the spec is not valid
""",
    "nan_text_component_param.yaml": """\
{path}:13:31: error[bad-param]: node 'ce': parameter 'label_smoothing' of 'cross_entropy': \
Input should be a finite number
    expected: a finite number
    found:    'Infinity'
    hint: `dgraph list loss` shows the parameters of 'cross_entropy' and their defaults
1 error: the spec is not valid
""",
    "extends_not_a_spec_file.yaml": """\
{path}:2:10: error[bad-extends]: 'extends' may name only a .yaml, .yml or .json file, or a \
zoo spec
    expected: a spec file such as base.yaml (relative to this spec, or absolute), or a zoo spec \
name such as kd
    found:    '/etc/passwd'
    hint: name the base spec's .yaml/.yml/.json file
1 error: the spec is not valid
""",
    "too_deep.yaml": """\
{path}:3:115: error[too-deep]: the spec nests deeper than 64 levels
    expected: at most 64 nested mappings or lists
    found:    a value at depth 65
    hint: check for unbalanced brackets
1 error: the spec is not valid
""",
    "key_is_a_list.yaml": """\
{path}:4:3: error[bad-key]: a mapping key must be plain text, found a list
    expected: a text key, e.g. 'nodes' or a node name
    found:    a list used as a key
    hint: check the brackets and colons: a '{' or '[' may have ended up before a ':'
1 error: the spec is not valid
""",
    "nul_in_text.yaml": """\
{path}:4:14: error[bad-text]: 'train.out' holds a NUL character
    expected: text without NUL characters
    found:    'runs/a\\x00b'
    hint: remove the '\\0' from the text
1 error: the spec is not valid
""",
}

BASE = """\
dgraph: 1
nodes:
  data: {kind: data, type: digits, params: {batch_size: 32}}
  student:
    kind: student
    type: mlp
    params: {in_features: 64, hidden: [24], num_classes: 10}
    inputs: {x: data.x}
  ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
updates:
  main:
    params: [student]
    objective: {ce: 1.0}
train: {steps: 50}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def validate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["validate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def spec_error(path: Path | str, overrides: list[str] | None = None) -> SpecError:
    with pytest.raises(SpecError) as exc:
        load_spec(path, overrides or [])
    return exc.value


def problems(path: Path | str, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        load_spec(path, overrides or [])
    return [p.render() for p in exc.value.problems]


# -- one invalid spec per case ------------------------------------------------------------


def test_every_hardening_spec_has_an_expected_message() -> None:
    assert {p.name for p in HARDENING.glob("*.yaml")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hardening_spec_message(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(HARDENING / name)
    code, out, err = validate(capsys, path)
    assert (code, out) == (1, "")
    assert err == CASES[name].replace("{path}", path)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hardening_problems_say_where_what_and_how(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(HARDENING / name)
    code, out, err = validate(capsys, "--json", path)
    assert (code, err) == (1, "")
    report = json.loads(out)
    assert report["valid"] is False and report["problems"]
    for problem in report["problems"]:
        assert problem["location"]["file"] == path
        assert problem["location"]["line"] > 0 and problem["location"]["column"] > 0
        for key in ("expected", "found", "suggestion", "message", "code"):
            assert problem[key], (key, problem)


# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason", "clean"),
    [
        ("", "it is empty", "node"),
        ("1st", "it starts with a digit", "_1st"),
        ("café", "it contains 'é'", "cafe"),
        ("a" * 65, "it is 65 characters long", "a" * 64),
        ("kd\nimport os", "it contains '\\n'", "kd_import_os"),
        ("ｆｕｌｌ", "it contains 'ｆ'", "full"),
        ("a..b", "it contains '.'", "a_b"),
    ],
)
def test_bad_node_names_are_located_at_their_key(
    tmp_path: Path, name: str, reason: str, clean: str
) -> None:
    text = BASE.replace("  ce: {kind", f"  {json.dumps(name)}: {{kind")
    path = write(tmp_path, "names.yaml", text.replace("{ce: 1.0}", f"{{{json.dumps(name)}: 1.0}}"))
    shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
    assert problems(path) == [
        f"{path}:9:3: error[bad-name]: the node name {shown} is not allowed: {reason}\n"
        f"    expected: {NAME_RULE}\n"
        f"    found:    {shown}\n"
        f"    hint: rename it, e.g. to '{clean}', {NAME_HINT}"]


@pytest.mark.parametrize("name", ["class", "lambda", "None", "__init__", "_", "a" * 64, "X9_"])
def test_keywords_dunders_and_64_characters_are_fine_names(tmp_path: Path, name: str) -> None:
    text = BASE.replace("  main:", f"  {name}:") + (
        f"stages:\n  - {{name: {name}, steps: 5, updates: [{name}]}}\n")
    spec = load_spec(write(tmp_path, "ok.yaml", text))
    assert list(spec.updates) == [name]
    assert spec.stages is not None and spec.stages[0].name == name


def test_a_suggested_name_does_not_clash_with_another_node(tmp_path: Path) -> None:
    text = BASE.replace("  ce: {kind", "  my_loss: {kind: op, type: add}\n  my-loss: {kind")
    path = write(tmp_path, "clash.yaml", text.replace("{ce: 1.0}", "{my-loss: 1.0}"))
    (problem,) = [p for p in problems(path) if "bad-name" in p]
    assert problem.endswith(f"hint: rename it, e.g. to 'my_loss_2', {NAME_HINT}")


def test_a_bad_name_made_by_an_override_is_located_at_the_override(tmp_path: Path) -> None:
    path = write(tmp_path, "base.yaml", BASE)
    item = "nodes.my-loss={kind: loss, type: cross_entropy}"
    assert problems(path, [item]) == [
        f"<--set {item}>: error[bad-name]: the node name 'my-loss' is not allowed: it "
        "contains '-'\n"
        f"    expected: {NAME_RULE}\n"
        "    found:    'my-loss'\n"
        f"    hint: rename it, e.g. to 'my_loss', {NAME_HINT}"]


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=80), taken=st.sets(st.text(max_size=8), max_size=4))
def test_the_suggested_name_always_follows_the_rule(name: str, taken: set[str]) -> None:
    clean = _clean_name(name, taken)
    assert NAME_PATTERN.fullmatch(clean) and len(clean) <= MAX_NAME_LENGTH
    assert clean not in taken


# -- YAML aliases ---------------------------------------------------------------------------


def billion_laughs() -> str:
    lines = ["dgraph: 1", 'l0: &l0 "lol"']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_in_well_under_a_second(tmp_path: Path) -> None:
    text = billion_laughs()
    assert len(text) < 505  # 10**9 values once expanded
    path = write(tmp_path, "laughs.yaml", text)
    start = time.perf_counter()
    error = spec_error(path)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed  # measured: ~5 ms
    assert error.problem().render() == (
        f"{path}:7:38: error[alias-expansion]: YAML aliases expand the spec to more than "
        "100,000 values\n"
        f"    expected: {ALIAS_EXPECTED.format(limit='100,000', what='values')}\n"
        "    found:    48 aliases so far; the alias *l4 brings the total to 101,243 values\n"
        f"    hint: {ALIAS_HINT}")


def test_aliases_of_long_text_are_bounded_by_characters(tmp_path: Path) -> None:
    text = f"dgraph: 1\na: &s {'x' * 600_000}\nb: [{', '.join(['*s'] * 10)}]\n"
    path = write(tmp_path, "long.yaml", text)
    error = spec_error(path)
    limit = 2 * len(text)
    assert (error.code, error.location, error.message) == (
        "alias-expansion", Location(str(path), 3, 9),
        f"YAML aliases expand the spec to more than {limit:,} characters of text")
    assert error.found == (
        "2 aliases so far; the alias *s brings the total to 1,800,009 characters of text")


def test_a_spec_that_reuses_a_node_by_alias_still_loads(tmp_path: Path) -> None:
    nodes = "".join(f"  n{i}: *op\n" for i in range(1, 3000))
    text = ("dgraph: 1\nnodes:\n  n0: &op {kind: op, type: add, params: {}, "
            "inputs: {a: data.x, b: data.x}}\n" + nodes)
    spec = load_spec(write(tmp_path, "reuse.yaml", text))
    assert len(spec.nodes) == 3000
    assert spec.nodes["n2999"].inputs == {"a": "data.x", "b": "data.x"}


def test_a_large_spec_without_aliases_loads(tmp_path: Path) -> None:
    """About 20,000 YAML values (2,000 nodes); the limits never refuse a spec without aliases."""
    nodes = "".join(
        f"  n{i}:\n    kind: op\n    type: add\n    params: {{}}\n"
        f"    inputs: {{a: n{i - 1}.out, b: data.x}}\n" for i in range(1, 2001))
    path = write(tmp_path, "large.yaml", "dgraph: 1\nname: large\nnodes:\n" + nodes)
    spec = load_spec(path)
    assert len(spec.nodes) == 2000
    assert spec.source.where(("nodes", "n2000", "type")) == Location(str(path), 10001, 11)


# -- YAML tags ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tag", "found", "column"),
    [
        ("!!python/name:os.system", "!!python/name:os.system", "!!python/name:os.system ''",
         7),
        ("!!python/object/new:os.system [x]", "!!python/object/new:os.system",
         "!!python/object/new:os.system on a list", 7),
        ("!custom x", "!custom", "!custom 'x'", 7),
        ("!!binary aGVsbG8=", "!!binary", "!!binary 'aGVsbG8='", 7),
        ("!!timestamp 2001-12-14", "!!timestamp", "!!timestamp '2001-12-14'", 7),
        ("!!set {a, b}", "!!set", "!!set on a mapping", 7),
        ("!!str [1]", "!!str", "!!str on a list", 7),
        ("[1, !!python/none ]", "!!python/none", "!!python/none ''", 11),
    ],
)
def test_non_core_tags_are_refused(tmp_path: Path, value: str, tag: str, found: str,
                                   column: int) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path, "tag.yaml", f"dgraph: 1\nname: {value}\nnodes: {{}}\n")
    error = spec_error(path)
    assert error.problem().render() == (
        f"{path}:2:{column}: error[yaml-tag]: YAML tag '{tag}' is not allowed in a spec\n"
        f"    expected: {TAG_EXPECTED}\n"
        f"    found:    {found}\n"
        f"    hint: {TAG_HINT}")
    assert not marker.exists()


def test_the_reader_has_no_constructor_that_builds_objects() -> None:
    """Round-trip mode knows only plain data; the spec composer refuses other tags first."""
    from dgraph.spec.source import _SpecComposer, _yaml

    yaml = _yaml()
    assert isinstance(yaml.composer, _SpecComposer)
    tags = {str(t) for t in type(yaml.constructor).yaml_constructors}
    assert not [t for t in tags if "python" in t]
    assert not type(yaml.constructor).yaml_multi_constructors


@pytest.mark.parametrize(
    ("value", "tag", "example"),
    [("!!int abc", "!!int", "3"), ("!!float x", "!!float", "0.5"),
     ("!!null x", "!!null", "null"), ("!!bool yes", "!!bool", "true")],
)
def test_core_tags_must_match_their_value(tmp_path: Path, value: str, tag: str,
                                          example: str) -> None:
    path = write(tmp_path, "tag.yaml", f"dgraph: 1\nname: {value}\n")
    error = spec_error(path)
    shown = value.split(" ", 1)[1]
    assert error.problem().render() == (
        f"{path}:2:7: error[yaml-tag]: the value does not read as its tag '{tag}'\n"
        f"    expected: a value of type {tag}, e.g. {example}\n"
        f"    found:    {tag} {shown!r}\n"
        "    hint: remove the tag or correct the value")


def test_core_tags_and_dates_read_as_plain_data(tmp_path: Path) -> None:
    text = """\
        dgraph: 1
        name: !!str 3
        description: 2024-05-01
        nodes: !!map
          data: {kind: data, type: digits, params: {batch_size: !!int "32"}}
          m: {kind: op, type: add, params: {a: !!float 1, b: !!bool true, c: !!null ~,
              d: !!seq [1], e: =}}
        """
    raw = load_raw(write(tmp_path, "core.yaml", text))
    assert raw.data["name"] == "3" and raw.data["description"] == "2024-05-01"
    assert raw.data["nodes"]["data"]["params"] == {"batch_size": 32}
    params = raw.data["nodes"]["m"]["params"]
    assert params == {"a": 1.0, "b": True, "c": None, "d": [1], "e": "="}
    assert [type(v) for v in params.values()] == [float, bool, type(None), list, str]


def test_tags_in_overrides_are_refused(tmp_path: Path) -> None:
    raw = load_raw(write(tmp_path, "base.yaml", BASE))
    item = "name=!!python/object/apply:os.system [touch pwned]"
    with pytest.raises(SpecError) as exc:
        apply_overrides(raw, [item])
    assert exc.value.problem().render() == (
        f"<--set {item}>: error[bad-override]: cannot parse the value of the override: YAML "
        "tag '!!python/object/apply:os.system' is not allowed in a spec\n"
        "    expected: a YAML value such as 3, 0.5, true, text, [1, 2] or {a: 1}\n"
        "    found:    '!!python/object/apply:os.system [touch pwned]'\n"
        "    hint: quote text that YAML would misread, e.g. --set \"name='a: b'\"")


# -- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "message", "expected"),
    [
        ("4294967296", "Input should be less than or equal to 4294967295",
         "less than or equal to 4294967295"),
        ("-1", "Input should be greater than or equal to 0", "greater than or equal to 0"),
        ("1e23", "the number is too large for a whole number", "a valid integer"),
    ],
)
def test_seed_range(tmp_path: Path, seed: str, message: str, expected: str) -> None:
    path = write(tmp_path, "base.yaml", BASE)
    assert load_spec(path, ["train.seed=4294967295"]).train.seed == 2**32 - 1
    assert problems(path, [f"train.seed={seed}"]) == [
        f"<--set train.seed={seed}>: error[bad-value]: invalid value for 'train.seed': "
        f"{message}\n"
        f"    expected: {expected}; seed of every random generator, 0 to 4294967295 "
        "(2**32 - 1)\n"
        f"    found:    {float(seed) if 'e' in seed else int(seed)!r}\n"
        "    hint: `dgraph schema` describes every key and the values it accepts"]


@pytest.mark.parametrize(
    ("override", "path", "found"),
    [
        ("updates.main.optimizer.lr=.inf", "updates.main.optimizer.lr", "inf"),
        ("updates.main.objective.ce=-.inf", "updates.main.objective.ce", "-inf"),
        ("train.eval.every=1e400", "train.eval.every", "inf"),
        ("nodes.ce.params={label_smoothing: .NaN}", "nodes.ce.params.label_smoothing", "nan"),
    ],
)
def test_non_finite_numbers_are_refused_anywhere(
    tmp_path: Path, override: str, path: str, found: str
) -> None:
    node = "node 'ce': " if path.startswith("nodes.ce") else ""
    assert problems(write(tmp_path, "base.yaml", BASE), [override]) == [
        f"<--set {override}>: error[non-finite]: {node}'{path}' is not a finite number\n"
        "    expected: a finite number\n"
        f"    found:    {found}\n"
        f"    hint: {NON_FINITE_HINT}"]


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("updates.main.optimizer.lr=Infinity", "updates.main.optimizer.lr"),
        ("updates.main.objective.ce=NaN", "updates.main.objective.ce"),
        ("updates.main.objective.ce={schedule: linear, start: 0, end: '-inf', steps: 5}",
         "updates.main.objective.ce.end"),
        ("stages=[{name: s, steps: 5, updates: [main], weights: {ce: nan}}]",
         "stages.0.weights.ce"),
    ],
)
def test_non_finite_text_where_a_float_is_expected(tmp_path: Path, override: str,
                                                   path: str) -> None:
    (rendered,) = problems(write(tmp_path, "base.yaml", BASE), [override])
    assert rendered.startswith(
        f"<--set {override}>: error[bad-value]: invalid value for '{path}': Input should be "
        "a finite number\n    expected: a finite number")


def test_an_integer_with_thousands_of_digits_is_refused_at_parse(tmp_path: Path) -> None:
    text = f"dgraph: 1\nnodes: {{}}\ntrain: {{steps: {'9' * 5000}}}\n"
    path = write(tmp_path, "digits.yaml", text)
    assert spec_error(path).problem().render() == (
        f"{path}:3:16: error[number-too-large]: the number is too large\n"
        "    expected: an integer between -2**63 and 2**63 - 1\n"
        "    found:    an integer written with 5000 characters\n"
        "    hint: write a smaller number")


# -- reading files and extends ----------------------------------------------------------------


def test_extends_only_spec_files_and_zoo_specs(tmp_path: Path) -> None:
    (tmp_path / "base").write_text(BASE, encoding="utf-8")  # a spec, but without a suffix
    child = write(tmp_path, "child.yaml", "extends: base\n")
    error = spec_error(child)
    assert (error.code, error.location, error.found) == (
        "bad-extends", Location(str(child), 1, 10), "'base'")
    assert error.message == "'extends' may name only a .yaml, .yml or .json file, or a zoo spec"


def test_extends_a_directory_or_a_fifo_is_refused_at_the_extends(tmp_path: Path) -> None:
    (tmp_path / "folder.yaml").mkdir()
    os.mkfifo(tmp_path / "pipe.yaml")
    for name, kind in (("folder.yaml", "a directory"), ("pipe.yaml", "a named pipe (FIFO)")):
        child = write(tmp_path, "child.yaml", f"dgraph: 1\nextends: {name}\n")
        assert spec_error(child).problem().render() == (
            f"{child}:2:10: error[bad-extends]: 'extends' names no readable spec: it is not a "
            "regular file\n"
            "    expected: a regular .yaml/.yml/.json file of at most 64 MiB, or a zoo spec name\n"
            f"    found:    '{name}': {kind}\n"
            "    hint: name a .yaml, .yml or .json file")


def test_extends_a_file_over_the_size_cap(tmp_path: Path) -> None:
    with (tmp_path / "huge.yaml").open("wb") as stream:
        stream.truncate(MAX_SPEC_BYTES + 1)  # sparse: no disk space used
    child = write(tmp_path, "child.yaml", "extends: huge.yaml\n")
    error = spec_error(child)
    assert (error.code, error.location, error.message, error.found) == (
        "bad-extends", Location(str(child), 1, 10),
        "'extends' names no readable spec: it is larger than 64 MiB",
        f"'huge.yaml': {MAX_SPEC_BYTES + 1:,} bytes")


SECRET = "hunter2-do-not-print"


@pytest.mark.parametrize(
    ("content", "code", "message", "found", "line_col"),
    [
        (f"root:x:0:0:{SECRET}\n", "not-a-mapping",
         "a spec must be a mapping at the top level, found str",
         "text (not shown: the file is named by 'extends')", (1, 1)),
        (f"- {SECRET}\n", "not-a-mapping",
         "a spec must be a mapping at the top level, found list",
         "a list (not shown: the file is named by 'extends')", (1, 1)),
        (f'{{"private_key": "{SECRET}", "type": "service_account"}}', "not-a-spec",
         "the file named by 'extends' is not a dgraph spec",
         "a mapping with 2 other keys (not shown)", (1, 1)),
        (f"a: [1\n  {SECRET}: x\n", "yaml-syntax",
         "cannot parse the base spec: it is not well-formed YAML (or JSON)",
         "a syntax error at line 2, column 23", (2, 23)),
    ],
)
def test_extends_never_shows_a_file_that_is_not_a_spec(
    tmp_path: Path, content: str, code: str, message: str, found: str, line_col: tuple
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(content, encoding="utf-8")
    link = tmp_path / "looks_like_a_spec.yaml"
    link.symlink_to(secret)
    child = write(tmp_path, "child.yaml", "extends: looks_like_a_spec.yaml\n")
    error = spec_error(child)
    assert (error.code, error.message, error.found, error.location) == (
        code, message, found, Location(str(secret), *line_col))
    assert error.notes[-1] == f"read as the base spec named by 'extends' at {child}:1:10"
    assert SECRET not in error.problem().render()


def test_extends_is_relative_to_the_spec_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "base.yaml", BASE)
    (tmp_path / "specs").mkdir()
    child = write(tmp_path / "specs", "child.yaml", "extends: base.yaml\n")
    monkeypatch.chdir(tmp_path)  # base.yaml is here, but not next to the child
    error = spec_error(child)
    assert (error.code, error.location) == ("spec-not-found", Location(str(child), 1, 10))


def test_extends_chains_are_bounded(tmp_path: Path) -> None:
    write(tmp_path, "s40.yaml", BASE)
    for i in range(40):
        write(tmp_path, f"s{i}.yaml", f"extends: s{i + 1}.yaml\n")
    error = spec_error(tmp_path / "s0.yaml")
    assert (error.code, error.message, error.location) == (
        "extends-too-deep", "'extends' chains more than 32 base specs",
        Location(str((tmp_path / "s32.yaml").resolve()), 1, 10))


def test_extends_with_a_nul_character(tmp_path: Path) -> None:
    child = write(tmp_path, "child.yaml", 'extends: "base\\0.yaml"\n')
    error = spec_error(child)
    assert (error.code, error.location, error.found) == (
        "bad-extends", Location(str(child), 1, 10), "str 'base\\x00.yaml'")


@pytest.mark.parametrize(("kind", "make"), [
    ("a directory", lambda p: p.mkdir()),
    ("a named pipe (FIFO)", lambda p: os.mkfifo(p)),
])
def test_the_spec_itself_must_be_a_regular_file(tmp_path: Path, kind: str, make) -> None:
    path = tmp_path / "spec.yaml"
    make(path)
    assert spec_error(path).problem().render() == (
        f"{path}: error[unreadable]: cannot read the spec: it is not a regular file\n"
        "    expected: a readable regular file of at most 64 MiB\n"
        f"    found:    {kind}\n"
        "    hint: name a .yaml, .yml or .json file")


def test_dev_zero_is_not_read(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, "/dev/zero")
    assert (code, out) == (1, "")
    assert err == (
        "/dev/zero: error[unreadable]: cannot read the spec: it is not a regular file\n"
        "    expected: a readable regular file of at most 64 MiB\n"
        "    found:    a character device\n"
        "    hint: name a .yaml, .yml or .json file\n"
        "1 error: the spec is not valid\n")


def test_a_spec_that_is_not_utf8_is_located_at_the_first_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"dgraph: 1\nname: caf\xe9\n")
    assert spec_error(path).problem().render() == (
        f"{path}:2:10: error[unreadable]: cannot read the spec: the file is not UTF-8 text\n"
        "    expected: a UTF-8 text file\n"
        "    found:    byte 0xe9, which is not UTF-8 here\n"
        "    hint: save the spec as UTF-8")


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    spec = load_spec(path)
    assert spec.source.where(("dgraph",)) == Location(str(path), 1, 9)


def test_an_override_key_with_too_many_parts(tmp_path: Path) -> None:
    key = ".".join(["a"] * 65)
    with pytest.raises(SpecError) as exc:
        apply_overrides(load_raw(write(tmp_path, "base.yaml", BASE)), [f"{key}=1"])
    assert (exc.value.code, exc.value.found) == ("bad-override", "65 parts")
    assert exc.value.message.endswith("has more than 64 parts")


def test_spec_keys_are_the_spec_models_top_level_keys() -> None:
    assert set(SPEC_KEYS) == {*Spec.model_fields, "extends"}


# -- validate --json on every path -----------------------------------------------------------


def json_report(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["validate", "--json", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def only_problem(report: dict) -> dict:
    assert report["valid"] is False
    (problem,) = report["problems"]
    return problem


def test_json_for_a_read_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report, err = json_report(capsys, str(tmp_path))
    assert (code, err) == (1, "")
    assert only_problem(report) == {
        "code": "unreadable", "message": "cannot read the spec: it is not a regular file",
        "location": {"file": str(tmp_path), "line": 0, "column": 0}, "node": None,
        "port": None, "expected": "a readable regular file of at most 64 MiB",
        "found": "a directory", "suggestion": "name a .yaml, .yml or .json file", "notes": [],
        "severity": "error"}


def test_json_for_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--json"])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert only_problem(json.loads(out)) == {
        "code": "usage", "message": "the following arguments are required: spec",
        "location": None, "node": None, "port": None,
        "expected": "dgraph validate SPEC [--json] [--static] [--set KEY=VALUE ...]",
        "found": None, "suggestion": "`dgraph validate --help` describes the arguments",
        "notes": [], "severity": "error"}
    assert err.endswith("dgraph validate: error: the following arguments are required: spec\n")


def test_json_for_a_broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A real distribution on sys.path whose dgraph.components entry point fails to import."""
    site = tmp_path / "site"
    info = site / "dgraph_broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dgraph-broken-plugin\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        "[dgraph.components]\nbroken = dgraph_broken_plugin_module\n", encoding="utf-8")
    (site / "dgraph_broken_plugin_module.py").write_text(
        "raise ImportError('bad wheel')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(dgraph.registry, "_loaded", False)
    code, report, err = json_report(capsys, "--static", "kd")
    assert (code, err) == (1, "")
    assert only_problem(report) == {
        "code": "plugin-error",
        "message": "the dgraph plug-in 'broken' (dgraph_broken_plugin_module, from the package "
        "'dgraph-broken-plugin') failed to load: ImportError: bad wheel. Fix or uninstall "
        "that package.",
        "location": None, "node": None, "port": None, "expected": None, "found": None,
        "suggestion": None, "notes": [], "severity": "error"}


class _BuggyParams(Params):
    x: int = 0

    @model_validator(mode="after")
    def _bug(self):
        raise TypeError("a bug in a plug-in's parameter check")


class _Buggy(Component):
    name = "hardening_buggy"
    roles = ("loss",)
    Params = _BuggyParams
    inputs = {"x": Port("Tensor", None, "anything")}
    outputs = {"loss": Port("Scalar", None, "a loss")}


class _FailsToBuild(_Buggy):
    name = "hardening_fails_to_build"
    Params = Params

    def build(self, context):
        raise RuntimeError("out of widgets")


def _spec_with(tmp_path: Path, type_name: str) -> Path:
    text = BASE.replace("objective: {ce: 1.0}", "objective: {ce: 1.0, odd: 1.0}")
    text = text.replace("updates:", f"  odd: {{kind: loss, type: {type_name}, "
                                    "inputs: {x: student.logits}}\nupdates:")
    return write(tmp_path, "odd.yaml", text)


def test_json_for_a_component_that_fails_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(COMPONENTS._items, _FailsToBuild.name, _FailsToBuild)
    path = _spec_with(tmp_path, _FailsToBuild.name)
    code, report, err = json_report(capsys, str(path))
    assert (code, err) == (1, "")
    problem = only_problem(report)
    assert (problem["code"], problem["node"]) == ("component-runtime-error", "odd")
    assert problem["message"] == (
        f"{path}:10:3: node 'odd' (loss 'hardening_fails_to_build') failed to build: "
        "RuntimeError: out of widgets")


def test_json_for_a_bug_exits_3_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DGRAPH_DEBUG", raising=False)
    monkeypatch.setitem(COMPONENTS._items, _Buggy.name, _Buggy)
    path = _spec_with(tmp_path, _Buggy.name)
    code, report, err = json_report(capsys, "--static", str(path))
    assert (code, err) == (3, "")
    assert only_problem(report) == {
        "code": "internal-error", "message": "TypeError: a bug in a plug-in's parameter check",
        "location": None, "node": None, "port": None, "expected": None, "found": None,
        "suggestion": "this is a bug in dgraph; rerun with DGRAPH_DEBUG=1 for a traceback and "
        "report it", "notes": [], "severity": "error"}
    # Without --json the same failure is the usual one-line internal error.
    assert main(["validate", "--static", str(path)]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("internal error: TypeError: a bug in a plug-in's parameter check\n")


def test_json_in_a_subprocess_for_a_tagged_spec() -> None:
    path = HARDENING / "python_tag_on_list.yaml"
    env = {k: v for k, v in os.environ.items() if k != "DGRAPH_DEBUG"}
    result = subprocess.run([sys.executable, "-m", "dgraph.cli", "validate", "--json",
                             str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert (result.returncode, result.stderr) == (1, "")
    problem = only_problem(json.loads(result.stdout))
    assert (problem["code"], problem["location"]) == (
        "yaml-tag", {"file": str(path), "line": 3, "column": 7})
    assert not re.search(r"Traceback|internal error", result.stdout)
