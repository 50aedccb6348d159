"""Static shape inference: ``expr`` and the generic ops compute their output shapes, torch-free.

Each case is checked by hand: through the components' ``infer_output_shapes`` hook with
symbolic shapes, and through real specs (``load_spec`` + ``validate``, no dry run), where an
inferred shape feeds the usual edge unification and a clash is a located problem.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dgraph.declare import Tensor, op, param
from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.ports import ShapeError, broadcast_shapes, format_shape, parse_shape
from dgraph.registry import COMPONENTS, Component, load_plugins
from dgraph.spec import load_spec

load_plugins()


def shape(text: str | None):
    return parse_shape(text)


def infer(type_name: str, params: dict | None = None, **inputs: str | None) -> str:
    """``type_name``'s output shape for inputs given as shape texts, formatted."""
    cls = COMPONENTS.get(type_name)
    component: Component = cls(cls.Params.model_validate(params or {}), node="n")
    shapes = component.infer_output_shapes({k: shape(v) for k, v in inputs.items()})
    return format_shape(shapes["y"])


def expr(formula: str, **inputs: str | None) -> str:
    return infer("expr", {"expr": formula}, **inputs)


# -- broadcasting over symbolic dims ---------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "result"), [
    ("B, T, C", "B, T, 1", "[B, T, C]"),        # a size 1 takes the other side
    ("B, T, 1", "B, T, C", "[B, T, C]"),
    ("B, T, C", "C", "[B, T, C]"),              # missing leading dims count as 1
    ("B, 1", "3, 1, 4", "[3, B, 4]"),
    ("B, C", "B, 10", "[B, 10]"),               # a symbol against a size: the size
    ("B, 10", "B, C", "[B, 10]"),
    ("B, T", "B, S", "[B, T]"),                 # different symbols: assumed equal, the first
    ("B, ...", "B, ...", "[B, ...]"),           # the same open shape
    ("B, ...", "B, 3", "[*]"),                  # '...' leaves the alignment open
    ("B, T, C", None, "[*]"),                   # an unknown input: unknown output
])
def test_broadcasting(a, b, result):
    assert expr("a + b", a=a, b=b) == result


def test_broadcasting_different_sizes_is_an_error_naming_both_operands():
    with pytest.raises(ShapeError) as info:
        broadcast_shapes(shape("B, 3"), shape("B, 5"), names=("a", "b"))
    assert str(info.value) == ("'a' [B, 3] and 'b' [B, 5] do not broadcast: dimension 1 is 3 "
                               "in 'a' but 5 in 'b'")
    with pytest.raises(ShapeError) as info:
        broadcast_shapes(shape("B, 3, 4"), shape("5, 1"))
    assert str(info.value) == ("[B, 3, 4] and [5, 1] do not broadcast: dimension 1 of the "
                               "first is 3 but dimension 0 of the second is 5 (aligned from "
                               "the right)")
    # A part of a longer formula is named with the part.
    with pytest.raises(ShapeError, match=r"^in 'a \+ b': 'a' \[B, 3\] and 'b' \[5\]"):
        expr("exp(a + b) * 2", a="B, 3", b="5")


# -- the rest of expr's grammar ---------------------------------------------------------------

@pytest.mark.parametrize(("formula", "result"), [
    ("a * 2 + 1", "[B, T, C]"),                          # constants are scalars
    ("-sqrt(clamp(a, min=0))", "[B, T, C]"),             # elementwise functions keep it
    ("a > 0", "[B, T, C]"),                              # comparisons broadcast
    ("where(a > 0, a, m)", "[B, T, C]"),                 # where broadcasts its three args
    ("maximum(a, m)", "[B, T, C]"),
    ("mean(a, dim=-1)", "[B, T]"),
    ("sum(a, dim=1)", "[B, C]"),
    ("amax(a, dim=0, keepdim=True)", "[1, T, C]"),
    ("amin(a, dim=-2, keepdim=True)", "[B, 1, C]"),
    ("logsumexp(a)", "[B, T]"),                          # dim defaults to -1
    ("norm(a, dim=-1, keepdim=True)", "[B, T, 1]"),
    ("mean(a)", "[]"),                                   # no dim: over everything
    ("norm(a, keepdim=True)", "[1, 1, 1]"),
    ("softmax(a, dim=1)", "[B, T, C]"),
    ("log_softmax(a)", "[B, T, C]"),
    ("a - logsumexp(a, dim=-1, keepdim=True)", "[B, T, C]"),
    ("mean(a, dim=-1, keepdim=True) * m", "[B, T, 1]"),  # [B, T, 1] with [T, 1]
])
def test_expr_shapes(formula, result):
    assert expr(formula, a="B, T, C", m="T, 1") == result


def test_expr_reduction_over_a_missing_dimension_is_an_error():
    with pytest.raises(ShapeError) as info:
        expr("mean(a, dim=3)", a="B, T, C")
    assert str(info.value) == ("mean(a, dim=3): dimension 3 is out of range for [B, T, C] "
                               "(3 dimensions)")
    assert expr("mean(a, dim=-1)", a="B, ..., C") == "[B, ...]"
    assert expr("mean(a, dim=1)", a="B, ..., C") == "[*]"


# -- the generic ops whose declared output shape is unknown -----------------------------------

def test_concat_reshape_select_index_shapes():
    assert infer("concat", a="B, 3", b="B, 2") == "[B, 5]"
    assert infer("concat", a="B, T, 3", b="B, T, 2", c="B, T, 1") == "[B, T, 6]"
    assert infer("concat", {"dim": 1}, a="B, T, 4", b="B, S, 4") == "[B, N, 4]"  # T + S
    assert infer("concat", a="B, 3", b=None) == "[*]"
    assert infer("reshape", {"shape": [3, -1]}, x="B, 6") == "[B, 3, 2]"
    assert infer("reshape", {"shape": [2, 4]}, x="B, 2, 2, 2") == "[B, 2, 4]"
    assert infer("reshape", {"shape": [3, -1]}, x="B, T") == "[B, 3, N]"
    assert infer("reshape", {"shape": [3, -1]}, x=None) == "[B, 3, N]"
    assert infer("select", {"dim": 1, "index": -1}, x="B, T, C") == "[B, C]"
    assert infer("select", {"dim": -1, "index": 0}, x="B, ..., C") == "[B, ...]"
    assert infer("index", x="B, N, C", positions="B") == "[B, C]"
    assert infer("index", x="B, 10", positions="B") == "[B]"


@pytest.mark.parametrize(("type_name", "params", "inputs", "message"), [
    ("concat", {}, {"a": "B, 3", "b": "B, 2, 1"},
     "'a' [B, 3] has 2 dimensions but 'b' [B, 2, 1] has 3"),
    ("concat", {"dim": -1}, {"a": "B, 3, 4", "b": "B, 2, 4"},
     "'a' [B, 3, 4] and 'b' [B, 2, 4] differ in dimension 1 (3 vs 2), which is not the one "
     "they are joined along (2)"),
    ("concat", {"dim": -2}, {"a": "B, 3", "b": "B, 2"},
     "concat along dim=-2 of [B, 3] would join batches"),
    ("reshape", {"shape": [4, -1]}, {"x": "B, 6"},
     "cannot reshape [B, 6] to [B, 4, -1]: 6 values per example are not a multiple of 4"),
    ("reshape", {"shape": [4]}, {"x": "B, 6"},
     "cannot reshape [B, 6] to [B, 4]: 6 values per example but 4 in shape [4]"),
    ("select", {"dim": 1, "index": 3}, {"x": "B, 3"},
     "select index 3 is out of range for dimension 1 of [B, 3] (size 3)"),
    ("select", {"dim": 2, "index": 0}, {"x": "B, 3"},
     "select: dimension 2 is out of range for [B, 3] (2 dimensions)"),
])
def test_op_shape_errors(type_name, params, inputs, message):
    with pytest.raises(ShapeError) as info:
        infer(type_name, params, **inputs)
    assert str(info.value) == message


# -- the shapes= option of declared components ------------------------------------------------

def _repeat_shapes(params, shapes):
    x = shapes["x"]
    return {"y": None if x is None else (*x[:-1], *parse_shape(str(params.times)))}


@op("test_op_shapes_widen", shapes=_repeat_shapes)
def widen(x: Tensor("B, C", "input"), *, times: int = param(2, doc="width of the output")
          ) -> Tensor(None, "x's first column, repeated"):
    """``[B, C] -> [B, times]`` (a test of ``shapes=``)."""
    return x[:, :1].expand(-1, times)


def test_declared_shapes_function_is_the_hook():
    assert infer("test_op_shapes_widen", {"times": 7}, x="B, C") == "[B, 7]"
    assert infer("test_op_shapes_widen", x=None) == "[*]"
    # Without shapes=, a declared component computes nothing: the declared shapes stand.
    cls = COMPONENTS.get("add")
    assert cls(cls.Params(), "n").infer_output_shapes({"a": shape("B, 3")}) == {}


# -- through real specs -----------------------------------------------------------------------

HEAD = """\
dgraph: 1
name: shapes
nodes:
  data: {kind: data, type: digits, params: {batch_size: 8}}
  student: {kind: student, type: mlp, params: {in_features: 64, hidden: [8], num_classes: 3},
            inputs: {x: data.x}}
  teacher: {kind: teacher, type: mlp, params: {in_features: 64, hidden: [8], num_classes: 5},
            inputs: {x: data.x}}
"""
TAIL = """\
  ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
updates:
  main: {optimizer: {type: adam, lr: 0.001}, params: [%s], objective: {%s}}
train: {steps: 1}
"""


def spec_file(tmp_path: Path, nodes: str, params: str = "student",
              objective: str = "ce: 1") -> Path:
    path = tmp_path / "shapes.yaml"
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(nodes), "  ")
                    + TAIL % (params, objective))
    return path


def errors(path: Path) -> list:
    with pytest.raises(ValidationError) as info:
        validate(load_spec(path))
    return [p for p in info.value.problems if p.severity == "error"]


def shapes_of(tmp_path: Path, nodes: str) -> dict[str, str]:
    graph, _ = validate(load_spec(spec_file(tmp_path, nodes)))
    return {f"{n}.{p}": format_shape(s) for (n, p), s in graph.shapes.items()}


def test_broadcast_and_reduction_in_a_spec(tmp_path):
    # data.x [B, 64] -> reshape [4, 16] -> [B, 4, 16] -> token_projector -> [B, T, 8]
    shapes = shapes_of(tmp_path, """\
        tokens: {kind: op, type: reshape, params: {shape: [4, -1]}, inputs: {x: data.x}}
        proj: {kind: projector, type: token_projector, params: {in_features: 16,
               out_features: 8}, inputs: {x: tokens.y}}
        last: {kind: op, type: expr, params: {expr: 'mean(h, dim=-1, keepdim=True)'},
               inputs: {h: proj.y}}
        mix: {kind: op, type: expr, params: {expr: 'h - m'}, inputs: {h: proj.y, m: last.y}}
        pooled: {kind: op, type: expr, params: {expr: 'mean(x, dim=-1)'}, inputs: {x: mix.y}}
        out: {kind: op, type: expr, params: {expr: 'x * 2'}, inputs: {x: pooled.y}}
        """)
    assert shapes["tokens.y"] == "[B, 4, 16]"
    assert shapes["proj.y"] == "[B, T, 8]"
    assert shapes["last.y"] == "[B, T, 1]"
    assert shapes["mix.y"] == "[B, T, 8]"      # [B, T, 8] with [B, T, 1]
    assert shapes["pooled.y"] == "[B, T]"      # mean over dim -1 of [B, T, C]


def test_reshape_and_concat_in_a_spec(tmp_path):
    shapes = shapes_of(tmp_path, """\
        six: {kind: op, type: concat, inputs: {a: student.logits, b: student.logits}}
        grid: {kind: op, type: reshape, params: {shape: [3, -1]}, inputs: {x: six.y}}
        both: {kind: op, type: concat, inputs: {a: student.logits, b: pair.y}}
        pair: {kind: op, type: select, params: {dim: 1, index: 0}, inputs: {x: grid.y}}
        first: {kind: op, type: index, inputs: {x: grid.y, positions: data.y}}
        use: {kind: op, type: expr, params: {expr: 'mean(a, dim=-1) + amax(b, dim=1)'},
              inputs: {a: both.y, b: first.y}}
        """)
    assert shapes["six.y"] == "[B, 6]"
    assert shapes["grid.y"] == "[B, 3, 2]"     # reshape [B, 6] with shape [3, -1]
    assert shapes["pair.y"] == "[B, 2]"
    assert shapes["both.y"] == "[B, 5]"        # concat of [B, 3] and [B, 2]
    assert shapes["first.y"] == "[B, 2]"


def test_inputs_that_do_not_broadcast_are_a_located_error(tmp_path):
    path = spec_file(tmp_path, """\
        mix: {kind: op, type: expr, params: {expr: 'a + b'},
              inputs: {a: student.logits, b: teacher.logits}}
        """)
    (problem,) = errors(path)
    assert (problem.code, problem.node, problem.port) == ("shape-mismatch", "mix", None)
    assert (problem.location.line, problem.location.column) == (10, 9)  # its inputs
    assert problem.render() == f"""\
{path}:10:9: error[shape-mismatch]: node 'mix': the shapes of its inputs do not combine: \
'a' [B, 3] and 'b' [B, 5] do not broadcast: dimension 1 is 3 in 'a' but 5 in 'b'
    expected: shapes that broadcast: aligned from the right, each pair of dimensions equal \
or one of them 1
    found:    a: [B, 3] from student.logits, b: [B, 5] from teacher.logits
    hint: make the sizes agree (3 vs 5), or reduce or reshape one side first (reshape, \
select, mean(x, dim=...))"""


def test_an_op_error_does_not_cascade(tmp_path):
    path = spec_file(tmp_path, """\
        grid: {kind: op, type: reshape, params: {shape: [3, -1]}, inputs: {x: student.features}}
        proj: {kind: projector, type: linear_projector, params: {in_features: 7,
               out_features: 2}, inputs: {x: grid.y}}
        """)
    (problem,) = errors(path)   # not also a mismatch at proj: grid.y is unknown
    assert problem.node == "grid"
    assert problem.message == ("the shapes of its inputs do not combine: cannot reshape "
                               "[B, 8] to [B, 3, -1]: 8 values per example are not a multiple "
                               "of 3")
    assert problem.found == "x: [B, 8] from student.features"
    assert problem.suggestion == "change shape (now [3, -1]) so that it holds 8 values"


def test_inferred_width_meets_the_projector_at_static_validation(tmp_path, capsys):
    from dgraph.cli import main

    path = spec_file(tmp_path, """\
        mix: {kind: op, type: expr, params: {expr: 'relu(a) * 2', type: Features},
              inputs: {a: student.logits}}
        proj: {kind: projector, type: linear_projector, params: {in_features: 8,
               out_features: 5}, inputs: {x: mix.y}}
        hint: {kind: loss, type: mse, inputs: {prediction: proj.y, target: teacher.logits}}
        """, params="student, proj", objective="ce: 1, hint: 1")
    assert main(["validate", "--static", str(path)]) == 1
    assert capsys.readouterr().err == f"""\
{path}:12:40: error[shape-mismatch]: node 'proj', port 'x': dimension 1 of input 'x' is 3 \
(from mix.y) but must be 8 (from the declared shape of input 'proj.x')
    expected: Features[B, 8]
    found:    [B, 3] from mix.y
    hint: make both sides agree: set 'in_features' of 'proj' to 3, or put a projector mapping \
3 to 8 in between
1 error: the spec is not valid
"""
    # With the width the formula gives, the same chain is valid.
    path.write_text(path.read_text().replace("in_features: 8", "in_features: 3"))
    graph, _ = validate(load_spec(path))
    assert format_shape(graph.shapes[("mix", "y")]) == "[B, 3]"
