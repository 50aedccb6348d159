"""The one exception family of dgraph, and the located problem records validation collects.

Every error a user can cause derives from :class:`DgraphError`. Validation never stops at the
first problem: it gathers :class:`Problem` records and raises one :class:`ValidationError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

__all__ = [
    "CheckpointError",
    "DgraphError",
    "ExportError",
    "Location",
    "NonFiniteError",
    "PluginError",
    "Problem",
    "RegistryError",
    "ComponentRuntimeError",
    "SpecError",
    "ValidationError",
    "did_you_mean",
]


@dataclass(frozen=True, slots=True)
class Location:
    """Where a value came from: a file (or ``<--set ...>``), 1-based line and column."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located as precisely as dgraph can."""

    code: str
    message: str
    location: Location | None = None
    node: str | None = None
    port: str | None = None
    expected: str | None = None
    found: str | None = None
    suggestion: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    severity: str = "error"

    def render(self) -> str:
        where = f"{self.location}: " if self.location else ""
        subject = ""
        if self.node is not None:
            subject = f"node '{self.node}'"
            if self.port is not None:
                subject += f", port '{self.port}'"
            subject += ": "
        lines = [f"{where}{self.severity}[{self.code}]: {subject}{self.message}"]
        if self.expected is not None:
            lines.append(f"    expected: {self.expected}")
        if self.found is not None:
            lines.append(f"    found:    {self.found}")
        lines.extend(f"    note: {n}" for n in self.notes)
        if self.suggestion:
            lines.append(f"    hint: {self.suggestion}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        data = asdict(self)
        data["location"] = (
            None
            if self.location is None
            else {"file": self.location.file, "line": self.location.line,
                  "column": self.location.column}
        )
        data["notes"] = list(self.notes)
        return data


class DgraphError(Exception):
    """Base class of every error dgraph raises on purpose."""


class SpecError(DgraphError):
    """A spec file cannot be read or parsed (missing file, bad YAML, bad override).

    ``str()`` is ``"file:line:column: message"`` (plus ``"; suggestion"`` when one is given);
    :meth:`problem` gives the same facts as a :class:`Problem`, which ``dgraph validate``
    renders like every other problem (with what was expected, what was found and a hint).
    """

    def __init__(
        self,
        message: str,
        location: Location | None = None,
        *,
        code: str = "spec-error",
        expected: str | None = None,
        found: str | None = None,
        suggestion: str | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        self.location = location
        self.message = message
        self.code = code
        self.expected = expected
        self.found = found
        self.suggestion = suggestion
        self.notes = tuple(notes)
        text = f"{location}: {message}" if location else message
        if suggestion:
            text += f"; {suggestion}"
        super().__init__(text)

    def problem(self) -> Problem:
        """This error as a located :class:`Problem`."""
        return Problem(
            code=self.code,
            message=self.message,
            location=self.location,
            expected=self.expected,
            found=self.found,
            suggestion=self.suggestion,
            notes=self.notes,
        )


class ValidationError(DgraphError):
    """A spec was read but is not a valid graph; carries every problem found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(
            problems,
            key=lambda p: (
                p.location.file if p.location else "",
                p.location.line if p.location else 0,
                p.location.column if p.location else 0,
                p.code,
                p.message,
            ),
        )
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''} found in the spec:"
        super().__init__("\n".join([header, *(p.render() for p in self.problems)]))


class RegistryError(DgraphError):
    """A component type is unknown, registered twice, or badly declared."""


class PluginError(DgraphError):
    """A third-party plug-in could not be loaded."""


class ComponentRuntimeError(DgraphError):
    """A component raised while the compiled graph ran; names the node and its kind.

    ``node`` (and ``port``, when one input or output is to blame) say where, for callers
    that report the failure in their own form.
    """

    def __init__(self, message: str, *, node: str | None = None,
                 port: str | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.port = port


class NonFiniteError(DgraphError):
    """A loss became NaN or infinite; names the first node whose output did."""


class CheckpointError(DgraphError):
    """A checkpoint or run directory is missing, corrupt, or does not match the spec."""


class ExportError(DgraphError):
    """A trained node could not be exported or the export does not match the model."""


def did_you_mean(name: str, candidates: Iterable[str], *, n: int = 3) -> str | None:
    """A 'did you mean' suggestion for a misspelled name, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=n, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
