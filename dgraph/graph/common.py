"""What every graph pass shares: a problem collector located through the spec's source map."""

from __future__ import annotations

from collections.abc import Iterable

from dgraph.errors import Problem, did_you_mean
from dgraph.spec.model import Spec

__all__ = ["Collector", "close", "names"]


def close(name: str, candidates: Iterable[str]) -> str | None:
    return did_you_mean(name, candidates)


def names(candidates: Iterable[str], limit: int = 8) -> str:
    """``a, b, c`` (at most ``limit`` names, then ``...``), or ``-`` when there are none."""
    items = list(candidates)
    shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
    return shown or "-"


class Collector:
    """Problems of one pass, each located at a path of the spec (or its key)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.src = spec.source
        self.problems: list[Problem] = []

    def add(self, code: str, message: str, path: tuple, *, key: bool = False, **kw) -> None:
        loc = self.src.key_where(path) if key else self.src.where(path)
        self.problems.append(Problem(code=code, message=message, location=loc, **kw))
