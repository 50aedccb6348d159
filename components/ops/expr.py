"""``expr``: a formula over a node's inputs in a small closed grammar, never Python's eval.

``{kind: op, type: expr, params: {expr: "a + 0.1 * b"}, inputs: {a: x.y, b: z.w}}``. The text
is parsed with :mod:`ast` at validation and checked against a whitelist: numbers, the
node's input names, ``+ - * / ** %``, unary minus, comparisons, and calls of the functions in
:data:`FUNCTIONS` with constant keyword arguments. No attribute access, subscripts, strings,
lambdas or other names: anything else is refused with the position of the offending part.
The checked tree is turned into nested closures over torch functions once, at build time.

The input ports are the names the formula uses (each of type ``Tensor``, any shape); the
output takes the semantic type of the first of them unless ``type`` says otherwise.

The output's shape is inferred statically (:func:`infer_expr_shape`) from the shapes feeding
the inputs: numbers are scalars (shape ``[]``); arithmetic, comparisons, ``where``,
``minimum`` and ``maximum`` broadcast as torch does (dims aligned from the right; equal
symbols or sizes match, a 1 takes the other side, a symbol against a size gives the size,
two different symbols are assumed equal, two different sizes > 1 are an error located at the
node); the other functions keep the shape, except the reductions ``mean``, ``sum``,
``amax``, ``amin``, ``logsumexp`` and ``norm``, which drop ``dim`` (or keep it as 1 with
``keepdim=True``; without a dim, all). An input with no static shape makes the output's
unknown; the dry run then computes it from real meta tensors.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from dgraph.ports import (
    SEMANTIC_TYPES,
    Dim,
    Port,
    Shape,
    ShapeError,
    broadcast_shapes,
    resolve_dim,
)
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["FUNCTIONS", "Expr", "ExprParams", "infer_expr_shape", "parse_expr"]

# name -> (min positional args, max positional args, allowed keyword arguments, doc)
FUNCTIONS: dict[str, tuple[int, int, frozenset[str], str]] = {
    "exp": (1, 1, frozenset(), "e**x"),
    "log": (1, 1, frozenset(), "natural logarithm"),
    "log1p": (1, 1, frozenset(), "log(1 + x)"),
    "expm1": (1, 1, frozenset(), "exp(x) - 1"),
    "sqrt": (1, 1, frozenset(), "square root"),
    "rsqrt": (1, 1, frozenset(), "1 / sqrt(x)"),
    "abs": (1, 1, frozenset(), "absolute value"),
    "sign": (1, 1, frozenset(), "-1, 0 or 1"),
    "tanh": (1, 1, frozenset(), "hyperbolic tangent"),
    "sigmoid": (1, 1, frozenset(), "1 / (1 + exp(-x))"),
    "relu": (1, 1, frozenset(), "max(x, 0)"),
    "softplus": (1, 1, frozenset(), "log(1 + exp(x))"),
    "sin": (1, 1, frozenset(), "sine"),
    "cos": (1, 1, frozenset(), "cosine"),
    "detach": (1, 1, frozenset(), "the same values without gradient (stop-gradient)"),
    "float": (1, 1, frozenset(), "cast to float32"),
    "clamp": (1, 1, frozenset({"min", "max"}), "clamp(x, min=..., max=...)"),
    "where": (3, 3, frozenset(), "where(condition, a, b)"),
    "minimum": (2, 2, frozenset(), "elementwise minimum"),
    "maximum": (2, 2, frozenset(), "elementwise maximum"),
    "mean": (1, 1, frozenset({"dim", "keepdim"}), "mean(x, dim=..., keepdim=False)"),
    "sum": (1, 1, frozenset({"dim", "keepdim"}), "sum(x, dim=..., keepdim=False)"),
    "amax": (1, 1, frozenset({"dim", "keepdim"}), "largest value over dim"),
    "amin": (1, 1, frozenset({"dim", "keepdim"}), "smallest value over dim"),
    "logsumexp": (1, 1, frozenset({"dim", "keepdim"}), "log(sum(exp(x))) over dim"),
    "softmax": (1, 1, frozenset({"dim"}), "softmax over dim (default -1)"),
    "log_softmax": (1, 1, frozenset({"dim"}), "log-softmax over dim (default -1)"),
    "norm": (1, 1, frozenset({"dim", "keepdim", "p"}), "p-norm over dim (default: all)"),
}

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
           ast.Mod: "%"}
_COMPARE = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
            ast.NotEq: "!="}
MAX_LENGTH = 2000
MAX_NODES = 500


class ExprSyntaxError(ValueError):
    """The formula is outside the grammar; ``column`` is 1-based within the text."""

    def __init__(self, message: str, column: int | None = None) -> None:
        self.column = column
        where = f" (at column {column})" if column else ""
        super().__init__(message + where)


@dataclass(frozen=True)
class ParsedExpr:
    """A checked formula: its tree and the input names it uses, in order of appearance."""

    tree: ast.expr
    names: tuple[str, ...]


def _constant(node: ast.expr, what: str) -> Any:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_constant(node.operand, what)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        return node.value
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    raise ExprSyntaxError(f"{what} must be a number, true/false or None", node.col_offset + 1)


def parse_expr(text: str) -> ParsedExpr:
    """Parse and check ``text``; raise :class:`ExprSyntaxError` for anything outside the grammar."""
    if len(text) > MAX_LENGTH:
        raise ExprSyntaxError(f"the formula is {len(text)} characters; at most {MAX_LENGTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExprSyntaxError(f"not a formula: {exc.msg}", exc.offset) from None
    names: list[str] = []
    count = 0

    def check(node: ast.expr) -> None:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise ExprSyntaxError(f"the formula has more than {MAX_NODES} parts")
        column = getattr(node, "col_offset", -1) + 1
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float, bool):
                raise ExprSyntaxError(f"only numbers are allowed as constants, found "
                                      f"{node.value!r}", column)
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise ExprSyntaxError(f"'{node.id}' is a function; call it: {node.id}(...)",
                                      column)
            if node.id.startswith("_") or not node.id.isascii():
                raise ExprSyntaxError(f"input names must match [A-Za-z][A-Za-z0-9_]*; found "
                                      f"{node.id!r}", column)
            if node.id not in names:
                names.append(node.id)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise ExprSyntaxError(f"operator {type(node.op).__name__} is not allowed; use "
                                      + " ".join(_BINARY.values()), column)
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise ExprSyntaxError("only unary - and + are allowed", column)
            check(node.operand)
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1 or type(node.ops[0]) not in _COMPARE:
                raise ExprSyntaxError("one comparison at a time: " + " ".join(_COMPARE.values()),
                                      column)
            check(node.left)
            check(node.comparators[0])
        elif isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
                shown = ast.unparse(func)
                raise ExprSyntaxError(f"'{shown}' is not an allowed function; allowed: "
                                      + ", ".join(FUNCTIONS), column)
            low, high, keywords, _ = FUNCTIONS[func.id]
            if not low <= len(node.args) <= high:
                raise ExprSyntaxError(f"{func.id}() takes {low}" + (
                    f" to {high}" if high != low else "") + f" argument(s), found "
                    f"{len(node.args)}", column)
            for keyword in node.keywords:
                if keyword.arg not in keywords:
                    raise ExprSyntaxError(
                        f"{func.id}() has no keyword '{keyword.arg}'"
                        + (f"; it takes {', '.join(sorted(keywords))}" if keywords else ""),
                        column)
                _constant(keyword.value, f"{func.id}({keyword.arg}=...)")
            for arg in node.args:
                check(arg)
        else:
            raise ExprSyntaxError(f"{type(node).__name__} is not allowed in a formula (allowed: "
                                  "numbers, input names, + - * / ** %, comparisons, and calls "
                                  "of " + ", ".join(FUNCTIONS) + ")", column)

    check(tree)
    if not names:
        raise ExprSyntaxError("the formula uses no input; name at least one, e.g. 'a * 2'")
    return ParsedExpr(tree=tree, names=tuple(names))


def compile_expr(parsed: ParsedExpr) -> Callable[[Mapping[str, Any]], Any]:
    """Closures over torch functions computing the formula from ``{input name: tensor}``."""
    import operator

    import torch

    binary = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.Pow: operator.pow, ast.Mod: operator.mod}
    compare = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
               ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne}

    def reduce(fn):
        def call(x, dim=None, keepdim=False):
            return fn(x) if dim is None else fn(x, dim=dim, keepdim=keepdim)
        return call

    functions: dict[str, Callable[..., Any]] = {
        "exp": torch.exp, "log": torch.log, "log1p": torch.log1p, "expm1": torch.expm1,
        "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "abs": torch.abs, "sign": torch.sign,
        "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
        "softplus": torch.nn.functional.softplus, "sin": torch.sin, "cos": torch.cos,
        "detach": torch.Tensor.detach, "float": torch.Tensor.float,
        "clamp": lambda x, min=None, max=None: torch.clamp(x, min=min, max=max),
        "where": lambda c, a, b: torch.where(c.bool() if torch.is_tensor(c) else c, a, b),
        "minimum": lambda a, b: torch.minimum(torch.as_tensor(a), torch.as_tensor(b)),
        "maximum": lambda a, b: torch.maximum(torch.as_tensor(a), torch.as_tensor(b)),
        "mean": reduce(torch.mean), "sum": reduce(torch.sum),
        "amax": lambda x, dim=None, keepdim=False: (
            torch.amax(x, dim=dim, keepdim=keepdim) if dim is not None else torch.amax(x)),
        "amin": lambda x, dim=None, keepdim=False: (
            torch.amin(x, dim=dim, keepdim=keepdim) if dim is not None else torch.amin(x)),
        "logsumexp": lambda x, dim=-1, keepdim=False: torch.logsumexp(x, dim=dim,
                                                                      keepdim=keepdim),
        "softmax": lambda x, dim=-1: torch.softmax(x, dim=dim),
        "log_softmax": lambda x, dim=-1: torch.log_softmax(x, dim=dim),
        "norm": lambda x, dim=None, keepdim=False, p=2: torch.linalg.vector_norm(
            x, ord=p, dim=dim, keepdim=keepdim),
    }

    def build(node: ast.expr) -> Callable[[Mapping[str, Any]], Any]:
        if isinstance(node, ast.Constant):
            # Numbers become floats, so that 9 ** 9 ** 9 overflows at once instead of
            # computing a Python integer with millions of digits.
            value = float(node.value)
            return lambda env: value
        if isinstance(node, ast.Name):
            name = node.id
            return lambda env: env[name]
        if isinstance(node, ast.BinOp):
            fn, left, right = binary[type(node.op)], build(node.left), build(node.right)
            return lambda env: fn(left(env), right(env))
        if isinstance(node, ast.UnaryOp):
            operand = build(node.operand)
            if isinstance(node.op, ast.USub):
                return lambda env: -operand(env)
            return operand
        if isinstance(node, ast.Compare):
            fn, left, right = (compare[type(node.ops[0])], build(node.left),
                               build(node.comparators[0]))
            return lambda env: fn(left(env), right(env))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        fn = functions[node.func.id]
        args = [build(a) for a in node.args]
        kwargs = {k.arg: _constant(k.value, "") for k in node.keywords if k.arg}
        return lambda env: fn(*(a(env) for a in args), **kwargs)

    return build(parsed.tree)


_REDUCTIONS = {"mean", "sum", "amax", "amin", "logsumexp", "norm"}
_BROADCASTING = {"where", "minimum", "maximum"}


def infer_expr_shape(parsed: ParsedExpr, inputs: Mapping[str, Shape | None]) -> Shape | None:
    """The formula's shape from its inputs' (symbolic) shapes; ``None`` when unknown.

    Raises :class:`~dgraph.ports.ShapeError` naming the parts of the formula that do not
    broadcast, or a reduction over a dimension the shape does not have.
    """
    def shape(node: ast.expr) -> Shape | None:
        if isinstance(node, ast.Constant):
            return ()
        if isinstance(node, ast.Name):
            return inputs.get(node.id)
        if isinstance(node, ast.UnaryOp):
            return shape(node.operand)
        if isinstance(node, ast.BinOp):
            return combine(node, [node.left, node.right])
        if isinstance(node, ast.Compare):
            return combine(node, [node.left, node.comparators[0]])
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        name = node.func.id
        if name in _BROADCASTING:
            return combine(node, list(node.args))
        x = shape(node.args[0])
        keywords = {k.arg: _constant(k.value, "") for k in node.keywords if k.arg}
        if x is None or (name not in _REDUCTIONS and "dim" not in keywords):
            return x
        default = -1 if name in ("logsumexp", "softmax", "log_softmax") else None
        dim = keywords.get("dim", default)
        what = ast.unparse(node)
        if not x:  # a scalar: torch allows dim 0 or -1 and keeps it a scalar
            return x
        if dim is None and name in _REDUCTIONS and name != "logsumexp":  # over everything
            if any(d.ellipsis for d in x):
                return None
            # Only norm keeps the dims without a dim (see compile_expr).
            return tuple(Dim(size=1) for _ in x) if name == "norm" and keywords.get(
                "keepdim") else ()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ShapeError(f"{what}: dim must be an integer, found {dim!r}",
                             expected="dim=<integer>", hint=f"e.g. {name}(..., dim=-1)")
        axis = resolve_dim(x, dim, what)
        if name not in _REDUCTIONS:
            return x
        if axis is None:
            return None
        if keywords.get("keepdim"):
            return x[:axis] + (Dim(size=1),) + x[axis + 1:]
        return x[:axis] + x[axis + 1:]

    def combine(node: ast.expr, parts: list[ast.expr]) -> Shape | None:
        shapes = [shape(part) for part in parts]
        try:
            return broadcast_shapes(*shapes, names=tuple(ast.unparse(p) for p in parts))
        except ShapeError as exc:
            if node is parsed.tree:
                raise
            raise ShapeError(f"in '{ast.unparse(node)}': {exc}", expected=exc.expected,
                             hint=exc.hint) from None

    return shape(parsed.tree)


class ExprParams(Params):
    """Parameters of :class:`Expr`."""

    expr: str = Field(description="the formula, e.g. 'a + 0.1 * b' or 'clamp(x, min=0)'")
    type: str | None = Field(None, description="semantic type of the output (default: that of "
                             "the formula's first input)")

    @field_validator("expr")
    @classmethod
    def _grammar(cls, value: str) -> str:
        parse_expr(value)
        return value

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value not in SEMANTIC_TYPES:
            raise ValueError(f"unknown semantic type '{value}'; known: "
                             + ", ".join(SEMANTIC_TYPES))
        return value


@component("expr", roles=("op",))
class Expr(Component):
    """A formula over the node's inputs: ``y = f(a, b, ...)`` (see the module docs for the grammar).

    Functions: exp, log, log1p, expm1, sqrt, rsqrt, abs, sign, tanh, sigmoid, relu, softplus,
    sin, cos, detach, float, clamp(min=, max=), where(c, a, b), minimum, maximum, mean/sum/
    amax/amin/logsumexp/norm(dim=, keepdim=), softmax/log_softmax(dim=). Broadcasting follows
    torch.
    """

    Params = ExprParams
    inputs: dict[str, Port] = {}
    outputs = {"y": Port("Tensor", None, "the formula's value")}

    def resolved_inputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        parsed = parse_expr(self.params.expr)  # type: ignore[attr-defined]
        return {name: Port("Tensor", None, f"'{name}' in the formula") for name in parsed.names}

    def resolved_outputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        params = self.params
        if params.type is not None:  # type: ignore[attr-defined]
            return {"y": Port(params.type, None, "the formula's value")}  # type: ignore[attr-defined]
        first = parse_expr(params.expr).names[0]  # type: ignore[attr-defined]
        return {"y": Port("Tensor", None, "the formula's value", like=first)}

    def infer_output_shapes(self, input_shapes: Mapping[str, Shape | None]
                            ) -> dict[str, Shape | None]:
        parsed = parse_expr(self.params.expr)  # type: ignore[attr-defined]
        return {"y": infer_expr_shape(parsed, input_shapes)}

    def build(self, context: BuildContext) -> Any:
        from dgraph._torch_declare import FunctionModule

        formula = compile_expr(parse_expr(self.params.expr))  # type: ignore[attr-defined]

        def evaluate(**inputs: Any) -> Any:
            return formula(inputs)

        return FunctionModule(evaluate, {}, "y")
