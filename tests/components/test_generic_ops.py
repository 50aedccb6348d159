"""Generic ops and ``expr``: values against hand computation, types, and refused formulas."""

from __future__ import annotations

import math
import re
import textwrap

import pytest
import torch
from dgraph.components.ops.expr import ExprSyntaxError, compile_expr, parse_expr

from dgraph.errors import ValidationError
from dgraph.graph import validate
from dgraph.registry import COMPONENTS, BuildContext, load_plugins
from dgraph.spec import load_spec

load_plugins()


def build(type_name: str, **params):
    cls = COMPONENTS.get(type_name)
    return cls(cls.Params(**params), "node").build(BuildContext("node"))


def test_arithmetic_ops_match_hand_values():
    a = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    b = torch.tensor([[4.0, 1.0], [-1.0, 2.0]])
    assert build("add")(a=a, b=b)["y"].tolist() == [[5.0, -1.0], [2.0, 2.5]]
    assert build("sub")(a=a, b=b)["y"].tolist() == [[-3.0, -3.0], [4.0, -1.5]]
    assert build("mul")(a=a, b=b)["y"].tolist() == [[4.0, -2.0], [-3.0, 1.0]]
    assert build("scale", factor=-0.5)(x=a)["y"].tolist() == [[-0.5, 1.0], [-1.5, -0.25]]


def test_concat_reshape_select_index():
    a, b = torch.arange(6.0).view(2, 3), torch.arange(4.0).view(2, 2)
    assert build("concat")(a=a, b=b)["y"].tolist() == [[0, 1, 2, 0, 1], [3, 4, 5, 2, 3]]
    x = torch.arange(12.0).view(2, 6)
    assert build("reshape", shape=[3, -1])(x=x)["y"].shape == (2, 3, 2)
    tokens = torch.arange(24.0).view(2, 3, 4)
    assert build("select", dim=1, index=-1)(x=tokens)["y"].tolist() == [
        [8, 9, 10, 11], [20, 21, 22, 23]]
    positions = torch.tensor([2, 0])
    assert build("index")(x=tokens, positions=positions)["y"].tolist() == [
        [8, 9, 10, 11], [12, 13, 14, 15]]


def test_softmax_and_log_softmax_with_temperature_and_minus_inf():
    x = torch.tensor([[0.0, math.log(3.0), -math.inf]])
    probs = build("softmax")(x=x)["y"]
    assert torch.allclose(probs, torch.tensor([[0.25, 0.75, 0.0]]))
    logp = build("log_softmax", temperature=2.0)(x=x)["y"]
    # x / 2 = [0, log(3)/2, -inf] -> log p = x/2 - log(1 + sqrt(3))
    expected = [0.0 - math.log(1 + math.sqrt(3)), math.log(3) / 2 - math.log(1 + math.sqrt(3))]
    assert torch.allclose(logp[0, :2], torch.tensor(expected))
    assert logp[0, 2] == -math.inf
    half = build("softmax")(x=x.half())["y"]
    assert half.dtype == torch.float32 and torch.allclose(half, probs, atol=1e-3)


def test_masked_mean_pools_counted_tokens_and_gives_zero_for_empty_rows():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                      [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]]], requires_grad=True)
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])
    y = build("masked_mean")(x=x, mask=mask)["y"]
    assert y.tolist() == [[3.0, 4.0], [0.0, 0.0]]
    y.sum().backward()
    assert x.grad[1].abs().sum() == 0 and torch.isfinite(x.grad).all()
    assert build("masked_mean")(x=x)["y"][0].tolist() == [3.0, 4.0]


def test_random_augmentations_are_seeded_and_shared_between_paired_batches():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    torch.manual_seed(0)
    out = build("random_flip", p=1.0)(x=x, x2=x + 100)
    assert torch.equal(out["y"], x.flip(-1)) and torch.equal(out["y2"], x.flip(-1) + 100)
    assert torch.equal(build("random_flip", p=0.0)(x=x)["y"], x)
    torch.manual_seed(1)
    shifted = build("random_shift", max_shift=1)(x=x, x2=x)
    assert torch.equal(shifted["y"], shifted["y2"])
    torch.manual_seed(1)
    again = build("random_shift", max_shift=1)(x=x)["y"]
    assert torch.equal(again, shifted["y"])
    assert torch.equal(build("random_shift", max_shift=0)(x=x)["y"], x)
    # A shift moves pixels and fills zeros: every row of the output is a row of the padded input.
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for b in range(2):
        windows = {tuple(padded[b, 0, i:i + 3, j:j + 3].flatten().tolist())
                   for i in range(3) for j in range(3)}
        assert tuple(again[b, 0].flatten().tolist()) in windows


def test_expr_evaluates_its_closed_grammar():
    a = torch.tensor([[1.0, 4.0]])
    b = torch.tensor([[2.0, -1.0]])
    f = compile_expr(parse_expr("a + 0.1 * b"))
    assert torch.allclose(f({"a": a, "b": b}), torch.tensor([[1.2, 3.9]]))
    f = compile_expr(parse_expr("where(a > 2, sqrt(a), -b) ** 2"))
    assert f({"a": a, "b": b}).tolist() == [[4.0, 4.0]]
    f = compile_expr(parse_expr("mean(clamp(a - b, min=0), dim=-1, keepdim=True)"))
    assert f({"a": a, "b": b}).tolist() == [[2.5]]
    assert parse_expr("x * y + x").names == ("x", "y")


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('id')",
     "'__import__('os').system' is not an allowed function; allowed: " + ", ".join(
         ["exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "abs", "sign", "tanh", "sigmoid",
          "relu", "softplus", "sin", "cos", "detach", "float", "clamp", "where", "minimum",
          "maximum", "mean", "sum", "amax", "amin", "logsumexp", "softmax", "log_softmax",
          "norm"]) + " (at column 1)"),
    ("a.grad", "Attribute is not allowed in a formula (allowed: numbers, input names, "
     "+ - * / ** %, comparisons, and calls of exp, log, log1p, expm1, sqrt, rsqrt, abs, sign, "
     "tanh, sigmoid, relu, softplus, sin, cos, detach, float, clamp, where, minimum, maximum, "
     "mean, sum, amax, amin, logsumexp, softmax, log_softmax, norm) (at column 1)"),
    ("a + 'x'", "only numbers are allowed as constants, found 'x' (at column 5)"),
    ("_secret * 2", "input names must match [A-Za-z][A-Za-z0-9_]*; found '_secret' "
     "(at column 1)"),
    ("exp(a, b)", "exp() takes 1 argument(s), found 2 (at column 1)"),
    ("mean(a, axis=1)", "mean() has no keyword 'axis'; it takes dim, keepdim (at column 1)"),
    ("clamp(a, min=b)", "clamp(min=...) must be a number, true/false or None (at column 14)"),
    ("1 + 2", "the formula uses no input; name at least one, e.g. 'a * 2'"),
    ("a +", "not a formula: invalid syntax"),
    ("(a", "not a formula: '(' was never closed (at column 1)"),
    ("a < b < 1", "one comparison at a time: < <= > >= == != (at column 1)"),
    ("a" + " + a" * 600, "the formula is 2401 characters; at most 2000"),
])
def test_expr_refuses_everything_outside_the_grammar(text, message):
    with pytest.raises(ExprSyntaxError) as info:
        parse_expr(text)
    assert str(info.value) == message


SPEC = textwrap.dedent("""\
    dgraph: 1
    name: ops
    nodes:
      data: {kind: data, type: digits, params: {batch_size: 8}}
      student: {kind: student, type: mlp, params: {in_features: 64, hidden: [8], num_classes: 10},
                inputs: {x: data.x}}
      teacher: {kind: teacher, type: mlp, params: {in_features: 64, hidden: [8], num_classes: 10},
                inputs: {x: data.x}}
      mix: {kind: op, type: %s, inputs: {a: student.logits, b: teacher.logits}}
      kd: {kind: loss, type: hinton_kd, inputs: {student: mix.y, teacher: teacher.logits}}
    updates:
      main: {optimizer: {type: adam, lr: 0.001}, params: [student], objective: {kd: 1}}
    train: {steps: 1}
    """)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "{type: expr, params: {expr: 'a - b'}}"])
def test_generic_ops_keep_the_semantic_type_of_their_input(tmp_path, op):
    text = SPEC % op if not op.startswith("{") else SPEC.replace(
        "type: %s, inputs", "type: expr, params: {expr: 'a - b'}, inputs")
    path = tmp_path / "ops.yaml"
    path.write_text(text)
    graph, _ = validate(load_spec(path))
    assert graph.nodes["mix"].outputs["y"].type == "Logits"


def test_expr_with_python_code_is_refused_at_validation_with_its_location(tmp_path):
    path = tmp_path / "ops.yaml"
    path.write_text(SPEC.replace("type: %s, inputs",
                                 "type: expr, params: {expr: \"__import__('os')\"}, inputs"))
    with pytest.raises(ValidationError) as info:
        validate(load_spec(path))
    problem = info.value.problems[0]
    assert (problem.node, problem.location.line) == ("mix", 9)
    assert re.search(r"'__import__' is not an allowed function", problem.message)


def test_expr_inputs_are_the_formula_names(tmp_path):
    path = tmp_path / "ops.yaml"
    path.write_text(SPEC.replace("type: %s, inputs: {a: student.logits, b: teacher.logits}",
                                 "type: expr, params: {expr: 'a * 2'}, inputs: "
                                 "{a: student.logits, c: teacher.logits}"))
    with pytest.raises(ValidationError) as info:
        validate(load_spec(path))
    assert any(p.code == "unknown-port" and p.port == "c" and p.expected == "one of: a"
               for p in info.value.problems)


def test_add_noise_follows_its_schedule_during_training(tmp_path):
    from dgraph.runtime.train import Trainer

    path = tmp_path / "noise.yaml"
    path.write_text(textwrap.dedent("""\
        dgraph: 1
        name: noise
        nodes:
          data: {kind: data, type: digits, params: {batch_size: 16}}
          noisy:
            kind: op
            type: add_noise
            params: {std: {schedule: linear, start: 0.5, end: 0.0, steps: 8}}
            inputs: {x: data.x}
          student: {kind: student, type: mlp,
                    params: {in_features: 64, hidden: [8], num_classes: 10},
                    inputs: {x: noisy.y}}
          ce: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
        updates:
          main: {optimizer: {type: adam, lr: 0.001}, params: [student], objective: {ce: 1}}
        train: {steps: 6, eval: {every: 100}, log_every: 100}
        """))
    graph, _ = validate(load_spec(path))
    (tmp_path / "run").mkdir()
    trainer = Trainer(graph, tmp_path / "run", progress=False, log=lambda *_: None)
    seen = []
    noisy = trainer.instances.modules["noisy"]
    noisy.register_forward_hook(lambda module, args, out: seen.append(module.params["std"]))
    trainer.run()
    assert seen[:6] == pytest.approx([0.5 * (1 - step / 8) for step in range(6)])


def test_add_noise_refuses_a_negative_std_at_validation(tmp_path):
    path = tmp_path / "ops.yaml"
    path.write_text(SPEC.replace("type: %s, inputs: {a: student.logits, b: teacher.logits}",
                                 "type: add_noise, params: {std: -0.1}, inputs: "
                                 "{x: student.logits}"))
    with pytest.raises(ValidationError) as info:
        validate(load_spec(path))
    assert [p.message for p in info.value.problems] == [
        "parameters of 'add_noise': std must not be negative; found -0.1"]
