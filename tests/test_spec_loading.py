"""Reading specs: locations in YAML and JSON, `extends`, `--set` overrides, unknown keys, zoo names.

Every value and key keeps the file:line:column it came from, so that a problem found later
(in pydantic, in the graph checks, in the dry run) points at the right place of the right file.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dgraph.errors import Location, SpecError, ValidationError
from dgraph.graph import validate
from dgraph.spec import apply_overrides, load_raw, load_spec, resolve_spec_path, zoo_names
from dgraph.spec.source import zoo_dir

SPEC = """\
dgraph: 1
name: tiny
nodes:
  data:
    kind: data
    type: digits
    params: {batch_size: 32}
  student:
    kind: student
    type: mlp
    params:
      in_features: 64
      hidden: [24, 12]
      num_classes: 10
    inputs: {x: data.x}
  ce:
    kind: loss
    type: cross_entropy
    inputs: {logits: student.logits, target: data.y}
updates:
  main:
    params: [student]
    objective: {ce: 1.0}
train:
  steps: 50
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def where(text: str, needle: str, after: str = "") -> tuple[int, int]:
    """1-based (line, column) of ``needle`` in ``text`` (its first occurrence after ``after``)."""
    offset = text.index(needle, text.index(after) if after else 0)
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def loc(path: Path, line_col: tuple[int, int]) -> Location:
    return Location(str(path), *line_col)


# -- locations ----------------------------------------------------------------------------


def test_yaml_locations_of_values_and_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny.yaml", SPEC)
    source = load_raw(path).source
    assert source.where(("nodes", "student", "params", "num_classes")) == loc(path, (14, 20))
    assert source.key_where(("nodes", "student", "params", "num_classes")) == loc(path, (14, 7))
    assert source.where(("nodes", "data", "params", "batch_size")) == loc(path, (7, 26))
    assert source.where(("nodes", "student", "params", "hidden", 1)) == loc(path, (13, 20))
    assert source.where(("updates", "main", "params", 0)) == loc(path, (22, 14))
    assert source.where(("train", "steps")) == loc(path, (25, 10))
    # A mapping is located at its key; an unknown path at its nearest located ancestor.
    assert source.where(("nodes", "student")) == loc(path, (8, 3))
    assert source.where(("nodes", "student", "params", "nope", 3)) == loc(path, (11, 5))
    assert source.where(()) == loc(path, (1, 1))


def test_json_locations_of_values_and_keys(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        {
          "dgraph": 1,
          "nodes": {
            "data": {"kind": "data", "type": "digits", "params": {"batch_size": 32}},
            "student": {
              "kind": "student",
              "type": "mlp",
              "params": {"in_features": 64, "hidden": [24, 12], "num_classes": 10},
              "inputs": {"x": "data.x"}
            }
          },
          "train": {"steps": 50}
        }
        """)
    path = write(tmp_path, "tiny.json", text)
    raw = load_raw(path)
    assert raw.data["nodes"]["student"]["params"]["hidden"] == [24, 12]
    source = raw.source
    assert source.where(("dgraph",)) == loc(path, where(text, "1,"))
    assert source.where(("nodes", "data", "params", "batch_size")) == loc(path, where(text, "32"))
    assert source.key_where(("nodes", "data", "type")) == loc(path, where(text, '"type"'))
    assert source.where(("nodes", "student", "params", "hidden", 1)) == loc(
        path, where(text, "12]"))
    assert source.where(("nodes", "student", "inputs", "x")) == loc(path, where(text, '"data.x"'))
    assert source.where(("train", "steps")) == loc(path, where(text, "50"))


def test_pydantic_problem_points_into_a_json_spec(tmp_path: Path) -> None:
    text = '{"dgraph": 1,\n "nodes": {},\n "train": {"steps": "many"}}\n'
    path = write(tmp_path, "bad.json", text)
    with pytest.raises(ValidationError) as exc:
        load_spec(path)
    (problem,) = exc.value.problems
    assert (problem.code, problem.location) == ("bad-value", loc(path, (3, 21)))


def test_yaml_merge_keys_are_located_at_their_mapping(tmp_path: Path) -> None:
    text = """\
        dgraph: 1
        nodes:
          teacher: &wide
            kind: teacher
            type: mlp
            params: {in_features: 64, num_classes: 10}
          other:
            <<: *wide
            kind: model
        """
    path = write(tmp_path, "merge.yaml", text)
    raw = load_raw(path)
    assert raw.data["nodes"]["other"] == {
        "kind": "model", "type": "mlp", "params": {"in_features": 64, "num_classes": 10}}
    assert raw.source.where(("nodes", "other", "kind")) == loc(path, (9, 11))
    assert raw.source.where(("nodes", "other", "type")) == loc(path, (8, 5))


@pytest.mark.parametrize(
    ("text", "code", "message", "line_col"),
    [
        ("- a\n- b\n", "not-a-mapping",
         "a spec must be a mapping at the top level, found list", (1, 1)),
        ("dgraph: 1\n1: x\n", "bad-key", "keys must be strings, found int 1", (2, 1)),
        ("dgraph: 1\nname: !!python/object:os.system x\n", "yaml-tag",
         "YAML tag '!!python/object:os.system' is not allowed in a spec", (2, 7)),
        ("dgraph: 1\ndgraph: 1\n", "yaml-syntax",
         'cannot parse the spec: found duplicate key "dgraph" with value "1" (original value: '
         '"1") (while constructing a mapping)', (2, 1)),
        ("nodes:\n\tdata: {}\n", "yaml-syntax",
         "cannot parse the spec: found character '\\t' that cannot start any token (while "
         "scanning for the next token)", (2, 1)),
    ],
)
def test_unreadable_specs_raise_located_spec_errors(
    tmp_path: Path, text: str, code: str, message: str, line_col: tuple[int, int]
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(SpecError) as exc:
        load_raw(path)
    assert (exc.value.code, exc.value.message, exc.value.location) == (
        code, message, loc(path, line_col))
    problem = exc.value.problem()
    assert problem.expected and problem.found and problem.suggestion


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        load_raw(tmp_path / "nope.yaml")
    assert exc.value.code == "spec-not-found"
    assert exc.value.found == f"'{tmp_path / 'nope.yaml'}'"


# -- extends ------------------------------------------------------------------------------


def test_extends_merges_the_base_under_the_spec(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", SPEC)
    sub = tmp_path / "variants"
    sub.mkdir()
    child_text = """\
        extends: ../base.yaml
        name: child
        nodes:
          student:
            params: {hidden: [48]}
        train:
          seed: 3
        """
    child = write(sub, "child.yaml", child_text)
    raw = load_raw(child)
    assert "extends" not in raw.data
    assert raw.data["name"] == "child"
    assert raw.data["nodes"]["student"]["params"] == {
        "in_features": 64, "hidden": [48], "num_classes": 10}
    assert raw.data["train"] == {"steps": 50, "seed": 3}
    assert raw.data["updates"]["main"]["objective"] == {"ce": 1.0}
    # Values from the base point into the base file, values of the child into the child.
    base_path = base.resolve()
    assert raw.source.where(("train", "steps")) == Location(str(base_path), 25, 10)
    assert raw.source.where(("nodes", "student", "params", "num_classes")) == Location(
        str(base_path), 14, 20)
    assert raw.source.where(("train", "seed")) == loc(child, (7, 9))
    assert raw.source.where(("nodes", "student", "params", "hidden")) == loc(child, (5, 14))
    assert raw.source.where(("name",)) == loc(child, (2, 7))
    spec = load_spec(child)
    assert spec.display_name == "child"
    assert spec.nodes["student"].params["hidden"] == [48]


def test_extends_a_zoo_spec(tmp_path: Path) -> None:
    child = write(tmp_path, "short_kd.yaml", "extends: kd\ntrain: {steps: 10}\n")
    spec = load_spec(child)
    assert spec.name == "kd"
    assert spec.train.steps == 10
    assert spec.train.log_every == 20
    assert spec.source.where(("nodes", "kd", "type")).file == str(zoo_dir() / "kd.yaml")


def test_a_problem_in_the_base_is_located_in_the_base(tmp_path: Path) -> None:
    base_text = SPEC.replace("steps: 50", "steps: many")
    base = write(tmp_path, "base.yaml", base_text)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nname: child\n")
    with pytest.raises(ValidationError) as exc:
        load_spec(child)
    (problem,) = exc.value.problems
    assert problem.location == Location(str(base.resolve()), 25, 10)
    assert problem.message.startswith("invalid value for 'train.steps'")


def test_a_syntax_error_in_the_base_names_the_base_and_the_extends(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "dgraph: 1\nnodes: {data: \n")
    child = write(tmp_path, "child.yaml", "name: child\nextends: base.yaml\n")
    with pytest.raises(SpecError) as exc:
        load_raw(child)
    assert exc.value.code == "yaml-syntax"
    assert exc.value.location is not None
    assert exc.value.location.file == str(base.resolve())
    assert exc.value.notes[-1] == (
        f"read as the base spec named by 'extends' at {child}:2:10")


def test_extends_cycle_is_a_clear_spec_error(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    b = write(tmp_path, "b.yaml", "name: b\nextends: a.yaml\n")
    with pytest.raises(SpecError) as exc:
        load_raw(a)
    a_abs, b_abs = a.resolve(), b.resolve()
    assert str(exc.value) == (
        f"{b_abs}:2:10: 'extends' forms a cycle; remove 'extends' from one of the specs on "
        "the cycle")
    assert exc.value.code == "extends-cycle"
    assert exc.value.found == f"{a_abs} -> {b_abs} -> {a_abs}"
    assert exc.value.problem().render() == (
        f"{b_abs}:2:10: error[extends-cycle]: 'extends' forms a cycle\n"
        "    expected: a chain of base specs that ends in a spec without 'extends'\n"
        f"    found:    {a_abs} -> {b_abs} -> {a_abs}\n"
        f"    note: read as the base spec named by 'extends' at {a}:1:10\n"
        "    hint: remove 'extends' from one of the specs on the cycle")


def test_a_spec_that_extends_itself(tmp_path: Path) -> None:
    path = write(tmp_path, "self.yaml", "extends: self.yaml\n")
    with pytest.raises(SpecError) as exc:
        load_raw(path)
    assert exc.value.code == "extends-cycle"
    assert exc.value.location == loc(path, (1, 10))


@pytest.mark.parametrize(
    ("value", "code", "message", "column"),
    [
        ("nope.yaml", "spec-not-found",
         "'extends' names no spec: spec 'nope.yaml' not found: no such file, and no zoo spec "
         "of that name", 10),
        ("[kd, 3]", "bad-extends", "'extends' must name a spec file or zoo spec", 15),
        ("[]", "bad-extends", "'extends' is an empty list", 1),
        ("3", "bad-extends", "'extends' must name a spec file or zoo spec", 10),
    ],
)
def test_bad_extends(tmp_path: Path, value: str, code: str, message: str, column: int) -> None:
    path = write(tmp_path, "child.yaml", f"dgraph: 1\nextends: {value}\n")
    with pytest.raises(SpecError) as exc:
        load_raw(path)
    assert (exc.value.code, exc.value.message, exc.value.location) == (
        code, message, loc(path, (2, column)))


def test_a_list_of_bases_merges_in_order_each_located_in_its_file(tmp_path: Path) -> None:
    data = write(tmp_path, "_data.yaml", """\
        dgraph: 1
        nodes:
          data: {kind: data, type: digits, params: {batch_size: 32}}
        train: {steps: 10, seed: 1}
        """)
    write(tmp_path, "_model.yaml", """\
        dgraph: 1
        extends: _data.yaml
        nodes:
          data: {params: {batch_size: 64}}
          student: {kind: student, type: mlp, params: {in_features: 64, num_classes: 10}}
        train: {steps: 20}
        """)
    child = write(tmp_path, "child.yaml", """\
        extends: [_data.yaml, _model.yaml]
        train: {seed: 5}
        """)
    raw = load_raw(child)
    assert raw.data["nodes"]["data"]["params"] == {"batch_size": 64}  # the later base wins
    assert raw.data["train"] == {"steps": 20, "seed": 5}  # the file over both
    assert raw.source.where(("nodes", "data", "kind")) == loc(data, (3, 16))


def test_bases_that_list_bases_are_bounded(tmp_path: Path) -> None:
    write(tmp_path, "_0.yaml", "dgraph: 1\n")
    for level in range(1, 9):  # each lists the previous level twice: 2**8 reads unbounded
        write(tmp_path, f"_{level}.yaml",
              f"dgraph: 1\nextends: [_{level - 1}.yaml, _{level - 1}.yaml]\n")
    with pytest.raises(SpecError) as exc:
        load_raw(tmp_path / "_8.yaml")
    assert exc.value.code == "extends-too-many"
    assert exc.value.message == "'extends' reads more than 128 base specs in all"


# -- --set overrides ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "path", "value"),
    [
        ("train.steps=3", ("train", "steps"), 3),
        ("train.compile=true", ("train", "compile"), True),
        ("nodes.student.params.hidden=[1, 2]", ("nodes", "student", "params", "hidden"), [1, 2]),
        ("nodes.student.params.hidden.0=7", ("nodes", "student", "params", "hidden", 0), 7),
        ("updates.main.params.0=teacher", ("updates", "main", "params", 0), "teacher"),
        ("updates.main.objective.ce=0.25", ("updates", "main", "objective", "ce"), 0.25),
        ("name=my run", ("name",), "my run"),
        ("name='3'", ("name",), "3"),
        ("description=", ("description",), ""),
        ("export.node=student", ("export", "node"), "student"),
        ("train.eval={every: 5}", ("train", "eval"), {"every": 5}),
        ("train.out=null", ("train", "out"), None),
    ],
)
def test_overrides_set_nested_keys_and_list_items_with_yaml_values(
    tmp_path: Path, override: str, path: tuple, value: object
) -> None:
    raw = apply_overrides(load_raw(write(tmp_path, "tiny.yaml", SPEC)), [override])
    target = raw.data
    for key in path:
        target = target[key]
    assert target == value
    assert type(target) is type(value)
    assert raw.source.where(path) == Location(f"<--set {override}>")


def test_overrides_do_not_touch_the_raw_spec_they_start_from(tmp_path: Path) -> None:
    raw = load_raw(write(tmp_path, "tiny.yaml", SPEC))
    apply_overrides(raw, ["train.steps=3"])
    assert raw.data["train"]["steps"] == 50


def test_an_overridden_mapping_is_located_at_the_override(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny.yaml", SPEC)
    spec = load_spec(path, ["nodes.student.params={in_features: 64, num_classes: ten}"])
    with pytest.raises(ValidationError) as exc:
        validate(spec)
    (problem,) = exc.value.problems
    assert problem.code == "bad-param"
    assert problem.location == Location(
        "<--set nodes.student.params={in_features: 64, num_classes: ten}>")


def test_overrides_apply_in_order(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "tiny.yaml", SPEC), ["train.steps=3", "train.steps=4"])
    assert spec.train.steps == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps", "<--set train.steps>: an override must look like key.path=value; "
         "e.g. --set train.steps=100 or --set nodes.kd.params.temperature=2.0"),
        ("=3", "<--set =3>: an override must look like key.path=value; "
         "e.g. --set train.steps=100 or --set nodes.kd.params.temperature=2.0"),
        (".steps=3", "<--set .steps=3>: the override key '.steps' has an empty part; "
         "remove the doubled, leading or trailing '.'"),
        ("train.steps.x=3", "<--set train.steps.x=3>: cannot set 'train.steps.x': "
         "'train.steps' is not a mapping; set 'train.steps' itself, e.g. --set train.steps=..."),
        ("updates.main.params.first=x", "<--set updates.main.params.first=x>: cannot set "
         "'updates.main.params.first': 'updates.main.params' is a list, indexed by number; "
         "e.g. updates.main.params.0, or set the whole list: updates.main.params=[...]"),
        ("updates.main.params.-1=x", "<--set updates.main.params.-1=x>: cannot set "
         "'updates.main.params.-1': 'updates.main.params' is a list, indexed by number; "
         "e.g. updates.main.params.0, or set the whole list: updates.main.params=[...]"),
        ("updates.main.params.1=x", "<--set updates.main.params.1=x>: cannot set "
         "'updates.main.params.1': index 1 is past the end of 'updates.main.params'; "
         "set the whole list instead: --set updates.main.params=[...]"),
        ("train.steps={", "<--set train.steps={>: cannot parse the value of the override: "
         "expected the node content, but found '<stream end>' (while parsing a flow node); "
         "quote text that YAML would misread, e.g. --set \"name='a: b'\""),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, message: str) -> None:
    raw = load_raw(write(tmp_path, "tiny.yaml", SPEC))
    with pytest.raises(SpecError) as exc:
        apply_overrides(raw, [override])
    assert str(exc.value) == message
    assert exc.value.code == "bad-override"
    assert exc.value.location == Location(f"<--set {override}>")


def test_override_with_a_value_of_the_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as exc:
        load_spec(write(tmp_path, "tiny.yaml", SPEC), ["train.steps=many"])
    (problem,) = exc.value.problems
    assert problem.render() == (
        "<--set train.steps=many>: error[bad-value]: invalid value for 'train.steps': Input "
        "should be a valid integer, unable to parse string as an integer\n"
        "    expected: a valid integer\n"
        "    found:    'many'\n"
        "    hint: `dgraph schema` describes every key and the values it accepts")


def test_override_with_an_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as exc:
        load_spec(write(tmp_path, "tiny.yaml", SPEC), ["train.stepz=3"])
    (problem,) = exc.value.problems
    assert (problem.code, problem.location, problem.suggestion) == (
        "unknown-key", Location("<--set train.stepz=3>"), "did you mean 'steps'?")


# -- unknown keys -------------------------------------------------------------------------


def test_unknown_top_level_keys_are_all_reported(tmp_path: Path) -> None:
    text = SPEC.replace("train:\n", "trian:\n") + "exports: {node: student}\n"
    path = write(tmp_path, "tiny.yaml", text)
    with pytest.raises(ValidationError) as exc:
        load_spec(path)
    rendered = [p.render() for p in exc.value.problems]
    assert rendered == [
        f"{path}:24:1: error[unknown-key]: unknown key 'trian' in the spec\n"
        "    expected: one of: description, dgraph, export, name, nodes, stages, train, updates\n"
        "    found:    key 'trian'\n"
        "    hint: did you mean 'train'?",
        f"{path}:26:1: error[unknown-key]: unknown key 'exports' in the spec\n"
        "    expected: one of: description, dgraph, export, name, nodes, stages, train, updates\n"
        "    found:    key 'exports'\n"
        "    hint: did you mean 'export'?",
    ]


def test_unknown_nested_key_without_a_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, "tiny.yaml", SPEC.replace("  steps: 50", "  steps: 50\n  colour: 3"))
    with pytest.raises(ValidationError) as exc:
        load_spec(path)
    (problem,) = exc.value.problems
    assert (problem.code, problem.location) == ("unknown-key", loc(path, (26, 3)))
    assert problem.suggestion == "remove it; misspelled keys are never silently ignored"


# -- zoo names ----------------------------------------------------------------------------


def test_zoo_names_resolve_to_the_shipped_files() -> None:
    names = zoo_names()
    assert {"kd", "teacher_digits", "student_digits", "adversarial_toy"} <= set(names)
    for name in names:
        path = resolve_spec_path(name)
        assert path.parent == zoo_dir()
        assert path.stem == name
        assert load_spec(name).display_name == name


def test_a_local_file_wins_over_a_zoo_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "kd", SPEC)
    assert resolve_spec_path("kd") == Path("kd")


@pytest.mark.parametrize(
    ("name", "hint"),
    [("adversarial_ty", "did you mean 'adversarial_toy'?"),
     ("student_digit", "did you mean 'student_digits' or 'consistency_digits'?")],
)
def test_misspelt_zoo_name_suggests_the_closest(name: str, hint: str) -> None:
    with pytest.raises(SpecError) as exc:
        resolve_spec_path(name)
    assert str(exc.value) == (
        f"spec '{name}' not found: no such file, and no zoo spec of that name; {hint}")
    assert exc.value.suggestion == hint
    assert exc.value.expected == (
        "a .yaml/.yml/.json spec file, or a zoo spec name: " + ", ".join(zoo_names()))


def test_unknown_name_without_a_close_zoo_spec() -> None:
    with pytest.raises(SpecError) as exc:
        resolve_spec_path("zzzzzz")
    assert exc.value.suggestion == (
        "check the path; `dgraph validate kd` validates the zoo spec 'kd'")
