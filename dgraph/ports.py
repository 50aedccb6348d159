"""Typed ports: a semantic type plus a symbolic shape, and the unifier that checks them.

A shape is written ``"B, C"``, ``"B, {num_classes}"`` (a component parameter), ``"B, 3, H, W"``
or ``"B, ..."`` (any trailing dimensions). Symbols are local to one node; edges unify them.
Like a symbol, ``...`` stands for the same dimensions in every input port of one node: the
two inputs of ``feature_mse`` (``"B, ..."`` each) must have equal shapes.
No torch here: static validation runs without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SEMANTIC_TYPES",
    "Dim",
    "Port",
    "Shape",
    "ShapeUnifier",
    "carries_grad",
    "is_subtype",
    "parse_shape",
]

# type -> parent. An output may feed an input of its own type or of any ancestor.
SEMANTIC_TYPES: dict[str, str | None] = {
    "Tensor": None,
    "Features": "Tensor",
    "Images": "Features",
    "Embeddings": "Features",
    "Latents": "Features",
    "Logits": "Tensor",
    "LogProbs": "Tensor",
    "Probs": "Tensor",
    "Labels": "Tensor",
    "Tokens": "Tensor",
    "Mask": "Tensor",
    "Noise": "Tensor",
    "Timesteps": "Tensor",
    "Observations": "Tensor",
    "Actions": "Tensor",
    "Rewards": "Tensor",
    "Scalar": "Tensor",
}

# Integer-valued or boolean data: no gradient can flow through a port of these types.
_NO_GRAD_TYPES = frozenset({"Labels", "Tokens", "Mask", "Timesteps"})


def is_subtype(found: str, expected: str) -> bool:
    """True when a ``found`` output may feed an ``expected`` input."""
    current: str | None = found
    while current is not None:
        if current == expected:
            return True
        current = SEMANTIC_TYPES.get(current)
    return False


def carries_grad(semantic_type: str) -> bool:
    return semantic_type not in _NO_GRAD_TYPES


@dataclass(frozen=True)
class Dim:
    """One dimension: a symbol (``B``), a size (``10``), or ``...`` (any number of dims)."""

    symbol: str | None = None
    size: int | None = None
    ellipsis: bool = False
    # The parameter a size was read from (``num_classes``, ``hidden[-1]``), for messages.
    param: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        if self.ellipsis:
            return "..."
        if self.size is not None:
            return str(self.size)
        return str(self.symbol)


Shape = tuple[Dim, ...]
_PARAM_REF = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(\[(-?\d+)\])?\}$")
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_shape(text: str | None, params: Mapping[str, Any] | None = None) -> Shape | None:
    """Parse ``"B, {num_classes}"`` into dims, substituting parameters. ``None`` = unknown."""
    if text is None or text.strip() in ("", "*"):
        return None
    dims: list[Dim] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "...":
            dims.append(Dim(ellipsis=True))
            continue
        if part.isdigit():
            dims.append(Dim(size=int(part)))
            continue
        ref = _PARAM_REF.match(part)
        if ref:
            name, _, index = ref.groups()
            value = (params or {}).get(name)
            if index is not None:
                try:
                    value = value[int(index)]  # type: ignore[index]
                except (TypeError, IndexError, KeyError):
                    value = None
            if isinstance(value, bool) or not isinstance(value, int):
                # The parameter is missing or not a size: leave the dim free.
                dims.append(Dim(symbol=f"{name}"))
            else:
                label = name if index is None else f"{name}[{index}]"
                dims.append(Dim(size=value, param=label))
            continue
        if _SYMBOL.match(part):
            dims.append(Dim(symbol=part))
            continue
        raise ValueError(f"bad dimension '{part}' in shape '{text}'")
    return tuple(dims)


def format_shape(shape: Shape | None) -> str:
    return "[*]" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass(frozen=True)
class Port:
    """A component's input or output: semantic type, symbolic shape, and documentation."""

    type: str = "Tensor"
    shape: str | None = None
    doc: str = ""
    optional: bool = False
    # How to reconcile a size mismatch at this port, when a projector is not the answer
    # (a vocabulary, for instance); replaces the generic projector hint.
    mismatch_hint: str = ""
    # For an output: the input port whose semantic type it takes (a generic op's ``y`` has
    # the type of whatever feeds its ``x``); ``type`` is then the fallback when it is unfed.
    like: str | None = None

    def describe(self, params: Mapping[str, Any] | None = None) -> str:
        return f"{self.type}{format_shape(parse_shape(self.shape, params))}"


@dataclass
class _Var:
    size: int | None = None
    origin: str = ""
    param: tuple[str, str] | None = None  # (node, parameter) the size was read from


@dataclass
class ShapeUnifier:
    """Union-find over (node, symbol) dimension variables, each bound to at most one size.

    ``bind`` ties a port's dims to variables; conflicting sizes are returned as messages that
    name both origins, so the caller can attach them to the right node and port.
    """

    parent: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    values: dict[tuple[str, str], _Var] = field(default_factory=dict)

    def _find(self, key: tuple[str, str]) -> tuple[str, str]:
        self.parent.setdefault(key, key)
        self.values.setdefault(key, _Var())
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def size_of(self, scope: str, symbol: str) -> int | None:
        return self.values[self._find((scope, symbol))].size

    def union(self, a: tuple[str, str], b: tuple[str, str]) -> tuple[_Var, _Var] | None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return None
        va, vb = self.values[ra], self.values[rb]
        if va.size is not None and vb.size is not None and va.size != vb.size:
            return va, vb
        self.parent[rb] = ra
        if va.size is None:
            self.values[ra] = vb
        return None

    def assign(self, key: tuple[str, str], size: int, origin: str,
               param: tuple[str, str] | None = None) -> _Var | None:
        root = self._find(key)
        var = self.values[root]
        if var.size is None:
            self.values[root] = _Var(size, origin, param)
            return None
        if var.size != size:
            return var
        return None
