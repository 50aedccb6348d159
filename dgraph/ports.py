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
    "ShapeError",
    "ShapeUnifier",
    "broadcast_shapes",
    "carries_grad",
    "fresh_symbol",
    "is_subtype",
    "parse_shape",
    "resolve_dim",
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


class ShapeError(ValueError):
    """Input shapes that a component cannot combine (raised by ``infer_output_shapes``).

    ``expected`` says what would combine and ``hint`` how to get there; validation shows
    them with the shapes of the node's inputs. A plain ``ValueError`` works too.
    """

    def __init__(self, message: str, *, expected: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.hint = hint


def _plain(dim: Dim) -> Dim:
    """``dim`` without the parameter it was read from (that belongs to another node)."""
    return dim if dim.param is None else Dim(dim.symbol, dim.size, dim.ellipsis)


def broadcast_shapes(*shapes: Shape | None, names: tuple[str, ...] | None = None
                     ) -> Shape | None:
    """The shape of an elementwise result, by numpy/torch broadcasting over symbolic dims.

    Dimensions are aligned from the right; a missing one counts as 1. In each position:
    equal sizes or symbols match; a size 1 takes the other side; a symbol against a size
    greater than 1 gives the size, and two different symbols give the first (both are
    assumed equal: broadcasting is optimistic, the dry run and the runtime check the rest).
    Only two different sizes, both greater than 1, do not combine: :class:`ShapeError`,
    naming the operands by ``names`` when given.

    ``None`` when any shape is unknown (``None``), or when a ``...`` leaves the alignment
    open (unless every shape that is not a scalar is the same).
    """
    if any(shape is None for shape in shapes):
        return None
    known = [s for s in shapes if s is not None]
    if any(d.ellipsis for shape in known for d in shape):
        tensors = {tuple(_plain(d) for d in shape) for shape in known if shape}
        return next(iter(tensors)) if len(tensors) == 1 else (() if not tensors else None)
    rank = max((len(shape) for shape in known), default=0)
    result: list[Dim] = []
    for offset in range(rank, 0, -1):
        picked: Dim | None = None
        picked_from = 0
        for position, shape in enumerate(known):
            if offset > len(shape):
                continue
            dim = _plain(shape[len(shape) - offset])
            if picked is None or picked.size == 1:
                picked, picked_from = dim, position
            elif dim.size == 1 or dim == picked:
                continue
            elif dim.size is not None and picked.size is not None:
                raise _no_broadcast(known, names, (picked_from, position), offset)
            elif dim.size is not None:  # a size against a symbol: the size
                picked, picked_from = dim, position
        assert picked is not None
        result.append(picked)
    return tuple(result)


def _no_broadcast(shapes: list[Shape], names: tuple[str, ...] | None,
                  pair: tuple[int, int], offset: int) -> ShapeError:
    """Operands ``pair`` of ``shapes`` clash in the dimension ``offset`` from the right."""
    def label(i: int) -> str:
        shown = format_shape(shapes[i])
        return f"'{names[i]}' {shown}" if names and len(names) == len(shapes) else shown

    def name(i: int, other: str) -> str:
        return f"'{names[i]}'" if names and len(names) == len(shapes) else other

    (i, j) = pair
    size_i, size_j = (shapes[k][len(shapes[k]) - offset].size for k in pair)
    axis_i, axis_j = len(shapes[i]) - offset, len(shapes[j]) - offset
    first, second = name(i, "the first"), name(j, "the second")
    where = (f"dimension {axis_i} is {size_i} in {first} but {size_j} in {second}"
             if axis_i == axis_j else f"dimension {axis_i} of {first} is {size_i} but "
             f"dimension {axis_j} of {second} is {size_j} (aligned from the right)")
    return ShapeError(
        f"{label(i)} and {label(j)} do not broadcast: {where}",
        expected="shapes that broadcast: aligned from the right, each pair of dimensions "
        "equal or one of them 1",
        hint=f"make the sizes agree ({size_i} vs {size_j}), or reduce or reshape one side "
        "first (reshape, select, mean(x, dim=...))",
    )


def resolve_dim(shape: Shape, dim: int, what: str) -> int | None:
    """The position of axis ``dim`` (negative counts from the end) in ``shape``.

    ``None`` when a ``...`` makes the position unknown; :class:`ShapeError` when ``dim`` is
    out of range for the shape's rank.
    """
    ellipsis = next((i for i, d in enumerate(shape) if d.ellipsis), None)
    if ellipsis is not None:
        if 0 <= dim < ellipsis:
            return dim
        if dim < 0 and -dim <= len(shape) - ellipsis - 1:
            return len(shape) + dim
        return None
    if not -len(shape) <= dim < len(shape):
        raise ShapeError(
            f"{what}: dimension {dim} is out of range for {format_shape(shape)} "
            f"({len(shape)} dimensions)",
            expected=f"a dim between {-len(shape)} and {len(shape) - 1}" if shape else
            "an input with at least one dimension",
            hint="count dimensions from 0 (the batch) or from the end with negative numbers")
    return dim % len(shape)


def fresh_symbol(shape: Shape, base: str) -> Dim:
    """A symbol named after ``base`` that ``shape`` does not use: a free dimension."""
    used = {d.symbol for d in shape}
    name, count = base, 1
    while name in used:
        count += 1
        name = f"{base}{count}"
    return Dim(symbol=name)


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
