"""The fast reader of plain specs: libyaml's C parser, with ruamel's meaning of every value.

Reading a spec with ruamel.yaml's pure-Python round-trip loader costs about a millisecond per
node, most of it scanning and parsing text. libyaml (the C library that PyYAML wraps) parses
the same text about twenty times faster, so a spec that is *plain* data is read from
libyaml's events here: mappings with text keys, lists and untagged scalars, no anchors,
aliases, merge keys, tags or directives, one document. Each plain scalar still gets its type
from ruamel's YAML 1.2 resolver and its value from ruamel's constructor, and every value
gets the position ruamel would give it, so both readers return the same data and the same
source map (tests/spec/test_fast_reader.py compares them on every zoo spec and on generated
documents).

Anything else — a feature above, a syntax error, a duplicate key, a value over a limit — makes
:func:`read_plain` return None and the caller reads the text with ruamel, whose composer
refuses or reports it with a located error. The fast path never decides that a spec is
wrong; it only reads the ones that are plainly right.
"""

from __future__ import annotations

from typing import Any

from dgraph.spec._positions import Positions

__all__ = ["read_plain"]

_CORE = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null"))
# Characters that YAML 1.1 (libyaml) reads as line breaks and YAML 1.2 (ruamel) does not:
# with one of them the two would number lines differently.
_BREAKS_11_ONLY = ("\x85", "\u2028", "\u2029")
# Implicit types the full reader treats specially (a merge key, YAML 1.1's '=' and the
# document markers): such a value sends the spec to it.
_REFUSED_AS_PLAIN = {f"{_CORE}{t}" for t in ("merge", "value", "yaml")}


class _NotPlain(Exception):
    """The document uses something only the full reader handles."""


def _libyaml() -> Any:
    try:
        from yaml import _yaml, events  # PyYAML's binding of libyaml
    except ImportError:
        return None
    return _yaml, events


class _Reader:
    def __init__(self, text: str, file: str, positions: Positions, max_depth: int,
                 max_int_chars: int, max_values: int, max_chars: int) -> None:
        from ruamel.yaml import YAML
        from ruamel.yaml.nodes import ScalarNode

        loaded = _libyaml()
        if loaded is None:
            raise _NotPlain
        binding, events = loaded
        self.parser = binding.CParser(text)
        self.ev = events
        self.positions = positions
        self.max_depth = max_depth
        self.max_int_chars = max_int_chars
        self.max_values = max_values
        self.max_chars = max_chars
        self.values = 0
        self.chars = 0
        ruamel = YAML(typ="rt", pure=True)
        # ruamel's implicit-type rules for YAML 1.2, by a value's first character
        self.rules = ruamel.resolver.versioned_resolver
        self.constructor = ruamel.constructor
        self.ScalarNode = ScalarNode
        self.typed: dict[str, Any] = {}  # plain scalars already read: many values repeat
        self.texts: dict[str, str] = {}  # quoted text already read (JSON's keys repeat)

    def next(self) -> Any:
        return self.parser.get_event()  # a syntax error raises: the full reader words it

    def resolve(self, text: str) -> str:
        """The tag ruamel's resolver gives a plain scalar (its ``resolve`` without the cost
        of looking up the YAML version for every value)."""
        for tag, regexp in (*self.rules.get(text[0] if text else "", ()),
                            *self.rules.get(None, ())):
            if regexp.match(text):
                return tag
        return _STR

    def document(self) -> Any:
        ev = self.ev
        if not isinstance(self.next(), ev.StreamStartEvent):
            raise _NotPlain
        start = self.next()
        if not isinstance(start, ev.DocumentStartEvent) or start.version or start.tags:
            raise _NotPlain  # an empty stream, %YAML or %TAG directives
        value = self.value(self.next(), 0)
        if not isinstance(self.next(), ev.DocumentEndEvent):
            raise _NotPlain
        if not isinstance(self.next(), ev.StreamEndEvent):
            raise _NotPlain  # several documents
        return value

    def _count(self, chars: int) -> None:
        self.values += 1
        self.chars += chars
        if self.values > self.max_values or self.chars > self.max_chars:
            raise _NotPlain

    def scalar(self, event: Any, *, key: bool) -> Any:
        if event.anchor is not None or event.tag is not None:
            raise _NotPlain
        text = event.value
        self.values += 1  # (_count, written out: once per value of the spec)
        self.chars += len(text)
        if self.values > self.max_values or self.chars > self.max_chars:
            raise _NotPlain
        if not event.implicit[0]:  # quoted, literal or folded: text (one copy of each)
            return self.texts.setdefault(text, text)
        if not text:
            # An empty value: ruamel places it at the next token, libyaml after the colon.
            raise _NotPlain
        if text in self.typed:
            value = self.typed[text]
        else:
            value = self.typed[text] = self.typed_value(text)
        if key and not isinstance(value, str):
            raise _NotPlain  # a key that is a number, true/false, null or '<<'
        return value

    def typed_value(self, text: str) -> Any:
        tag = self.resolve(text)
        if tag == _INT:
            if len(text) > self.max_int_chars:
                raise _NotPlain
            return int(self.constructor.construct_yaml_int(self.ScalarNode(tag, text)))
        if tag == _FLOAT:
            return float(self.constructor.construct_yaml_float(self.ScalarNode(tag, text)))
        if tag == _BOOL:
            return bool(self.constructor.construct_yaml_bool(self.ScalarNode(tag, text)))
        if tag == _NULL:
            return None
        if tag == _STR or tag not in _REFUSED_AS_PLAIN:
            return text  # text, or another implicit type (a date) that a spec keeps as text
        raise _NotPlain  # '<<' (a merge key), '=' and the like: the full reader decides

    def value(self, event: Any, depth: int) -> Any:
        ev = self.ev
        cls = event.__class__
        if cls is ev.ScalarEvent:
            return self.scalar(event, key=False)
        if depth >= self.max_depth:
            raise _NotPlain
        if cls is ev.MappingStartEvent:
            if event.anchor is not None or event.tag is not None:
                raise _NotPlain
            self._count(0)
            return self.mapping(depth + 1)
        if cls is ev.SequenceStartEvent:
            if event.anchor is not None or event.tag is not None:
                raise _NotPlain
            self._count(0)
            return self.sequence(depth + 1)
        raise _NotPlain  # an alias

    def mapping(self, depth: int) -> dict:
        ev = self.ev
        end_class, scalar_class = ev.MappingEndEvent, ev.ScalarEvent
        get_event, scalar = self.parser.get_event, self.scalar
        out: dict[str, Any] = {}
        keys, pos = self.positions.keys, self.positions.pos
        while True:
            event = get_event()
            if event.__class__ is end_class:
                return out
            if event.__class__ is not scalar_class:
                raise _NotPlain  # a collection as a key
            key = scalar(event, key=True)
            if key in out:
                raise _NotPlain  # a duplicate key: the full reader reports it
            mark = event.start_mark
            slot = len(keys)
            keys.append(key)
            pos.append((mark.line + 1) << 32 | (mark.column + 1))
            value_event = get_event()
            if value_event.__class__ is scalar_class:
                vmark = value_event.start_mark
                pos.append((vmark.line + 1) << 32 | (vmark.column + 1))
                out[key] = scalar(value_event, key=False)
            else:  # a nested mapping or list (pointed at by its key): its span, once known
                pos.append(0)
                out[key] = self.value(value_event, depth)
                pos[2 * slot + 1] = slot + 1 - len(keys)

    def sequence(self, depth: int) -> list:
        ev = self.ev
        items: list[Any] = []
        keys, pos = self.positions.keys, self.positions.pos
        while True:
            event = self.next()
            if event.__class__ is ev.SequenceEndEvent:
                return items
            mark = event.start_mark
            slot = len(keys)
            keys.append(None)
            pos.append((mark.line + 1) << 32 | (mark.column + 1))
            pos.append(0)
            items.append(self.value(event, depth))
            if event.__class__ is not ev.ScalarEvent:
                pos[2 * slot + 1] = slot + 1 - len(keys)


def read_plain(text: str, file: str, *, max_depth: int, max_int_chars: int, max_values: int,
               max_chars: int) -> tuple[Any, Positions] | None:
    """``(data, positions)`` of a plain spec, or None when the full reader must read it.

    ``positions`` (:class:`~dgraph.spec._positions.Positions`) locates each value (and each
    mapping key) where ruamel's positions put it.
    """
    if any(c in text for c in _BREAKS_11_ONLY):
        return None
    positions = Positions(file)
    try:
        data = _Reader(text, file, positions, max_depth, max_int_chars, max_values,
                       max_chars).document()
    except _NotPlain:
        return None
    except Exception:  # noqa: BLE001 - libyaml's syntax errors: ruamel words them, located
        return None
    return data, positions
