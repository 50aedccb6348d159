"""The search space of a sweep, read and checked before any trial runs.

Two sources:

* ``--grid key=v1,v2`` (repeatable): every combination is a trial. The key is a ``--set`` path;
  the values are YAML, separated by commas outside brackets and quotes
  (``--grid nodes.student.params.hidden=[16],[32, 16]``).
* a space file (YAML or JSON): data, one entry per ``--set`` path::

      nodes.kd.params.temperature: {low: 1.0, high: 8.0}
      updates.main.optimizer.lr: {low: 0.0003, high: 0.01, log: true}
      train.steps: {low: 100, high: 400, step: 100}     # integers: both bounds whole numbers
      nodes.student.params.hidden: {choices: [[16], [24], [32]]}

Every problem is a :class:`SweepError` located at the file's line and column (or at the
``<--grid ...>`` item), with what was expected, what was found and a hint.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgraph.errors import Location, SpecError, did_you_mean

__all__ = ["Param", "SweepError", "check_keys", "parse_grid", "parse_space"]

_RANGE_FIELDS = ("low", "high", "log", "step")
_FIELDS = (*_RANGE_FIELDS, "choices")
_SPACE_EXAMPLE = ("e.g. nodes.kd.params.temperature: {low: 1.0, high: 8.0} or "
                  "nodes.student.params.hidden: {choices: [[16], [32]]}")


class SweepError(SpecError):
    """A sweep cannot run: a bad ``--grid`` item or space file, a key the spec does not have,
    an output folder that holds another sweep; located like a spec problem."""

    def __init__(self, message: str, location: Location | None = None, *,
                 code: str = "sweep-error", **kwargs: Any) -> None:
        super().__init__(message, location, code=code, **kwargs)


@dataclass(frozen=True)
class Param:
    """One searched ``--set`` path: a list of values (grid, choices) or a numeric range."""

    key: str
    where: Location
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        """A range over whole numbers: both bounds (and the step) are integers."""
        return self.choices is None and all(
            isinstance(v, int) and not isinstance(v, bool)
            for v in (self.low, self.high, *(() if self.step is None else (self.step,))))

    def extremes(self) -> list[Any]:
        """The values every trial's spec is checked at before the sweep starts."""
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high]

    def override(self, value: Any) -> str:
        """``key=value`` as ``--set`` takes it (the value as JSON, which is YAML)."""
        return f"{self.key}={value_text(value)}"


def value_text(value: Any) -> str:
    """A value as JSON text: what optuna stores for a choice, and what ``--set`` parses."""
    return json.dumps(value, sort_keys=True)


def _short(value: Any) -> str:
    text = value_text(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- --grid key=v1,v2 --------------------------------------------------------------------------
def _split_values(text: str) -> list[str]:
    """``text`` split at the commas outside brackets, braces and quotes."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_grid(items: list[str]) -> list[Param]:
    """The ``--grid key=v1,v2`` items as parameters with their lists of values."""
    from dgraph.spec.source import parse_text

    params: list[Param] = []
    for item in items:
        where = Location(f"<--grid {item}>")
        key, sep, values_text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(
                "a --grid item must look like key.path=value1,value2", where, code="bad-grid",
                expected="a --set path, '=', then comma-separated YAML values",
                found=repr(item) + (" (no '=')" if not sep else " (no key before '=')"),
                suggestion="e.g. --grid nodes.kd.params.temperature=2,4,8")
        values: list[Any] = []
        for number, text in enumerate(_split_values(values_text), start=1):
            if not text.strip():
                raise SweepError(
                    f"value {number} of --grid '{key}' is empty", where, code="bad-grid",
                    expected="comma-separated YAML values, e.g. 2,4,8 or [16],[32]",
                    found=repr(values_text),
                    suggestion="remove the doubled, leading or trailing ','")
            try:
                value, _ = parse_text(text, str(where))
            except SpecError as exc:
                raise SweepError(
                    f"value {number} of --grid '{key}' is not a YAML value: "
                    + exc.message.removeprefix("cannot parse the spec: "), where,
                    code="bad-grid", expected="a YAML value such as 3, 0.5, true, relu, [16]",
                    found=repr(text.strip()),
                    suggestion="quote text that YAML would misread") from None
            if value in values:
                raise SweepError(
                    f"--grid '{key}' lists the value {_short(value)} twice", where,
                    code="bad-grid", expected="distinct values", found=repr(values_text),
                    suggestion="remove the repeated value")
            values.append(value)
        _check_no_repeat(params, key, where)
        params.append(Param(key=key, where=where, choices=tuple(values)))
    if not params:
        raise SweepError("a grid sweep needs at least one --grid key=v1,v2", code="bad-grid")
    return params


def _check_no_repeat(params: list[Param], key: str, where: Location) -> None:
    for earlier in params:
        if earlier.key == key:
            raise SweepError(
                f"the key '{key}' is searched twice", where, code="repeated-key",
                expected="each --set path once", found=f"also at {earlier.where}",
                suggestion="merge the two into one entry")


# -- the space file ----------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def parse_space(path: str | Path) -> list[Param]:
    """A space file's entries as parameters (ranges or choices), every one checked."""
    from dgraph.spec.source import parse_text

    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError(f"the space file {path} does not exist", Location(file),
                         code="not-found", expected="a YAML or JSON file of search ranges",
                         found="no such file",
                         suggestion="check the path given to --search") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SweepError(f"cannot read the space file {path}: {reason}", Location(file),
                         code="unreadable", expected="a readable UTF-8 text file",
                         found=type(exc).__name__, suggestion="check the file") from None
    try:
        data, smap = parse_text(text, file)
    except SpecError as exc:
        raise SweepError(exc.message.replace("the spec", "the space file"), exc.location,
                         code=exc.code, expected=exc.expected, found=exc.found,
                         suggestion=exc.suggestion) from None
    if not isinstance(data, dict) or not data:
        raise SweepError(
            "the space file must be a mapping from --set paths to ranges or choices",
            smap.where(()), code="bad-space", expected="a non-empty mapping",
            found=_kind(data), suggestion=_SPACE_EXAMPLE)
    params: list[Param] = []
    for key, entry in data.items():
        key_where = smap.key_where((key,))
        if not isinstance(key, str) or not key.strip():
            raise SweepError("a key of the space file is not a --set path", key_where,
                             code="bad-space", expected="a dotted path such as train.steps",
                             found=_short(key), suggestion=_SPACE_EXAMPLE)
        params.append(_space_entry(key, entry, smap, key_where))
        _check_no_repeat(params[:-1], key, key_where)
    return params


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping" + ("" if value else " with no entries")
    if isinstance(value, list):
        return f"a list {_short(value)}"
    return f"{type(value).__name__} {_short(value)}" if value is not None else "nothing"


def _space_entry(key: str, entry: Any, smap: Any, key_where: Location) -> Param:
    def at(field: str) -> Location:
        return smap.where((key, field))

    if not isinstance(entry, dict):
        raise SweepError(
            f"'{key}': an entry must be a range or a list of choices", smap.where((key,)),
            code="bad-space", expected="{low: ..., high: ...[, log: true][, step: ...]} or "
            "{choices: [...]}", found=_kind(entry), suggestion=_SPACE_EXAMPLE)
    for field in entry:
        if field not in _FIELDS:
            hint = did_you_mean(str(field), _FIELDS)
            raise SweepError(
                f"'{key}': unknown field '{field}'", smap.key_where((key, field)),
                code="bad-space", expected=f"one of: {', '.join(_FIELDS)}",
                found=f"{field}: {_short(entry[field])}",
                suggestion=hint or "a range has low, high (log, step); a list has choices")
    if "choices" in entry:
        extra = [f for f in _RANGE_FIELDS if f in entry]
        if extra:
            raise SweepError(
                f"'{key}': choices and a range together", smap.key_where((key, extra[0])),
                code="bad-space", expected="either {choices: [...]} or {low, high, ...}",
                found=f"choices and {', '.join(extra)}", suggestion="keep one of the two")
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"'{key}': choices must be a non-empty list", at("choices"),
                             code="bad-space", expected="a list such as [16, 32] or [[16], "
                             "[32, 16]]", found=_kind(choices),
                             suggestion="write the values in brackets")
        texts = [value_text(c) for c in choices]
        repeated = next((c for i, c in enumerate(choices) if texts[i] in texts[:i]), None)
        if repeated is not None:
            raise SweepError(f"'{key}': the choice {_short(repeated)} is listed twice",
                             at("choices"), code="bad-space", expected="distinct choices",
                             found=_short(choices), suggestion="remove the repeated choice")
        return Param(key=key, where=key_where, choices=tuple(choices))
    for field in ("low", "high"):
        if field not in entry:
            raise SweepError(
                f"'{key}': a range needs '{field}'", smap.where((key,)), code="bad-space",
                expected="{low: ..., high: ...} (numbers) or {choices: [...]}",
                found=f"fields {', '.join(map(str, entry)) or 'none'}",
                suggestion=f"add {field}: <number>")
        if not _number(entry[field]):
            raise SweepError(f"'{key}': {field} must be a finite number", at(field),
                             code="bad-space", expected="a number such as 0.001 or 100",
                             found=_kind(entry[field]), suggestion="write a plain number")
    low, high = entry["low"], entry["high"]
    if not low < high:
        raise SweepError(f"'{key}': low must be below high", at("high"), code="bad-space",
                         expected=f"high > low ({_short(low)})", found=f"high {_short(high)}",
                         suggestion="swap the bounds, or list one value as {choices: [v]}")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise SweepError(f"'{key}': log must be true or false", at("log"), code="bad-space",
                         expected="true or false", found=_kind(log),
                         suggestion="log: true searches evenly in log space")
    if log and low <= 0:
        raise SweepError(f"'{key}': a log range needs low > 0", at("low"), code="bad-space",
                         expected="low > 0 with log: true", found=f"low {_short(low)}",
                         suggestion="use a small positive low, e.g. 1e-5")
    step = entry.get("step")
    if step is not None:
        if not _number(step) or step <= 0:
            raise SweepError(f"'{key}': step must be a positive number", at("step"),
                             code="bad-space", expected="a number > 0",
                             found=_kind(step), suggestion="e.g. step: 100")
        if log:
            raise SweepError(f"'{key}': step and log together", at("step"), code="bad-space",
                             expected="either step (an even grid) or log: true",
                             found=f"step {_short(step)} and log: true",
                             suggestion="remove one of the two")
    return Param(key=key, where=key_where, low=low, high=high, log=log, step=step)


# -- the keys against the spec -----------------------------------------------------------------
def check_keys(params: list[Param], data: dict[str, Any], spec_name: str) -> None:
    """Every key's path leads through the resolved spec ``data`` to an existing mapping or
    list (the last part may be new: a parameter left at its component's default; the
    validator judges it with each trial's spec)."""
    for param in params:
        parts = param.key.split(".")
        target: Any = data
        for depth, part in enumerate(parts):
            prefix = ".".join(parts[:depth]) or "the spec"
            last = depth == len(parts) - 1
            if isinstance(target, dict):
                if part in target:
                    target = target[part]
                    continue
                if last:
                    break
                names = [str(k) for k in target]
                hint = did_you_mean(part, names)
                raise SweepError(
                    f"the key '{param.key}' names nothing in spec '{spec_name}': "
                    f"'{prefix}' has no '{part}'", param.where, code="unknown-key",
                    expected=f"one of: {', '.join(names) or 'no entries'}",
                    found=repr(part),
                    suggestion=hint or f"`dgraph validate {spec_name}` and the spec's "
                    "spec.resolved.yaml show its paths")
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
                continue
            raise SweepError(
                f"the key '{param.key}' names nothing in spec '{spec_name}': '{prefix}' is "
                f"{_kind(target)}", param.where, code="unknown-key",
                expected=f"a mapping or list at '{prefix}'" if not isinstance(target, list)
                else f"an index 0..{len(target) - 1} of '{prefix}'",
                found=repr(part), suggestion=f"search '{prefix}' itself")
