"""Reading spec files into plain data plus a map from each value's path to its file:line:column.

YAML and JSON are both read with ruamel.yaml (JSON is YAML 1.2), so both keep positions.
``extends`` merges a base spec under the file; ``--set key.path=value`` overrides on top.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from dgraph.errors import Location, SpecError, did_you_mean

__all__ = ["SourceMap", "RawSpec", "load_raw", "apply_overrides", "resolve_spec_path", "zoo_names"]

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
Path_ = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Locations of values by their path in the spec, e.g. ``("nodes", "kd", "params", "T")``."""

    locations: dict[Path_, Location] = field(default_factory=dict)
    default: Location = field(default_factory=lambda: Location("<spec>"))

    def where(self, path: Iterable[str | int]) -> Location:
        """The location of ``path``, or of its nearest located ancestor."""
        key = tuple(path)
        while key:
            if key in self.locations:
                return self.locations[key]
            key = key[:-1]
        return self.locations.get((), self.default)

    def key_where(self, path: Iterable[str | int]) -> Location:
        """Location of the key that introduces ``path`` (falls back to :meth:`where`)."""
        key = tuple(path)
        return self.locations.get(("#key", *key)) or self.where(key)

    def update(self, other: SourceMap, prefix: Path_ = ()) -> None:
        for path, loc in other.locations.items():
            if path and path[0] == "#key":
                self.locations[("#key", *prefix, *path[1:])] = loc
            else:
                self.locations[(*prefix, *path)] = loc


@dataclass
class RawSpec:
    """A spec as plain data, before the pydantic model checks it."""

    data: dict[str, Any]
    source: SourceMap
    path: Path | None


def zoo_dir() -> Path:
    return Path(str(resources.files("dgraph.specs")))


def zoo_names() -> list[str]:
    """Names of the specs that ship with dgraph (``dgraph validate kd``)."""
    return sorted(
        p.stem for p in zoo_dir().iterdir() if p.suffix in SPEC_SUFFIXES and not p.stem.startswith("_")
    )


def resolve_spec_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A spec file from a path, or from a zoo name such as ``kd``."""
    candidate = Path(name_or_path)
    if relative_to is not None and not candidate.is_absolute():
        local = relative_to / candidate
        if local.exists():
            return local
    if candidate.exists():
        return candidate
    if candidate.suffix == "" and len(candidate.parts) == 1:
        for suffix in SPEC_SUFFIXES:
            zoo = zoo_dir() / f"{candidate.name}{suffix}"
            if zoo.exists():
                return zoo
    hint = did_you_mean(candidate.stem, zoo_names())
    message = f"spec '{name_or_path}' not found: no such file, and no zoo spec of that name"
    message += f"; {hint}" if hint else f" (zoo specs: {', '.join(zoo_names()) or 'none'})"
    raise SpecError(message)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def _plain(node: Any, file: str, path: Path_, smap: SourceMap) -> Any:
    """Turn ruamel's round-trip nodes into dicts/lists, recording each value's position."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if not isinstance(key, str):
                line, col = node.lc.key(key)
                raise SpecError(
                    f"keys must be strings, found {type(key).__name__} {key!r}",
                    Location(file, line + 1, col + 1),
                )
            kline, kcol = node.lc.key(key)
            vline, vcol = node.lc.value(key)
            child = (*path, key)
            smap.locations[("#key", *child)] = Location(file, kline + 1, kcol + 1)
            # A nested mapping is best pointed at by its key; a scalar by its value.
            if isinstance(value, (CommentedMap, CommentedSeq)):
                smap.locations[child] = Location(file, kline + 1, kcol + 1)
            else:
                smap.locations[child] = Location(file, vline + 1, vcol + 1)
            out[key] = _plain(value, file, child, smap)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            line, col = node.lc.item(index)
            smap.locations[(*path, index)] = Location(file, line + 1, col + 1)
            items.append(_plain(value, file, (*path, index), smap))
        return items
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def parse_text(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML or JSON text, returning plain data and its source map."""
    smap = SourceMap(default=Location(file))
    try:
        document = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        problem = (exc.problem or str(exc)).strip()
        context = f" ({exc.context.strip()})" if exc.context else ""
        raise SpecError(f"cannot parse the spec: {problem}{context}", loc) from None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"cannot parse the spec: {first}", Location(file)) from None
    smap.locations[()] = Location(file, 1, 1)
    return _plain(document, file, (), smap), smap


def _read(path: Path) -> tuple[dict[str, Any], SourceMap]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the spec: {exc.strerror or exc}", Location(str(path))) from None
    except UnicodeDecodeError:
        raise SpecError("cannot read the spec: the file is not UTF-8 text", Location(str(path))) from None
    data, smap = parse_text(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            f"a spec must be a mapping at the top level, found {type(data).__name__}",
            Location(str(path), 1, 1),
        )
    return data, smap


def _merge(base: Any, over: Any) -> Any:
    """Deep-merge two spec documents; mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(over)


def load_raw(path_or_name: str | Path, _chain: tuple[Path, ...] = ()) -> RawSpec:
    """Read a spec file (or zoo name), following ``extends`` to its base specs."""
    path = resolve_spec_path(path_or_name, _chain[-1].parent if _chain else None)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise SpecError(f"'extends' forms a cycle: {cycle}", Location(str(path), 1, 1))
    data, smap = _read(path)
    base_ref = data.pop("extends", None)
    if base_ref is None:
        return RawSpec(data, smap, path)
    if not isinstance(base_ref, str):
        raise SpecError(
            f"'extends' must name a spec file or zoo spec, found {type(base_ref).__name__}",
            smap.where(("extends",)),
        )
    try:
        base = load_raw(base_ref, (*_chain, resolved))
    except SpecError as exc:
        raise SpecError(
            f"in the base spec named by 'extends': {exc}", smap.where(("extends",))
        ) from None
    merged_map = SourceMap(default=smap.default)
    merged_map.update(base.source)
    merged_map.update(smap)
    return RawSpec(_merge(base.data, data), merged_map, path)


def _parse_override_value(text: str, where: str) -> Any:
    data, _ = parse_text(text, where) if text.strip() else ("", None)
    return data


def apply_overrides(raw: RawSpec, overrides: Iterable[str]) -> RawSpec:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``3``, ``true``, ``[1, 2]``)."""
    data = copy.deepcopy(raw.data)
    for item in overrides:
        where = f"<--set {item}>"
        key, sep, value_text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"an override must look like key.path=value, found '{item}'")
        value = _parse_override_value(value_text, where)
        parts = [p for p in key.strip().split(".")]
        if any(not p for p in parts):
            raise SpecError(f"an override key has an empty part: '{key}'")
        target: Any = data
        for depth, part in enumerate(parts[:-1]):
            if isinstance(target, list):
                target = _list_item(target, part, parts[: depth + 1], item)
                continue
            if not isinstance(target, dict):
                raise SpecError(
                    f"cannot override '{key}': '{'.'.join(parts[:depth])}' is not a mapping"
                )
            target = target.setdefault(part, {})
        last = parts[-1]
        if isinstance(target, list):
            index = _index(last, parts, item)
            if index >= len(target):
                raise SpecError(f"cannot override '{key}': index {index} is past the list's end")
            target[index] = value
        elif isinstance(target, dict):
            target[last] = value
        else:
            raise SpecError(f"cannot override '{key}': '{'.'.join(parts[:-1])}' is not a mapping")
        raw.source.locations[tuple(_key_path(parts))] = Location(where)
    return RawSpec(data, raw.source, raw.path)


def _index(part: str, parts: list[str], item: str) -> int:
    if not part.lstrip("-").isdigit():
        raise SpecError(f"cannot override '{item}': '{part}' indexes a list and must be a number")
    return int(part)


def _list_item(target: list, part: str, parts: list[str], item: str) -> Any:
    index = _index(part, parts, item)
    if index >= len(target):
        raise SpecError(f"cannot override '{item}': index {index} is past the list's end")
    return target[index]


def _key_path(parts: list[str]) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in parts]


def read_spec_text(raw: Mapping[str, Any]) -> str:
    """The resolved spec as YAML text (written into each run directory)."""
    import io

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[attr-defined]
    stream = io.StringIO()
    yaml.dump(dict(raw), stream)
    return stream.getvalue()
