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
    """The JSON Schema (draft 2020-12) of a dgraph spec file."""
    load_plugins()
    schema = copy.deepcopy(Spec.model_json_schema(by_alias=True, mode="validation"))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dgraph spec"
    schema.setdefault("properties", {})["extends"] = {
        "type": "string",
        "description": "a base spec (file relative to this one, or zoo name) merged under this one",
    }
    defs = schema.setdefault("$defs", {})
    node = defs["NodeSpec"]
    node["properties"]["type"]["enum"] = list(COMPONENTS)
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
    return schema


def _rename_refs(value: Any, prefix: str) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str) and item.startswith("#/$defs/"):
                out[key] = f"#/$defs/{prefix}__{item.removeprefix('#/$defs/')}"
            else:
                out[key] = _rename_refs(item, prefix)
        return out
    if isinstance(value, list):
        return [_rename_refs(v, prefix) for v in value]
    return value
