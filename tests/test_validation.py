"""`dgraph validate` on one small invalid spec per problem class, and on every zoo spec.

Each invalid spec lives in tests/specs/invalid/. The test compares the whole of stderr with
the expected text: where (file:line:column, node, port), what was expected, what was found
and a hint. ``{path}`` in an expected text stands for the path given on the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dgraph.cli import main
from dgraph.spec import zoo_names
from dgraph.spec.source import resolve_spec_path

INVALID = Path(__file__).parent / "specs" / "invalid"
ROLES_LIST = "data, teacher, student, model, projector, loss, sampler, op, tensor, target, metric"

# file -> the complete stderr of `dgraph validate FILE` ({path} = FILE).
CASES: dict[str, str] = {
    "unknown_type.yaml": """\
{path}:14:11: error[unknown-type]: node 'ce': unknown component type 'cross_entropi'
    expected: a component type registered for kind 'loss' (`dgraph list loss` shows them)
    found:    type: cross_entropi
    hint: did you mean 'cross_entropy'?
1 error: the spec is not valid
""",
    "unknown_param.yaml": """\
{path}:10:31: error[unknown-param]: node 'student': component type 'mlp' has no parameter \
'num_clases'
    expected: one of: in_features, hidden, num_classes, activation, dropout
    found:    num_clases: 10
    hint: did you mean 'num_classes'?
1 error: the spec is not valid
""",
    "missing_param.yaml": """\
{path}:10:5: error[missing-param]: node 'student': component type 'mlp' needs parameter \
'num_classes'
    expected: 'num_classes' (number of output logits) under params
    found:    params: {in_features}
    hint: add 'num_classes:' under params (see `dgraph list student`)
1 error: the spec is not valid
""",
    "unknown_input_port.yaml": """\
{path}:15:14: error[unknown-port]: node 'ce', port 'logit': component type 'cross_entropy' \
has no input port 'logit'
    expected: one of: logits, target, mask
    found:    logit: student.logits
    hint: did you mean 'logits'?
1 error: the spec is not valid
""",
    "unknown_node.yaml": """\
{path}:11:17: error[unknown-node]: node 'student', port 'x': input 'x' refers to an unknown \
node 'dta'
    expected: a node of this spec: data, student, ce
    found:    'dta.x'
    hint: did you mean 'data'?
1 error: the spec is not valid
""",
    "unknown_output_port.yaml": """\
{path}:11:17: error[unknown-port]: node 'student', port 'x': input 'x' refers to 'data.xs', \
but node 'data' (digits) has no output port 'xs'
    expected: one of: data.x, data.y, data.labelled
    found:    'data.xs'
    hint: did you mean 'x'?
1 error: the spec is not valid
""",
    "bad_reference.yaml": """\
{path}:11:17: error[bad-reference]: node 'student', port 'x': input 'x' must name a source \
as 'node.port'
    expected: 'node.port' or 'node.sub.module'
    found:    'data'
    hint: e.g. 'teacher.logits', or 'teacher.layer3' to tap a submodule
1 error: the spec is not valid
""",
    "cycle.yaml": """\
{path}:16:17: error[cycle]: node 'critic', port 'x': the graph has a cycle within one step: \
critic -> generator -> critic
    expected: an acyclic graph: within one step, data flows one way
    found:    critic.y feeds generator.x; generator.y feeds critic.x
    hint: state that feeds back over time belongs to a component (an EMA 'target' node, \
a memory bank), not to an edge
1 error: the spec is not valid
""",
    "type_mismatch.yaml": """\
{path}:15:48: error[type-mismatch]: node 'kd', port 'teacher': 'data.y' (Labels) cannot feed \
input 'teacher' (Logits)
    expected: Logits[B, C] (or a subtype of Logits)
    found:    Labels[B] from data.y
    hint: connect an output of type Logits, e.g. student.logits, or put an op between them \
that produces one: expr with params.type: Logits
1 error: the spec is not valid
""",
    "shape_mismatch.yaml": """\
{path}:20:48: error[shape-mismatch]: node 'kd', port 'teacher': dimension C of input \
'teacher' is 100 (from teacher.logits) but must be 10 (from student.logits via input 'student')
    expected: Logits[B, C=10]
    found:    [B, 100] from teacher.logits
    hint: make both sides agree: set 'num_classes' of 'teacher' to 10, or set 'num_classes' \
of 'student' to 100, or put a projector mapping 100 to 10 in between
1 error: the spec is not valid
""",
    "projector_width.yaml": """\
{path}:26:45: error[shape-mismatch]: node 'hint', port 'teacher': dimension 1 of input \
'teacher' is 256 (from teacher.features) but must be 128 (from regressor.y via input 'student')
    expected: Features[B, 128], the shape of input 'student'
    found:    [B, 256] from teacher.features
    hint: make both sides agree: set 'hidden[-1]' of 'teacher' to 128, or set 'out_features' \
of 'regressor' to 256, or put a projector mapping 256 to 128 in between
1 error: the spec is not valid
""",
    "unfed_input.yaml": """\
{path}:15:5: error[unfed-input]: node 'ce', port 'target': input port 'target' (Labels[B]) \
is not fed by anything
    expected: an entry 'target: <node.port>' under inputs
    found:    inputs: {logits}
    hint: add under inputs: 'target: <node.port>'; candidates: data.y
1 error: the spec is not valid
""",
    "loss_reaches_nothing.yaml": """\
{path}:25:17: error[loss-reaches-nothing]: node 'ce': loss 'ce' in update 'main' reaches \
none of the parameters that update trains (student)
    expected: a gradient path from the loss back to one of: student
    found:    'ce' depends (with gradients) only on: data, teacher
    hint: wire the loss to an output of a trained node, or train a node the loss depends on
1 error: the spec is not valid
""",
    "frozen_in_optimizer.yaml": """\
{path}:23:23: error[frozen-in-optimizer]: node 'teacher': update 'main' lists the frozen \
teacher 'teacher' in its optimizer
    expected: trainable nodes only: student
    found:    'teacher' (a teacher is frozen by default)
    hint: remove 'teacher' from the update, or set 'frozen: false' on the node if you mean \
to train it
1 error: the spec is not valid
""",
    "empty_objective.yaml": """\
{path}:12:3: warning[unused-node]: node 'ce': node 'ce' feeds no loss, student or metric and \
is never run
    expected: a path from the node to a loss of an update, a student or a metric
    found:    no such path
    hint: wire it into a loss, or delete it
{path}:19:5: error[empty-objective]: update 'main' has an empty objective
    expected: at least one 'loss_node: weight' entry (losses: ce)
    found:    objective: {}
    hint: name at least one loss node with its weight, e.g. objective: {ce: 1.0}
1 error: the spec is not valid
""",
    "not_a_loss.yaml": """\
{path}:19:26: error[not-a-loss]: node 'student': update 'main' objective names 'student', \
which is a student, not a loss
    expected: a node of kind 'loss': ce
    found:    kind 'student'
    hint: put a loss node on top of it and name that loss here
1 error: the spec is not valid
""",
    "unknown_tap.yaml": """\
{path}:22:48: error[unknown-tap]: node 'hint', port 'teacher': 'teacher.layer9' taps no \
submodule: 'cnn' has no module at path 'layer9'
    expected: a module path inside teacher
    found:    layer9
    hint: closest module paths: teacher.layer2, teacher.layer1, teacher.layer2.bn, \
teacher.layer1.bn, teacher.layer2.relu
1 error: the spec is not valid
""",
    "bad_yaml.yaml": """\
{path}:7:10: error[yaml-syntax]: cannot parse the spec: expected ',' or '}', but got ':' \
(while parsing a flow mapping)
    expected: well-formed YAML (or JSON)
    found:    line 7: '  student:'
    note: while parsing a flow mapping that starts at {path}:6:13
    hint: check the brackets, quotes, colons and indentation here (YAML does not allow tabs \
for indentation)
1 error: the spec is not valid
""",
    "unknown_top_level_key.yaml": """\
{path}:12:1: error[unknown-key]: unknown key 'update' in the spec
    expected: one of: description, dgraph, export, name, nodes, stages, train, updates
    found:    key 'update'
    hint: did you mean 'updates'?
1 error: the spec is not valid
""",
    "wrong_value_type.yaml": """\
{path}:8:10: error[bad-value]: invalid value for 'train.steps': Input should be a valid \
integer, unable to parse string as an integer
    expected: a valid integer
    found:    'many'
    hint: `dgraph schema` describes every key and the values it accepts
1 error: the spec is not valid
""",
    "unknown_kind.yaml": f"""\
{{path}}:8:11: error[unknown-kind]: node 'student': unknown kind 'studnet'
    expected: one of: {ROLES_LIST}
    found:    kind: studnet
    hint: did you mean 'student'?
1 error: the spec is not valid
""",
    "bad_version.yaml": """\
{path}:2:9: error[bad-version]: this dgraph reads spec language version 1
    expected: dgraph: 1
    found:    dgraph: 2
    hint: upgrade dgraph, or rewrite the spec for this version
1 error: the spec is not valid
""",
    "several_problems.yaml": """\
{path}:20:48: error[shape-mismatch]: node 'kd', port 'teacher': dimension C of input \
'teacher' is 100 (from teacher.logits) but must be 10 (from student.logits via input 'student')
    expected: Logits[B, C=10]
    found:    [B, 100] from teacher.logits
    hint: make both sides agree: set 'num_classes' of 'teacher' to 10, or set 'num_classes' \
of 'student' to 100, or put a projector mapping 100 to 10 in between
{path}:24:46: error[unknown-node]: node 'ce', port 'target': input 'target' refers to an \
unknown node 'dta'
    expected: a node of this spec: data, teacher, student, kd, ce
    found:    'dta.y'
    hint: did you mean 'data'?
{path}:27:23: error[frozen-in-optimizer]: node 'teacher': update 'main' lists the frozen \
teacher 'teacher' in its optimizer
    expected: trainable nodes only: student
    found:    'teacher' (a teacher is frozen by default)
    hint: remove 'teacher' from the update, or set 'frozen: false' on the node if you mean \
to train it
{path}:30:9: error[unknown-node]: export names an unknown node 'studnet'
    expected: a node of this spec: data, teacher, student, kd, ce
    found:    'studnet'
    hint: did you mean 'student'?
4 errors: the spec is not valid
""",
}

# --set VALUE (on the zoo spec kd) -> the complete stderr.
OVERRIDE_CASES: dict[str, str] = {
    "train.steps": """\
<--set train.steps>: error[bad-override]: an override must look like key.path=value
    expected: key.path=value: a dotted key, '=', then a YAML value
    found:    'train.steps' (no '=')
    hint: e.g. --set train.steps=100 or --set nodes.kd.params.temperature=2.0
1 error: the spec is not valid
""",
    "train..steps=3": """\
<--set train..steps=3>: error[bad-override]: the override key 'train..steps' has an empty part
    expected: names separated by single dots, e.g. nodes.kd.params.temperature
    found:    'train..steps'
    hint: remove the doubled, leading or trailing '.'
1 error: the spec is not valid
""",
    "train.steps.every=3": """\
<--set train.steps.every=3>: error[bad-override]: cannot set 'train.steps.every': \
'train.steps' is not a mapping
    expected: a mapping or list at 'train.steps' to set 'every' in
    found:    int 600
    hint: set 'train.steps' itself, e.g. --set train.steps=...
1 error: the spec is not valid
""",
    "updates.main.params.3=teacher": """\
<--set updates.main.params.3=teacher>: error[bad-override]: cannot set \
'updates.main.params.3': index 3 is past the end of 'updates.main.params'
    expected: an index (0..0)
    found:    3
    hint: set the whole list instead: --set updates.main.params=[...]
1 error: the spec is not valid
""",
    "train.steps=[1,": """\
<--set train.steps=[1,>: error[bad-override]: cannot parse the value of the override: \
expected the node content, but found '<stream end>' (while parsing a flow node)
    expected: a YAML value such as 3, 0.5, true, text, [1, 2] or {a: 1}
    found:    '[1,'
    hint: quote text that YAML would misread, e.g. --set "name='a: b'"
1 error: the spec is not valid
""",
    "train.steps=many": """\
<--set train.steps=many>: error[bad-value]: invalid value for 'train.steps': Input should be \
a valid integer, unable to parse string as an integer
    expected: a valid integer
    found:    'many'
    hint: `dgraph schema` describes every key and the values it accepts
1 error: the spec is not valid
""",
    "nodes.kd.params.temprature=2": """\
<--set nodes.kd.params.temprature=2>: error[unknown-param]: node 'kd': component type \
'hinton_kd' has no parameter 'temprature'
    expected: one of: direction, temperature, scale_by_t2
    found:    temprature: 2
    hint: did you mean 'temperature'?
1 error: the spec is not valid
""",
}


def validate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["validate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DGRAPH_DEBUG"}
    return subprocess.run([sys.executable, "-m", "dgraph.cli", *argv], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


def test_every_invalid_spec_has_an_expected_message() -> None:
    files = {p.name for p in INVALID.glob("*.yaml")}
    assert files == set(CASES)
    assert len(files) >= 15


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_spec_message(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(INVALID / name)
    code, out, err = validate(capsys, path)
    assert (code, out) == (1, "")
    assert err == CASES[name].replace("{path}", path)


@pytest.mark.parametrize("value", sorted(OVERRIDE_CASES))
def test_bad_override_message(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, "kd", "--set", value)
    assert (code, out) == (1, "")
    assert err == OVERRIDE_CASES[value]


def test_misspelt_zoo_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, "adversarial_ty")
    assert (code, out) == (1, "")
    assert err == (
        "error[spec-not-found]: spec 'adversarial_ty' not found: no such file, and no zoo "
        "spec of that name\n"
        "    expected: a .yaml/.yml/.json spec file, or a zoo spec name: "
        + ", ".join(zoo_names()) + "\n"
        "    found:    'adversarial_ty'\n"
        "    hint: did you mean 'adversarial_toy'?\n"
        "1 error: the spec is not valid\n"
    )


def test_every_problem_says_where_what_and_how_to_fix(capsys: pytest.CaptureFixture[str]) -> None:
    for name in sorted(CASES):
        path = str(INVALID / name)
        code, out, _ = validate(capsys, "--json", path)
        assert code == 1
        report = json.loads(out)
        assert report["valid"] is False
        for problem in report["problems"]:
            assert problem["location"]["file"] == path, (name, problem)
            assert problem["location"]["line"] > 0 and problem["location"]["column"] > 0
            for key in ("expected", "found", "suggestion", "message", "code"):
                assert problem[key], (name, key, problem)


def test_several_problems_are_reported_at_once_sorted_by_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = str(INVALID / "several_problems.yaml")
    code, out, err = validate(capsys, "--json", path)
    assert (code, err) == (1, "")
    report = json.loads(out)
    assert report["valid"] is False
    rows = [
        (p["code"], p["location"]["file"], p["location"]["line"], p["location"]["column"],
         p["node"], p["port"], p["severity"])
        for p in report["problems"]
    ]
    assert rows == [
        ("shape-mismatch", path, 20, 48, "kd", "teacher", "error"),
        ("unknown-node", path, 24, 46, "ce", "target", "error"),
        ("frozen-in-optimizer", path, 27, 23, "teacher", None, "error"),
        ("unknown-node", path, 30, 9, None, None, "error"),
    ]
    first = report["problems"][0]
    assert first == {
        "code": "shape-mismatch",
        "message": "dimension C of input 'teacher' is 100 (from teacher.logits) but must be 10 "
        "(from student.logits via input 'student')",
        "location": {"file": path, "line": 20, "column": 48},
        "node": "kd",
        "port": "teacher",
        "expected": "Logits[B, C=10]",
        "found": "[B, 100] from teacher.logits",
        "suggestion": "make both sides agree: set 'num_classes' of 'teacher' to 10, or set "
        "'num_classes' of 'student' to 100, or put a projector mapping 100 to 10 in between",
        "notes": [],
        "severity": "error",
    }


def test_json_reports_a_syntax_error_with_its_location(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(INVALID / "bad_yaml.yaml")
    code, out, _ = validate(capsys, "--json", path)
    assert code == 1
    (problem,) = json.loads(out)["problems"]
    assert problem["code"] == "yaml-syntax"
    assert problem["location"] == {"file": path, "line": 7, "column": 10}
    assert problem["notes"] == [f"while parsing a flow mapping that starts at {path}:6:13"]


def test_json_for_a_valid_spec(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = validate(capsys, "--json", "--static", "kd")
    assert code == 0
    assert json.loads(out) == {"valid": True, "problems": []}


@pytest.mark.parametrize("name", zoo_names())
def test_zoo_spec_is_valid_by_name(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, name)
    assert code == 0, err
    assert "error[" not in err
    assert out.startswith(f"{name}: valid (")
    assert out.endswith(", static checks and meta-device dry run)\n")


@pytest.mark.parametrize("name", zoo_names())
def test_zoo_spec_is_valid_by_path(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, "--static", str(resolve_spec_path(name)))
    assert code == 0, err
    assert "error[" not in err
    assert out.startswith(f"{name}: valid (")
    assert out.endswith(", static checks)\n")


def test_subprocess_invalid_spec_exit_code_and_message() -> None:
    for name in ("unknown_node.yaml", "bad_yaml.yaml"):
        result = cli("validate", "--static", name, cwd=INVALID)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == CASES[name].replace("{path}", name)
        assert "Traceback" not in result.stderr


def test_subprocess_valid_spec_exit_code() -> None:
    spec = resolve_spec_path("kd")
    result = cli("validate", "--static", str(spec))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "kd: valid (5 nodes, 7 edges, static checks)\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["validate"], "dgraph validate: error: the following arguments are required: spec"),
        (["frobnicate"], "dgraph: error: argument COMMAND: invalid choice: 'frobnicate'"),
        (["validate", "kd", "--jsn"], "dgraph: error: unrecognized arguments: --jsn"),
        ([], "dgraph: error: the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    result = cli(*argv)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert result.stderr.startswith("usage: dgraph")
    assert "Traceback" not in result.stderr


def test_usage_error_in_process_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate"])
    assert exc.value.code == 2
    assert "the following arguments are required: spec" in capsys.readouterr().err


SHARED_OWNER_TRAINED = """
dgraph: 1
name: shared_owner
nodes:
  data: {kind: data, type: digits, params: {batch_size: 32}}
  student:
    kind: student
    type: mlp
    params: {in_features: 64, hidden: [16], num_classes: 10}
    inputs: {x: data.x}
  again:                       # the student's module applied again
    shares: student
    inputs: {x: data.x}
  ce: {kind: loss, type: cross_entropy, inputs: {logits: again.logits, target: data.y}}
  first: {kind: loss, type: cross_entropy, inputs: {logits: student.logits, target: data.y}}
updates:
  main: {optimizer: {type: adam, lr: 0.001}, params: [student], objective: {ce: 1.0}}
  other: {optimizer: {type: adam, lr: 0.001}, params: [student], objective: {first: 1.0}}
"""


def test_a_loss_through_a_node_sharing_the_trained_module_reaches_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "shared_owner.yaml"
    spec.write_text(SHARED_OWNER_TRAINED)
    code, out, err = validate(capsys, str(spec), "--static")
    assert code == 0, err
    assert "shared_owner: valid" in out
