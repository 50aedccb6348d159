"""Reading spec files into plain data plus a map from each value's path to its file:line:column.

YAML and JSON are both read as YAML 1.2 (JSON is YAML 1.2) and both keep positions: a spec
that is plain data through libyaml's C parser (dgraph.spec._libyaml), anything else (anchors,
tags, merge keys, and every error) with ruamel.yaml.
``extends`` merges a base spec under the file; ``--set key.path=value`` overrides on top.

A spec is data and reading it is bounded: only regular files of at most 64 MiB are read;
YAML tags other than the core ones are refused before anything is constructed; nesting is
at most 64 levels; aliases may not expand a spec beyond one value (two characters of text)
per byte of its file ("billion laughs"); and a file named by ``extends`` that is not a spec
is refused without quoting it. Every refusal is a located :class:`SpecError`.
"""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from dgraph.errors import Location, SpecError, did_you_mean
from dgraph.spec._libyaml import read_plain
from dgraph.spec._positions import Positions

__all__ = ["SourceMap", "RawSpec", "load_raw", "apply_overrides", "resolve_spec_path", "zoo_names"]

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
Path_ = tuple[str | int, ...]

# Limits that keep reading a spec bounded in time and memory, whatever the file holds.
MAX_SPEC_BYTES = 64 * 2**20  # a spec file (or a base spec) is at most 64 MiB
MAX_EXTENDS = 32  # base specs in one chain of 'extends'
MAX_BASES = 128  # spec files read for one spec, all 'extends' lists followed
# Aliases may repeat parts of a spec, but not multiply it: after expanding every alias a spec
# holds at most one value per byte of its file (and at most 2 characters of text per byte),
# or 100,000 values and 1,000,000 characters for small files. A 300-byte "billion laughs"
# file would otherwise expand to billions of values.
MIN_EXPANDED_VALUES = 100_000
MIN_EXPANDED_CHARS = 1_000_000
# The top-level keys of a spec; an extended file must have at least one to be read as a spec.
SPEC_KEYS = ("dgraph", "name", "description", "nodes", "updates", "stages", "train", "export",
             "extends")


class SourceMap:
    """Locations of values by their path in the spec, e.g. ``("nodes", "kd", "params", "T")``.

    A spec merged from several files keeps one layer per file, the later over the earlier
    (a file over its bases): compact :class:`~dgraph.spec._positions.Positions` from the fast
    reader, or a path -> :class:`Location` dict from ruamel. ``--set`` overrides drop what
    lay under the path they set (``masks``) and locate it at the override (``overrides``).
    A lookup gives what one dict updated in that order would give, without building it;
    :attr:`locations` builds it (for tests and tools).
    """

    __slots__ = ("default", "_layers", "_overrides", "_masks")

    def __init__(self, locations: Mapping[Path_, Location] | None = None,
                 default: Location | None = None) -> None:
        self.default = default if default is not None else Location("<spec>")
        self._layers: list[Positions | dict[Path_, Location]] = []
        self._overrides: dict[Path_, Location] = {}
        self._masks: list[Path_] = []
        if locations:
            self._layers.append(dict(locations))

    @property
    def locations(self) -> dict[Path_, Location]:
        """Every located path (``("#key", *path)`` for keys), as one dict."""
        merged: dict[Path_, Location] = {}
        for layer in self._layers:
            merged.update(layer.items())
        for mask in self._masks:
            for located in list(merged):
                if _under(located, mask):
                    del merged[located]
        merged.update(self._overrides)
        return merged

    def add_layer(self, layer: Positions | dict[Path_, Location]) -> None:
        """Put the positions of one more file over the others."""
        self._settle()
        self._layers.append(layer)

    def _writable(self) -> dict[Path_, Location]:
        """A dict layer on top to record locations into."""
        if not self._layers or not isinstance(self._layers[-1], dict) or self._masks \
                or self._overrides:
            self.add_layer({})
        layer = self._layers[-1]
        assert isinstance(layer, dict)
        return layer

    def _settle(self) -> None:
        """Fold overrides and masks into one dict layer (before a layer is put on top)."""
        if self._masks or self._overrides:
            self._layers = [self.locations]
            self._masks, self._overrides = [], {}

    def _masked(self, key: Path_) -> int:
        """How many leading parts of ``key`` the layers may still locate (masks drop the
        rest)."""
        limit = len(key)
        for mask in self._masks:
            if key[:len(mask)] == mask:
                limit = min(limit, len(mask) - 1)
        return limit

    def where(self, path: Iterable[str | int]) -> Location:
        """The location of ``path``, or of its nearest located ancestor."""
        key = tuple(path)
        best_depth, best = -1, None
        if self._overrides:
            for depth in range(len(key), -1, -1):
                found = self._overrides.get(key[:depth])
                if found is not None:
                    best_depth, best = depth, found
                    break
        limit = self._masked(key) if self._masks else len(key)
        for layer in reversed(self._layers):
            if isinstance(layer, dict):
                for depth in range(limit, best_depth, -1):
                    found = layer.get(key[:depth])
                    if found is not None:
                        best_depth, best = depth, found
                        break
            else:
                depth, found = layer.deepest(key, limit)
                if depth > best_depth:
                    best_depth, best = depth, found
        return best if best is not None else self.default

    def key_where(self, path: Iterable[str | int]) -> Location:
        """Location of the key that introduces ``path`` (falls back to :meth:`where`)."""
        key = tuple(path)
        found = self._overrides.get(("#key", *key)) if self._overrides else None
        if found is None and (not self._masks or self._masked(key) == len(key)):
            for layer in reversed(self._layers):
                found = (layer.get(("#key", *key)) if isinstance(layer, dict)
                         else layer.key_of(key))
                if found is not None:
                    break
        return found or self.where(key)

    def update(self, other: SourceMap, prefix: Path_ = ()) -> None:
        """Put ``other``'s locations (moved under ``prefix``) over these."""
        if prefix or other._masks or other._overrides:
            moved_map: dict[Path_, Location] = {}
            for path, loc in other.locations.items():
                if path and path[0] == "#key":
                    moved = ("#key", *prefix, *path[1:])
                else:
                    moved = (*prefix, *path)
                moved_map[moved] = loc
            self.add_layer(moved_map)
            return
        for layer in other._layers:
            self.add_layer(layer)

    def relocate(self, path: Path_, value_map: SourceMap, where: Location) -> None:
        """Point ``path`` and everything under it at ``where`` (an override that set it)."""
        for located in [k for k in self._overrides if _under(k, path)]:
            del self._overrides[located]
        self._masks.append(path)
        key_path = ("#key", *path)
        self._overrides[path] = self._overrides[key_path] = where
        for located in value_map.locations:
            if located and located[0] == "#key":
                moved = ("#key", *path, *located[1:])
            else:
                moved = (*path, *located)
            self._overrides[moved] = where

    def set_override(self, path: Path_, where: Location) -> None:
        """Locate ``path`` and its key at ``where`` (a mapping an override created)."""
        key_path = ("#key", *path)
        self._overrides[path] = self._overrides[key_path] = where


def _under(located: Path_, path: Path_) -> bool:
    """Whether a located path (or ``("#key", *path)``) is ``path`` or lies under it."""
    inner = located[1:] if located and located[0] == "#key" else located
    return inner[:len(path)] == path


@dataclass
class RawSpec:
    """A spec as plain data, before the pydantic model checks it."""

    data: dict[str, Any]
    source: SourceMap
    path: Path | None


def zoo_dir() -> Path:
    return Path(str(resources.files("dgraph.specs")))


def zoo_names() -> list[str]:
    """Names of the specs that ship with dgraph (``dgraph validate kd``).

    Files whose names start with ``_`` are bases that zoo specs extend (``extends: _digits``):
    they ship with the zoo and resolve by name, but are not methods, so they are not listed.
    """
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
    raise _not_found(name_or_path)


def _not_found(name_or_path: str | Path) -> SpecError:
    names = zoo_names()
    hint = did_you_mean(Path(name_or_path).stem, names)
    return SpecError(
        f"spec '{name_or_path}' not found: no such file, and no zoo spec of that name",
        code="spec-not-found",
        expected="a .yaml/.yml/.json spec file, or a zoo spec name: " + (", ".join(names) or "-"),
        found=f"'{name_or_path}'",
        suggestion=hint or "check the path; `dgraph validate kd` validates the zoo spec 'kd'",
    )


_MAX_DEPTH = 64
_CORE = "tag:yaml.org,2002:"
# Explicit scalar tags a spec may carry: YAML's core schema (and !!seq, !!map on collections).
# Anything else (``!!python/...``, ``!!binary``, ``!!timestamp``, ``!custom``) is refused: a
# spec is plain data. A scalar that ruamel would read as another type without a tag (a date
# such as 2024-05-01, YAML 1.1's '=') stays text.
_SCALAR_TAGS = {f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null")}
# An explicitly tagged value must also read as that type without the tag ('!!int abc' does not).
_TAG_ACCEPTS = {
    f"{_CORE}int": {f"{_CORE}int"},
    f"{_CORE}float": {f"{_CORE}int", f"{_CORE}float"},
    f"{_CORE}bool": {f"{_CORE}bool"},
    f"{_CORE}null": {f"{_CORE}null"},
}
_MAX_INT_CHARS = 40  # an integer with more characters cannot fit a spec's 64-bit range anyway


def _tag_name(tag: Any) -> str | None:
    """The full name of a tag (ruamel gives a ``Tag`` or, for resolved ones, a ``str``)."""
    return tag if isinstance(tag, str) or tag is None else tag.value


def _tag_text(tag: Any) -> str:
    """A tag as written: ``!!python/object:os.system`` for YAML's own, ``!custom`` otherwise."""
    text = _tag_name(tag) or "!"
    return "!!" + text[len(_CORE):] if text.startswith(_CORE) else text


def _kind_of(node: Any) -> str:
    if isinstance(node, MappingNode):
        return "mapping"
    if isinstance(node, SequenceNode):
        return "list"
    return "value"


class _SpecComposer(Composer):
    """ruamel's composer with the checks a spec needs before anything is constructed.

    Composing builds YAML's node graph, in which an alias is the anchored node itself, so
    that this is where every limit can be enforced at the exact line and column: tags (only
    YAML's core ones), nesting depth, mapping keys that are collections, and how much the
    aliases expand the document (counted without expanding it). Nothing here calls a
    constructor, so no tag can make ruamel build an object.
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # a re-used anchor is legal YAML; the last one wins
        self.file = "<spec>"
        self.max_values = MIN_EXPANDED_VALUES
        self.max_chars = MIN_EXPANDED_CHARS
        self.values = 0  # values (and keys) after expanding aliases, in document order
        self.chars = 0  # characters of text after expanding aliases
        self.aliases = 0
        # Expanded (values, characters) of each anchored node, the only ones an alias can
        # name; and one running sum per collection being composed.
        self._anchored: dict[int, tuple[int, int]] = {}
        self._open: list[list[int]] = []

    def configure(self, file: str, size: int) -> None:
        self.file = file
        self.max_values = max(MIN_EXPANDED_VALUES, size)
        self.max_chars = max(MIN_EXPANDED_CHARS, 2 * size)

    def _where(self, mark: Any) -> Location:
        return Location(self.file, mark.line + 1, mark.column + 1) if mark else Location(
            self.file)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)  # ruamel reports an undefined alias
            size = self._anchored.get(id(node))
            if size is None:
                raise SpecError(
                    f"the alias *{event.anchor} refers to a value that contains it",
                    self._where(event.start_mark),
                    code="recursive-alias",
                    expected="an alias to a value that ends before the alias",
                    found=f"*{event.anchor} inside the value anchored as &{event.anchor} at "
                    f"{self._where(node.start_mark)}",
                    suggestion="a spec cannot contain itself; write the nested part out",
                )
            self.aliases += 1
            self._add(size, event.start_mark, alias=event.anchor)
            return node
        if self.depth > _MAX_DEPTH:
            raise SpecError(
                f"the spec nests deeper than {_MAX_DEPTH} levels",
                self._where(event.start_mark),
                code="too-deep",
                expected=f"at most {_MAX_DEPTH} nested mappings or lists",
                found=f"a value at depth {self.depth}",
                suggestion="check for unbalanced brackets",
            )
        key = isinstance(parent, MappingNode) and index is None
        self._check_tag(event, key)
        if isinstance(event, ScalarEvent):
            node = super().compose_node(parent, index)
            tag = _tag_name(node.tag)
            if tag == f"{_CORE}int" and len(node.value) > _MAX_INT_CHARS:
                raise SpecError(
                    "the number is too large",
                    self._where(node.start_mark),
                    code="number-too-large",
                    expected="an integer between -2**63 and 2**63 - 1",
                    found=f"an integer written with {len(node.value)} characters",
                    suggestion="write a smaller number",
                )
            if tag not in _SCALAR_TAGS and not (key and tag == f"{_CORE}merge"):
                node.tag = self.resolver.resolve(ScalarNode, node.value, (False, False))
            size = (1, len(node.value))
            self._add(size, event.start_mark)
        else:
            self._add((1, 0), event.start_mark)  # the collection itself, in its parent
            self._open.append([1, 0])
            node = super().compose_node(parent, index)
            values, chars = self._open.pop()
            size = (values, chars)
            if isinstance(node, MappingNode):
                for item_key, _ in node.value:
                    if not isinstance(item_key, ScalarNode):
                        raise SpecError(
                            f"a mapping key must be plain text, found a {_kind_of(item_key)}",
                            self._where(item_key.start_mark),
                            code="bad-key",
                            expected="a text key, e.g. 'nodes' or a node name",
                            found=f"a {_kind_of(item_key)} used as a key",
                            suggestion="check the brackets and colons: a '{' or '[' may have "
                            "ended up before a ':'",
                        )
            if self._open:  # its contents, now known, into its parent's size
                self._open[-1][0] += values - 1
                self._open[-1][1] += chars
        if node.anchor is not None:
            self._anchored[id(node)] = size
        return node

    def _check_tag(self, event: Any, key: bool) -> None:
        tag = getattr(event, "ctag", None)
        if tag is None or str(tag) == "!":
            return
        name = _tag_name(tag)
        if isinstance(event, ScalarEvent):
            allowed = name in _SCALAR_TAGS
        elif isinstance(event, SequenceStartEvent):
            allowed = name == f"{_CORE}seq"
        else:
            allowed = isinstance(event, MappingStartEvent) and name == f"{_CORE}map"
        what = ("text" if isinstance(event, ScalarEvent) else
                "a list" if isinstance(event, SequenceStartEvent) else "a mapping")
        if not allowed:
            value = f" {_short(event.value)}" if isinstance(event, ScalarEvent) else (
                f" on {what}")
            raise SpecError(
                f"YAML tag '{_tag_text(tag)}' is not allowed in a spec",
                self._where(event.start_mark),
                code="yaml-tag",
                expected="plain data: text, numbers, true/false, null, lists and mappings "
                "(explicit tags: only !!str, !!int, !!float, !!bool, !!null, !!seq, !!map)",
                found=f"{_tag_text(tag)}{value}",
                suggestion="remove the tag; a spec is plain data and never names Python "
                "objects",
            )
        if name in _TAG_ACCEPTS:
            implicit = _tag_name(self.resolver.resolve(ScalarNode, event.value, (True, False)))
            if implicit not in _TAG_ACCEPTS[name]:
                raise SpecError(
                    f"the value does not read as its tag '{_tag_text(tag)}'",
                    self._where(event.start_mark),
                    code="yaml-tag",
                    expected=f"a value of type {_tag_text(tag)}, e.g. "
                    + {"int": "3", "float": "0.5", "bool": "true", "null": "null"}[
                        name[len(_CORE):]],
                    found=f"{_tag_text(tag)} {_short(event.value)}",
                    suggestion="remove the tag or correct the value",
                )

    def _add(self, size: tuple[int, int], mark: Any, alias: str | None = None) -> None:
        """Count a value (or an alias's whole expansion) in document order."""
        if self._open:  # into the expanded size of the collection being composed
            self._open[-1][0] += size[0]
            self._open[-1][1] += size[1]
        self.values += size[0]
        self.chars += size[1]
        if self.values <= self.max_values and self.chars <= self.max_chars:
            return
        if self.values > self.max_values:
            what, limit, total = "values", self.max_values, self.values
        else:
            what, limit, total = "characters of text", self.max_chars, self.chars
        cause = f"the alias *{alias}" if alias is not None else "this value"
        raise SpecError(
            f"YAML aliases expand the spec to more than {limit:,} {what}",
            self._where(mark),
            code="alias-expansion",
            expected=f"at most {limit:,} {what} with every alias expanded (one value and two "
            f"characters per byte of the file, at least {MIN_EXPANDED_VALUES:,} values and "
            f"{MIN_EXPANDED_CHARS:,} characters)",
            found=f"{self.aliases:,} aliases so far; {cause} brings the total to {total:,} "
            f"{what}",
            suggestion="write repeated parts out or alias them fewer times; aliases that "
            "multiply a spec's size (a 'billion laughs' file) are refused",
        )


def _yaml(file: str = "<spec>", size: int = 0) -> YAML:
    """A round-trip (position-keeping) YAML reader with the spec's checks in its composer.

    Round-trip mode constructs only plain mappings, lists and scalars (it has no constructors
    for ``!!python/...`` tags), and :class:`_SpecComposer` refuses every non-core tag before
    construction starts.
    """
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    yaml.Composer = _SpecComposer
    yaml.composer.configure(file, size)
    return yaml


def _key_position(node: CommentedMap, key: Any) -> tuple[int, int, int, int]:
    """0-based (key line, key column, value line, value column) of ``key`` in ``node``.

    Keys brought in by a YAML merge key (``<<: *base``) have no position of their own in
    ``node``; they are located at the mapping itself.
    """
    position = (node.lc.data or {}).get(key)
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
            suggestion="nest less deeply; an alias repeats its value at the alias's own depth",
        )
    locations = smap._writable()
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
            key_path = ("#key", *child)
            locations[key_path] = Location(file, kline + 1, kcol + 1)
            # A nested mapping is best pointed at by its key; a scalar by its value.
            if isinstance(value, (CommentedMap, CommentedSeq)):
                locations[child] = Location(file, kline + 1, kcol + 1)
            else:
                locations[child] = Location(file, vline + 1, vcol + 1)
            out[key] = _plain(value, file, child, smap)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            position = (node.lc.data or {}).get(index)
            item = (*path, index)
            locations[item] = (
                Location(file, position[0] + 1, position[1] + 1) if position
                else smap.where(path))
            items.append(_plain(value, file, item, smap))
        return items
    if isinstance(node, TaggedScalar):
        # '!!str 3' (the composer refused every other tag before anything was constructed)
        if _tag_name(node.tag) == f"{_CORE}str":
            return str(node.value)
        raise SpecError(
            f"YAML tag '{_tag_text(node.tag)}' is not allowed in a spec",
            smap.where(path),
            code="yaml-tag",
            expected="plain data: text, numbers, true/false, null, lists and mappings",
            found=f"{_tag_text(node.tag)} {_short(node.value)}",
            suggestion="remove the tag; a spec is plain data and never names Python objects",
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


def parse_text(text: str, file: str, *, quote: bool = True) -> tuple[Any, SourceMap]:
    """Parse YAML or JSON text, returning plain data and its source map.

    With ``quote=False`` a syntax error gives its line and column but never the text there
    (for a file named by ``extends`` that may not be a spec at all).
    """
    smap = SourceMap(default=Location(file))
    plain = read_plain(text, file, max_depth=_MAX_DEPTH, max_int_chars=_MAX_INT_CHARS,
                       max_values=max(MIN_EXPANDED_VALUES, len(text)),
                       max_chars=max(MIN_EXPANDED_CHARS, 2 * len(text)))
    if plain is not None:  # plain data, read by libyaml (see dgraph.spec._libyaml)
        data, positions = plain
        smap.add_layer(positions)
        return data, smap
    try:
        document = _yaml(file, len(text)).load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        problem = (exc.problem or str(exc)).strip()
        context = f" ({exc.context.strip()})" if exc.context else ""
        notes = []
        if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            cm = exc.context_mark
            notes.append(f"{exc.context.strip() if quote else 'the construct'} that starts at "
                         f"{Location(file, cm.line + 1, cm.column + 1)}")
        if not quote:
            raise SpecError(
                "cannot parse the base spec: it is not well-formed YAML (or JSON)",
                loc,
                code="yaml-syntax",
                expected="well-formed YAML (or JSON)",
                found=f"a syntax error at line {mark.line + 1}, column {mark.column + 1}"
                if mark else "a syntax error",
                suggestion="open the file at this line; dgraph does not show the text of a "
                "file named by 'extends' that it cannot read as a spec",
                notes=notes,
            ) from None
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
            f"cannot parse the spec: {first}" if quote else "cannot parse the base spec",
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
        # The composer refuses collection keys and checks tagged values, so this is a value
        # that ruamel itself cannot build; its message does not quote the file.
        raise SpecError(
            f"cannot parse the spec: {exc}" if quote else "cannot parse the base spec",
            Location(file),
            code="yaml-syntax",
            expected="plain YAML (or JSON) values",
            found=type(exc).__name__,
            suggestion="check the values of the file",
        ) from None
    smap._writable()[()] = Location(file, 1, 1)
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


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _file_problem(path: Path) -> tuple[str, str, str] | None:
    """(message, found, hint) when ``path`` is not a regular spec-sized file, else None."""
    try:
        info = path.stat()
    except OSError as exc:
        return (f"cannot read the spec: {exc.strerror or exc}", type(exc).__name__,
                "check the path and its permissions")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a file")
        return ("cannot read the spec: it is not a regular file", kind,
                "name a .yaml, .yml or .json file")
    if info.st_size > MAX_SPEC_BYTES:
        return _too_large(f"{info.st_size:,} bytes")
    return None


def _too_large(found: str) -> tuple[str, str, str]:
    return (f"cannot read the spec: it is larger than {MAX_SPEC_BYTES // 2**20} MiB", found,
            f"a spec file holds at most {MAX_SPEC_BYTES // 2**20} MiB")


def _file_error(path: Path, problem: tuple[str, str, str], where: Location | None = None,
                *, code: str = "unreadable") -> SpecError:
    message, found, hint = problem
    return SpecError(message, where or Location(str(path)), code=code,
                     expected=f"a readable regular file of at most {MAX_SPEC_BYTES // 2**20} MiB",
                     found=found, suggestion=hint)


def _read(path: Path, *, base: bool = False) -> tuple[dict[str, Any], SourceMap]:
    """Read and parse a spec file; ``base``: a file named by ``extends``, never quoted."""
    problem = _file_problem(path)
    if problem is not None:
        raise _file_error(path, problem)
    try:
        with path.open("rb") as stream:
            # read(n) allocates n bytes first: ask for the file's size (and one byte more,
            # to see that it did not grow), not for the 64 MiB limit
            limit = min(os.fstat(stream.fileno()).st_size, MAX_SPEC_BYTES) + 1
            content = stream.read(limit)
            if len(content) == limit:
                content += stream.read(MAX_SPEC_BYTES + 1 - limit)
    except OSError as exc:
        problem = (f"cannot read the spec: {exc.strerror or exc}", type(exc).__name__,
                   "check the path and its permissions")
        raise _file_error(path, problem) from None
    if len(content) > MAX_SPEC_BYTES:  # it grew after the size check
        raise _file_error(path, _too_large(f"more than {MAX_SPEC_BYTES:,} bytes"))
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        column = exc.start - (content.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(
            "cannot read the spec: the file is not UTF-8 text",
            Location(str(path), line, column),
            code="unreadable",
            expected="a UTF-8 text file",
            found=f"byte 0x{content[exc.start]:02x}, which is not UTF-8 here",
            suggestion="save the spec as UTF-8",
        ) from None
    data, smap = parse_text(text, str(path), quote=not base)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kinds: dict[type, str] = {list: "a list", str: "text"}
        kind = kinds.get(type(data), f"a {type(data).__name__}")
        raise SpecError(
            f"a spec must be a mapping at the top level, found {type(data).__name__}",
            Location(str(path), 1, 1),
            code="not-a-mapping",
            expected="a mapping with keys such as 'dgraph', 'nodes' and 'updates'",
            found=f"{kind} (not shown: the file is named by 'extends')" if base
            else f"{type(data).__name__} {_short(data)}",
            suggestion="start the file with 'dgraph: 1' and 'nodes:'",
        )
    if base and data and not any(key in SPEC_KEYS for key in data):
        raise SpecError(
            "the file named by 'extends' is not a dgraph spec",
            Location(str(path), 1, 1),
            code="not-a-spec",
            expected="a spec: a mapping with at least one of the keys " + ", ".join(SPEC_KEYS),
            found=f"a mapping with {len(data)} other key{'s' if len(data) != 1 else ''} "
            "(not shown)",
            suggestion="'extends' names a base spec (a .yaml/.yml/.json spec file or a zoo "
            "spec name)",
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


def load_raw(path_or_name: str | Path) -> RawSpec:
    """Read a spec file (or zoo name), following ``extends`` to its base specs.

    ``extends`` names a zoo spec (``extends: kd``) or a regular ``.yaml``/``.yml``/``.json``
    file of at most 64 MiB, relative to the folder of the spec that names it (or absolute),
    or a list of them (``extends: [_toy2d, _toy2d_teacher]``), merged in order, each later one
    over the earlier ones, and the file over all. Problems inside a base spec are located in
    the base file; a file named by ``extends`` that does not parse, is not a mapping or has
    none of a spec's top-level keys is refused without quoting it. A cycle of ``extends`` is
    reported at the ``extends`` that closes it.
    """
    return _load(resolve_spec_path(path_or_name), (), [0])


def _load(path: Path, chain: tuple[Path, ...], loaded: list[int]) -> RawSpec:
    resolved = path.resolve()
    loaded[0] += 1
    data, smap = _read(path, base=bool(chain))
    base_ref = data.pop("extends", None)
    if base_ref is None:
        return RawSpec(data, smap, path)
    listed = isinstance(base_ref, list)
    refs = base_ref if listed else [base_ref]
    if listed and not refs:
        raise SpecError(
            "'extends' is an empty list",
            smap.where(("extends",)),
            code="bad-extends",
            expected="a base spec, or a list of at least one, e.g. 'extends: [_a, _b]'",
            found="[]",
            suggestion="name the base specs, or remove 'extends'",
        )
    data_so_far: dict[str, Any] = {}
    map_so_far = SourceMap(default=smap.default)
    for index, ref in enumerate(refs):
        where = smap.where(("extends", index) if listed else ("extends",))
        base = _load_base(ref, resolved, chain, loaded, where)
        data_so_far = _merge(data_so_far, base.data)
        map_so_far.update(base.source)
    map_so_far.update(smap)
    return RawSpec(_merge(data_so_far, data), map_so_far, path)


def _load_base(ref: Any, resolved: Path, chain: tuple[Path, ...], loaded: list[int],
               where: Location) -> RawSpec:
    """The base spec one ``extends`` entry names, read with its own bases."""
    if not isinstance(ref, str) or not ref.strip() or "\0" in ref:
        raise SpecError(
            "'extends' must name a spec file or zoo spec",
            where,
            code="bad-extends",
            expected="a spec file (relative to this one) or a zoo spec name, e.g. 'extends: kd'",
            found=f"{type(ref).__name__} {_short(ref)}",
            suggestion="write the base spec's file name as text",
        )
    chain = (*chain, resolved)
    if len(chain) > MAX_EXTENDS:
        raise SpecError(
            f"'extends' chains more than {MAX_EXTENDS} base specs",
            where,
            code="extends-too-deep",
            expected=f"at most {MAX_EXTENDS} specs in a chain of 'extends'",
            found=f"{len(chain)} specs, the first {chain[0]}",
            suggestion="merge some of the base specs into one",
        )
    if loaded[0] >= MAX_BASES:
        # Lists of bases that list bases grow exponentially; a spec reads a bounded number.
        raise SpecError(
            f"'extends' reads more than {MAX_BASES} base specs in all",
            where,
            code="extends-too-many",
            expected=f"at most {MAX_BASES} spec files read for one spec",
            found=f"{loaded[0]} read so far, from {chain[0]}",
            suggestion="merge some of the base specs into one",
        )
    base_path = _base_path(ref, resolved.parent, where)
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
    problem = _file_problem(base_path)
    if problem is not None:
        message, found, hint = problem
        raise SpecError(
            f"'extends' names no readable spec: {message.removeprefix('cannot read the spec: ')}",
            where,
            code="bad-extends",
            expected=f"a regular .yaml/.yml/.json file of at most {MAX_SPEC_BYTES // 2**20} MiB, "
            "or a zoo spec name",
            found=f"{ref!r}: {found}",
            suggestion=hint,
        )
    try:
        return _load(base_path.resolve(), chain, loaded)
    except SpecError as exc:
        exc.notes = (*exc.notes, f"read as the base spec named by 'extends' at {where}")
        raise


def _base_path(ref: str, folder: Path, where: Location) -> Path:
    """The file ``extends: ref`` names: a spec file by its suffix, else a zoo spec."""
    candidate = Path(ref)
    if candidate.suffix.lower() in SPEC_SUFFIXES:
        path = candidate if candidate.is_absolute() else folder / candidate
        if path.exists():
            return path
    elif (candidate.suffix == "" and len(candidate.parts) == 1
          and not candidate.is_absolute() and not (folder / candidate).exists()):
        for suffix in SPEC_SUFFIXES:
            zoo = zoo_dir() / f"{candidate.name}{suffix}"
            if zoo.exists():
                return zoo
    else:
        raise SpecError(
            "'extends' may name only a .yaml, .yml or .json file, or a zoo spec",
            where,
            code="bad-extends",
            expected="a spec file such as base.yaml (relative to this spec, or absolute), or a "
            "zoo spec name such as kd",
            found=repr(ref),
            suggestion="name the base spec's .yaml/.yml/.json file",
        )
    exc = _not_found(ref)
    raise SpecError(
        f"'extends' names no spec: {exc.message}",
        where,
        code=exc.code,
        expected=exc.expected,
        found=exc.found,
        suggestion=exc.suggestion,
    )


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
    overrides = list(overrides)
    if not overrides:
        return raw
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
        if len(parts) > _MAX_DEPTH:
            raise _bad_override(
                item,
                f"the override key '{_short(key)}' has more than {_MAX_DEPTH} parts",
                expected=f"at most {_MAX_DEPTH} names separated by dots",
                found=f"{len(parts)} parts",
                suggestion="set a value nearer the top and write the rest as its YAML value",
            )
        value, value_map = _parse_override_value(value_text, where, item)
        target: Any = data
        path: list[str | int] = []
        created: list[Path_] = []  # mappings this override creates on its way
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
                        created.append(tuple(path))
                    target = target[part]
            else:
                raise _bad_override(
                    item,
                    f"cannot set '{key}': '{prefix}' is not a mapping",
                    expected=f"a mapping or list at '{prefix}' to set '{part}' in",
                    found=f"{type(target).__name__} {_short(target)}",
                    suggestion=f"set '{prefix}' itself, e.g. --set {prefix}=...",
                )
        raw.source.relocate(tuple(path), value_map, Location(where))
        for made in created:
            raw.source.set_override(made, Location(where))
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


def read_spec_text(raw: Mapping[str, Any]) -> str:
    """The resolved spec as YAML text (written into each run directory)."""
    import io

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    # ruamel.yaml declares this setting only by its default, None (typed as None)
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    stream = io.StringIO()
    yaml.dump(dict(raw), stream)
    return stream.getvalue()
