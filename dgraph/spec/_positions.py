"""The positions of one parsed spec file, stored compactly: two 64-bit integers per value.

A spec of a million nodes has some ten million located values. Keeping each as a dict entry
from its path tuple to a :class:`~dgraph.errors.Location` costs about 200 bytes a value; here
every mapping entry or list item is one *slot* of a flat ``array('q')`` pair and one
reference to its key (the key string the data itself holds), about 26 bytes, and a
:class:`~dgraph.errors.Location` is made only when one is asked for.

Slots are in document order (pre-order). Slot ``i`` holds ``pos[2i]`` (the key's position in
a mapping, the item's in a list) and ``pos[2i + 1]`` (the value's position for a text or
number value in a mapping; for a nested mapping or list, minus the number of slots it spans,
its entries and theirs, which follow at once). A position is ``line << 32 | column``, both
1-based, so every position is positive. ``keys[i]`` is the mapping key, or None for a list
item. Finding a value walks its path one level at a time, skipping whole nested values by
their span; a mapping or list with more than a few entries gets an index (key -> slot) the
first time it is searched, so that a lookup stays constant-time in the mapping of a
million nodes.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

from dgraph.errors import Location

__all__ = ["Positions", "pack"]

_SHIFT = 32
_LOW = (1 << _SHIFT) - 1
_SCAN = 16  # entries searched one by one before a container gets an index


def pack(line: int, column: int) -> int:
    """A 1-based (line, column) as one positive integer."""
    return line << _SHIFT | column


class Positions:
    """Where every value of one file is, by its path (see the module's docstring)."""

    __slots__ = ("file", "pos", "keys", "_index")

    def __init__(self, file: str) -> None:
        self.file = file
        self.pos = array("q")
        self.keys: list[Any] = []
        self._index: dict[int, Any] = {}  # first slot of a large container -> its index

    def __len__(self) -> int:
        return len(self.keys)

    def _loc(self, packed: int) -> Location:
        return Location(self.file, packed >> _SHIFT, packed & _LOW)

    def _span(self, slot: int) -> int:
        second = self.pos[2 * slot + 1]
        return -second if second <= 0 else 0

    def _find(self, first: int, end: int, part: Any) -> int:
        """The slot of entry ``part`` (a key, or a list index) of the container whose
        entries lie in slots ``first`` to ``end`` (exclusive), or -1."""
        if first >= end:
            return -1
        index = self._index.get(first)
        if index is not None:
            if isinstance(index, dict):
                return index.get(part, -1) if isinstance(part, str) else -1
            if isinstance(part, int) and not isinstance(part, bool) and 0 <= part < len(index):
                return index[part]
            return -1
        keys = self.keys
        is_list = keys[first] is None
        if is_list and (not isinstance(part, int) or isinstance(part, bool) or part < 0):
            return -1
        if not is_list and not isinstance(part, str):
            return -1
        slot, count = first, 0
        while slot < end:
            if (part == count) if is_list else (keys[slot] == part):
                return slot
            count += 1
            if count > _SCAN:
                self._build_index(first, end, is_list)
                return self._find(first, end, part)
            slot += 1 + self._span(slot)
        return -1

    def _build_index(self, first: int, end: int, is_list: bool) -> None:
        slots = array("q")
        named: dict[str, int] = {}
        keys, slot = self.keys, first
        while slot < end:
            if is_list:
                slots.append(slot)
            else:
                named.setdefault(keys[slot], slot)
            slot += 1 + self._span(slot)
        self._index[first] = slots if is_list else named

    def deepest(self, path: tuple, limit: int) -> tuple[int, Location | None]:
        """``(depth, location)`` of the longest located prefix of ``path`` no longer than
        ``limit`` parts (the file itself, depth 0, is at 1:1)."""
        first, end = 0, len(self.keys)
        packed = pack(1, 1)
        depth = 0
        pos, keys = self.pos, self.keys
        for part in path[:limit]:
            slot = self._find(first, end, part)
            if slot < 0:
                break
            second = pos[2 * slot + 1]
            in_mapping = keys[slot] is not None
            packed = second if (in_mapping and second > 0) else pos[2 * slot]
            depth += 1
            first = slot + 1
            end = first + (-second if second <= 0 else 0)
        return depth, self._loc(packed)

    def key_of(self, path: tuple) -> Location | None:
        """The position of the key that introduces ``path`` (None: not a mapping entry)."""
        if not path:
            return None
        first, end = 0, len(self.keys)
        slot = -1
        for part in path:
            slot = self._find(first, end, part)
            if slot < 0:
                return None
            first = slot + 1
            end = first + self._span(slot)
        if self.keys[slot] is None:
            return None
        return self._loc(self.pos[2 * slot])

    def items(self) -> Iterator[tuple[tuple, Location]]:
        """Every located path, as the path -> Location map of the full reader gives it
        (``("#key", *path)`` for the keys of mappings)."""
        yield (), self._loc(pack(1, 1))
        stack: list[tuple[tuple, int, int]] = []  # (path, end slot, next list index)
        path: tuple = ()
        end, index = len(self.keys), 0
        pos, keys = self.pos, self.keys
        slot = 0
        while True:
            while slot >= end and stack:
                path, end, index = stack.pop()
            if slot >= end:
                return
            key = keys[slot]
            second = pos[2 * slot + 1]
            if key is None:
                child = (*path, index)
                index += 1
                yield child, self._loc(pos[2 * slot])
            else:
                child = (*path, key)
                yield ("#key", *child), self._loc(pos[2 * slot])
                yield child, self._loc(second if second > 0 else pos[2 * slot])
            slot += 1
            if second < 0:  # a nested mapping or list: its slots follow
                stack.append((path, end, index))
                path, end, index = child, slot - second, 0
