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
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
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
        p.stem for p in zoo_dir().iterdir()
        if p.suffix in SPEC_SUFFIXES and not p.stem.startswith("_")
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
    names = zoo_names()
    hint = did_you_mean(candidate.stem, names)
    raise SpecError(
        f"spec '{name_or_path}' not found: no such file, and no zoo spec of that name",
        code="spec-not-found",
        expected="a .yaml/.yml/.json spec file, or a zoo spec name: " + (", ".join(names) or "-"),
        found=f"'{name_or_path}'",
        suggestion=hint or "check the path; `dgraph validate kd` validates the zoo spec 'kd'",
    )


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


_MAX_DEPTH = 64


def _key_position(node: CommentedMap, key: Any) -> tuple[int, int, int, int]:
    """0-based (key line, key column, value line, value column) of ``key`` in ``node``.

    Keys brought in by a YAML merge key (``<<: *base``) have no position of their own in
    ``node``; they are located at the mapping itself.
    """
    position = node.lc.data.get(key)
    if position is not None and len(position) >= 4:
        return position[0], position[1], position[2], position[3]
    line, col = node.lc.line or 0, node.lc.col or 0
    return line, col, line, col


def _plain(node: Any, file: str, path: Path_, smap: SourceMap) -> Any:
    """Turn ruamel's round-trip nodes into dicts/lists, recording each value's position."""
    if len(path) > _MAX_DEPTH:
        raise SpecError(
            f"the spec nests deeper than {_MAX_DEPTH} levels",
            smap.where(path),
            code="too-deep",
            expected=f"at most {_MAX_DEPTH} nested mappings or lists",
            found=f"a value at depth {len(path)}",
            suggestion="check for an anchor/alias that refers to itself, or unbalanced brackets",
        )
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            kline, kcol, vline, vcol = _key_position(node, key)
            if not isinstance(key, str):
                raise SpecError(
                    f"keys must be strings, found {type(key).__name__} {_short(key)}",
                    Location(file, kline + 1, kcol + 1),
                    code="bad-key",
                    expected="a text key, e.g. 'nodes' or a node name",
                    found=f"{type(key).__name__} {_short(key)}",
                    suggestion=f"quote the key: '{key}':" if isinstance(key, (int, float, bool))
                    or key is None else "write the key as plain text",
                )
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
    if isinstance(node, TaggedScalar):
        raise SpecError(
            f"YAML tags are not allowed in a spec, found '{node.tag}'",
            smap.where(path),
            code="yaml-tag",
            expected="a plain value (text, number, true/false, list or mapping)",
            found=f"{node.tag} {_short(node.value)}",
            suggestion="remove the '!' tag",
        )
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
        notes = []
        if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            cm = exc.context_mark
            notes.append(f"{exc.context.strip()} that starts at "
                         f"{Location(file, cm.line + 1, cm.column + 1)}")
        raise SpecError(
            f"cannot parse the spec: {problem}{context}",
            loc,
            code="yaml-syntax",
            expected="well-formed YAML (or JSON)",
            found=_source_line(text, mark.line if mark else None),
            suggestion="check the brackets, quotes, colons and indentation here "
            "(YAML does not allow tabs for indentation)",
            notes=notes,
        ) from None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(
            f"cannot parse the spec: {first}",
            Location(file),
            code="yaml-syntax",
            expected="well-formed YAML (or JSON)",
            found=type(exc).__name__,
            suggestion="check the file's syntax",
        ) from None
    except RecursionError:
        raise SpecError(
            "cannot parse the spec: it nests too deeply",
            Location(file),
            code="too-deep",
            expected=f"at most {_MAX_DEPTH} nested mappings or lists",
            found="deeper nesting",
            suggestion="check for unbalanced brackets",
        ) from None
    except (TypeError, ValueError) as exc:
        # ruamel raises these while building a mapping whose key is itself a mapping or list
        raise SpecError(
            f"cannot parse the spec: {exc}",
            Location(file),
            code="yaml-syntax",
            expected="mapping keys that are plain names",
            found="a key that is a mapping or a list",
            suggestion="check the brackets and colons: a '{' or '[' may have ended up "
            "before a ':'",
        ) from None
    smap.locations[()] = Location(file, 1, 1)
    return _plain(document, file, (), smap), smap


def _source_line(text: str, line: int | None) -> str | None:
    """The 0-based ``line`` of ``text``, quoted, for a syntax error's 'found'."""
    lines = text.splitlines()
    if line is None or not 0 <= line < len(lines):
        return "the end of the file" if line is not None else None
    shown = lines[line].rstrip()
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"line {line + 1}: {shown!r}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read(path: Path) -> tuple[dict[str, Any], SourceMap]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(
            "cannot read the spec: the file is not UTF-8 text",
            Location(str(path)),
            code="unreadable",
            expected="a UTF-8 text file",
            found="bytes that are not UTF-8",
            suggestion="save the spec as UTF-8",
        ) from None
    except OSError as exc:
        raise SpecError(
            f"cannot read the spec: {exc.strerror or exc}",
            Location(str(path)),
            code="unreadable",
            expected="a readable spec file",
            found=type(exc).__name__,
            suggestion="check the path and its permissions",
        ) from None
    data, smap = parse_text(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            f"a spec must be a mapping at the top level, found {type(data).__name__}",
            Location(str(path), 1, 1),
            code="not-a-mapping",
            expected="a mapping with keys such as 'dgraph', 'nodes' and 'updates'",
            found=f"{type(data).__name__} {_short(data)}",
            suggestion="start the file with 'dgraph: 1' and 'nodes:'",
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
    """Read a spec file (or zoo name), following ``extends`` to its base specs.

    A base spec is found relative to the file that names it (or in the zoo). Problems inside
    a base spec are located in the base file; a cycle of ``extends`` is reported at the
    ``extends`` that closes it.
    """
    path = resolve_spec_path(path_or_name, _chain[-1].parent if _chain else None)
    resolved = path.resolve()
    data, smap = _read(path)
    base_ref = data.pop("extends", None)
    if base_ref is None:
        return RawSpec(data, smap, path)
    where = smap.where(("extends",))
    if not isinstance(base_ref, str) or not base_ref.strip():
        raise SpecError(
            "'extends' must name a spec file or zoo spec",
            where,
            code="bad-extends",
            expected="a spec file (relative to this one) or a zoo spec name, e.g. 'extends: kd'",
            found=f"{type(base_ref).__name__} {_short(base_ref)}",
            suggestion="write the base spec's file name as text",
        )
    chain = (*_chain, resolved)
    try:
        base_path = resolve_spec_path(base_ref, resolved.parent)
    except SpecError as exc:
        raise SpecError(
            f"'extends' names no spec: {exc.message}",
            where,
            code=exc.code,
            expected=exc.expected,
            found=exc.found,
            suggestion=exc.suggestion,
        ) from None
    if base_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path.resolve()))
        raise SpecError(
            "'extends' forms a cycle",
            where,
            code="extends-cycle",
            expected="a chain of base specs that ends in a spec without 'extends'",
            found=cycle,
            suggestion="remove 'extends' from one of the specs on the cycle",
        )
    try:
        base = load_raw(base_path.resolve(), chain)
    except SpecError as exc:
        exc.notes = (*exc.notes, f"read as the base spec named by 'extends' at {where}")
        raise
    merged_map = SourceMap(default=smap.default)
    merged_map.update(base.source)
    merged_map.update(smap)
    return RawSpec(_merge(base.data, data), merged_map, path)


_OVERRIDE_EXAMPLE = "e.g. --set train.steps=100 or --set nodes.kd.params.temperature=2.0"


def _bad_override(item: str, message: str, *, expected: str, found: str,
                  suggestion: str) -> SpecError:
    return SpecError(message, Location(f"<--set {item}>"), code="bad-override",
                     expected=expected, found=found, suggestion=suggestion)


def _parse_override_value(text: str, where: str, item: str) -> tuple[Any, SourceMap]:
    if not text.strip():
        return "", SourceMap(default=Location(where))
    try:
        return parse_text(text, where)
    except SpecError as exc:
        raise _bad_override(
            item,
            "cannot parse the value of the override: "
            + exc.message.removeprefix("cannot parse the spec: "),
            expected="a YAML value such as 3, 0.5, true, text, [1, 2] or {a: 1}",
            found=repr(text),
            suggestion="quote text that YAML would misread, e.g. --set \"name='a: b'\"",
        ) from None


def apply_overrides(raw: RawSpec, overrides: Iterable[str]) -> RawSpec:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``3``, ``true``, ``[1, 2]``).

    Keys are dotted paths; a number indexes a list (``updates.main.params.0=student``).
    Missing mappings on the way are created. Every overridden value is located at
    ``<--set key.path=value>`` so that later problems point at the override.
    """
    data = copy.deepcopy(raw.data)
    for item in overrides:
        where = f"<--set {item}>"
        key, sep, value_text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise _bad_override(
                item,
                "an override must look like key.path=value",
                expected="key.path=value: a dotted key, '=', then a YAML value",
                found=repr(item) + (" (no '=')" if not sep else " (no key before '=')"),
                suggestion=_OVERRIDE_EXAMPLE,
            )
        parts = key.split(".")
        if any(not p.strip() for p in parts):
            raise _bad_override(
                item,
                f"the override key '{key}' has an empty part",
                expected="names separated by single dots, e.g. nodes.kd.params.temperature",
                found=repr(key),
                suggestion="remove the doubled, leading or trailing '.'",
            )
        parts = [p.strip() for p in parts]
        value, value_map = _parse_override_value(value_text, where, item)
        target: Any = data
        path: list[str | int] = []
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            prefix = ".".join(parts[:depth]) or "the spec"
            if isinstance(target, list):
                index = _list_index(item, key, prefix, part, target)
                path.append(index)
                if last:
                    target[index] = value
                else:
                    target = target[index]
            elif isinstance(target, dict):
                path.append(part)
                if last:
                    target[part] = value
                else:
                    if target.get(part) is None:
                        target[part] = {}
                    target = target[part]
            else:
                raise _bad_override(
                    item,
                    f"cannot set '{key}': '{prefix}' is not a mapping",
                    expected=f"a mapping or list at '{prefix}' to set '{part}' in",
                    found=f"{type(target).__name__} {_short(target)}",
                    suggestion=f"set '{prefix}' itself, e.g. --set {prefix}=...",
                )
        _relocate(raw.source, tuple(path), value_map, Location(where))
    return RawSpec(data, raw.source, raw.path)


def _list_index(item: str, key: str, prefix: str, part: str, target: list) -> int:
    """The list index ``part`` names, or a located error."""
    span = f"0..{len(target) - 1}" if target else "none: the list is empty"
    if not part.isdigit():
        raise _bad_override(
            item,
            f"cannot set '{key}': '{prefix}' is a list, indexed by number",
            expected=f"an index ({span})",
            found=repr(part),
            suggestion=f"e.g. {prefix}.0, or set the whole list: {prefix}=[...]",
        )
    index = int(part)
    if index >= len(target):
        raise _bad_override(
            item,
            f"cannot set '{key}': index {index} is past the end of '{prefix}'",
            expected=f"an index ({span})",
            found=str(index),
            suggestion=f"set the whole list instead: --set {prefix}=[...]",
        )
    return index


def _relocate(source: SourceMap, path: Path_, value_map: SourceMap, where: Location) -> None:
    """Point ``path`` and everything under it at the override that set it."""
    n = len(path)
    for located in list(source.locations):
        inner = located[1:] if located and located[0] == "#key" else located
        if inner[:n] == path:
            del source.locations[located]
    source.locations[path] = where
    source.locations[("#key", *path)] = where
    for located in value_map.locations:
        if located and located[0] == "#key":
            source.locations[("#key", *path, *located[1:])] = where
        else:
            source.locations[(*path, *located)] = where


def read_spec_text(raw: Mapping[str, Any]) -> str:
    """The resolved spec as YAML text (written into each run directory)."""
    import io

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[attr-defined]
    stream = io.StringIO()
    yaml.dump(dict(raw), stream)
    return stream.getvalue()
