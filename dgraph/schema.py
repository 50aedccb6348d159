"""JSON Schema of the spec language, for editors (the YAML language server) and CI checks.

The schema is pydantic's for :class:`~dgraph.spec.Spec`, plus what only the registry knows:
the enum of component types and, per type, the schema of its ``params``.
"""

from __future__ import annotations

import copy
from typing import Any

from dgraph.registry import COMPONENTS, load_plugins
from dgraph.spec.model import Spec

__all__ = ["spec_json_schema"]


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a dgraph spec file.

    A file without ``extends`` must be complete (``$defs/complete``); a file with ``extends``
    is completed by its base, so the same rules apply without any required key
    (``$defs/partial``). A node with ``shares`` is completed by its owner.
    """
    load_plugins()
    complete = copy.deepcopy(Spec.model_json_schema(by_alias=True, mode="validation"))
    complete.setdefault("properties", {})["extends"] = {
        "anyOf": [{"type": "string"},
                  {"type": "array", "items": {"type": "string"}, "minItems": 1}],
        "description": "a base spec (file relative to this one, or zoo name) merged under this "
        "one, or a list of them merged in order",
    }
    defs = complete.pop("$defs", {})
    node = defs["NodeSpec"]
    node["properties"]["type"]["enum"] = list(COMPONENTS)
    node["anyOf"] = [{"required": ["shares"]}, {"required": node.pop("required", [])}]
    conditions = []
    for name, cls in COMPONENTS.items():
        params = copy.deepcopy(cls.Params.model_json_schema(mode="validation"))
        for key, value in params.pop("$defs", {}).items():
            # refs inside a nested model point at its siblings: rename them the same way
            defs.setdefault(f"{name}__{key}", _rename_refs(value, name))
        params = _rename_refs(params, name)
        params.pop("title", None)
        conditions.append({
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {
                "properties": {
                    "params": params,
                    "kind": {"enum": list(cls.roles)},
                }
            },
        })
    node["allOf"] = conditions
    partial_defs = {f"partial__{key}": _rename_refs(_without_required(value), "partial")
                    for key, value in defs.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "dgraph spec",
        "description": complete.get("description", ""),
        "if": {"required": ["extends"]},
        "then": {"$ref": "#/$defs/partial"},
        "else": {"$ref": "#/$defs/complete"},
        "$defs": {
            **defs, **partial_defs, "complete": complete,
            "partial": _rename_refs(_without_required(complete), "partial"),
        },
    }


def _without_required(value: Any) -> Any:
    """``value`` with every ``required`` list (and the shares-or-kind choice) dropped."""
    if isinstance(value, dict):
        # An ``if`` keeps its ``required``: it selects the rules of one component type.
        return {key: item if key == "if" else _without_required(item)
                for key, item in value.items()
                if key != "required" and not (key == "anyOf" and _is_required_choice(item))}
    if isinstance(value, list):
        return [_without_required(item) for item in value]
    return value


def _is_required_choice(options: Any) -> bool:
    return isinstance(options, list) and all(
        isinstance(option, dict) and set(option) == {"required"} for option in options)


def _rename_refs(value: Any, prefix: str) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str) and item.startswith("#/$defs/"):
                out[key] = f"#/$defs/{prefix}__{item.removeprefix('#/$defs/')}"
            elif key == "mapping" and isinstance(item, dict):
                # A discriminated union's ``discriminator.mapping`` refers to $defs too.
                out[key] = {tag: f"#/$defs/{prefix}__{ref.removeprefix('#/$defs/')}"
                            if isinstance(ref, str) and ref.startswith("#/$defs/")
                            else _rename_refs(ref, prefix) for tag, ref in item.items()}
            else:
                out[key] = _rename_refs(item, prefix)
        return out
    if isinstance(value, list):
        return [_rename_refs(v, prefix) for v in value]
    return value
