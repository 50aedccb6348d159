"""`dgraph schema`: a valid JSON Schema (draft 2020-12) that every zoo spec satisfies."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from dgraph.cli import main
from dgraph.spec import load_spec, zoo_names
from dgraph.spec.source import resolve_spec_path


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """What `dgraph schema` prints, parsed."""
    stream = io.StringIO()
    with contextlib.redirect_stdout(stream):
        code = main(["schema"])
    assert code == 0
    return json.loads(stream.getvalue())


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def plain(name: str) -> dict[str, Any]:
    """A zoo spec read as plain YAML (no dgraph involved)."""
    return YAML(typ="safe", pure=True).load(resolve_spec_path(name).read_text(encoding="utf-8"))


def complete(name: str) -> dict[str, Any]:
    """A zoo spec with its bases merged in (what dgraph validates)."""
    return copy.deepcopy(load_spec(name).raw)


def messages(validator: jsonschema.Draft202012Validator, data: dict[str, Any]) -> list[str]:
    return [error.message for error in validator.iter_errors(data)]


def test_schema_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert data["title"] == "dgraph spec"


def test_schema_is_a_valid_json_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    complete, partial = schema["$defs"]["complete"], schema["$defs"]["partial"]
    assert "nodes" in complete["required"] and "required" not in partial
    assert "extends" in complete["properties"]
    assert schema["if"] == {"required": ["extends"]}


def test_a_file_with_extends_may_leave_out_what_its_base_gives(
    validator: jsonschema.Draft202012Validator,
) -> None:
    partial = {"extends": "kd", "updates": {"main": {"objective": {"kd": 1.0}}}}
    assert messages(validator, partial) == []
    del partial["extends"]
    assert messages(validator, partial) == ["'params' is a required property",
                                            "'nodes' is a required property"]


def test_a_sharing_node_may_leave_out_kind_type_and_params(
    validator: jsonschema.Draft202012Validator,
) -> None:
    data = complete("adversarial_toy")
    data["nodes"]["critic_on_fake"] = {"shares": "critic", "inputs": {"x": "generator.y"}}
    assert messages(validator, data) == []
    del data["nodes"]["critic_on_fake"]["shares"]
    assert messages(validator, data) == [
        "{'inputs': {'x': 'generator.y'}} is not valid under any of the given schemas"]


@pytest.mark.parametrize("name", zoo_names())
def test_every_zoo_spec_satisfies_the_schema(
    name: str, validator: jsonschema.Draft202012Validator
) -> None:
    assert messages(validator, plain(name)) == []


def test_unknown_param_fails_schema_validation(
    validator: jsonschema.Draft202012Validator,
) -> None:
    data = copy.deepcopy(plain("kd"))
    data["nodes"]["kd"]["params"]["temprature"] = 2.0
    assert messages(validator, data) == [
        "Additional properties are not allowed ('temprature' was unexpected)"
    ]


def test_unknown_type_fails_schema_validation(validator: jsonschema.Draft202012Validator) -> None:
    data = copy.deepcopy(plain("kd"))
    data["nodes"]["kd"]["type"] = "hinton"
    (message,) = messages(validator, data)
    assert message.startswith("'hinton' is not one of ['")
    assert "'hinton_kd'" in message


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("train", "steps"), "many", "'many' is not of type 'integer'"),
        (("nodes", "kd", "kind"), "studnet", None),
        (("updatez",), {}, "Additional properties are not allowed ('updatez' was unexpected)"),
        (("nodes", "student", "params", "num_classes"), "ten", "'ten' is not of type 'integer'"),
    ],
)
def test_other_mistakes_fail_schema_validation(
    validator: jsonschema.Draft202012Validator,
    path: tuple[str, ...],
    value: Any,
    expected: str | None,
) -> None:
    data = complete("kd")
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    found = messages(validator, data)
    assert found, f"setting {'.'.join(path)}={value!r} passed the schema"
    if expected is not None:
        assert expected in found


def test_every_ref_in_the_schema_resolves() -> None:
    import json as _json
    import re as _re

    from dgraph.schema import spec_json_schema

    schema = spec_json_schema()
    refs = set(_re.findall(r'"#/\$defs/([^"]+)"', _json.dumps(schema)))
    assert refs and sorted(r for r in refs if r not in schema["$defs"]) == []
