"""Spec text never becomes code: names are checked, and generated steps embed them safely.

Node and update names either pass validation (they match ``[A-Za-z_][A-Za-z0-9_]*``) or are
refused with a located problem; in the generated source a name appears only inside string
literals or inside identifiers dgraph derived from it (checked with ``tokenize``). The
compiler keeps its own guard for graphs that reach it without validation.
"""

from __future__ import annotations

import io
import json
import keyword
import re
import tempfile
import tokenize
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgraph.compiler.codegen import compile_graph
from dgraph.errors import DgraphError, SpecError, ValidationError
from dgraph.graph import validate
from dgraph.registry import load_plugins
from dgraph.spec import load_spec

load_plugins()

NAME_RULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _spec(update: str, loss: str, node: str) -> dict:
    """A small KD spec with three names chosen by the test (no data is read to compile it)."""
    return {
        "dgraph": 1,
        "name": "names",
        "nodes": {
            "data": {"kind": "data", "type": "digits", "params": {"batch_size": 8}},
            node: {"kind": "teacher", "type": "mlp",
                   "params": {"in_features": 64, "hidden": [8], "num_classes": 10},
                   "inputs": {"x": "data.x"}},
            "student": {"kind": "student", "type": "mlp",
                        "params": {"in_features": 64, "hidden": [8], "num_classes": 10},
                        "inputs": {"x": "data.x"}},
            loss: {"kind": "loss", "type": "hinton_kd",
                   "inputs": {"student": "student.logits", "teacher": f"{node}.logits"}},
        },
        "updates": {update: {"optimizer": {"type": "adam", "lr": 0.001},
                             "params": ["student"], "objective": {loss: 1.0}}},
        "train": {"steps": 1},
    }


def _load(data: dict, folder: Path):
    path = folder / "spec.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    spec = load_spec(path)
    graph, _ = validate(spec)
    return graph


def _structure(source: str) -> list[tuple]:
    """Each line's token stream with string literals, names and comments blanked out, sorted.

    Sorted because node names decide the order of independent statements (the topological
    order is lexicographic); what they must never change is what the statements are.
    """
    lines: dict[int, list[tuple[int, str]]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        blank = tok.type in (tokenize.STRING, tokenize.NAME, tokenize.COMMENT)
        lines.setdefault(tok.start[0], []).append((tok.type, "" if blank else tok.string))
    return sorted(tuple(line) for line in lines.values())


def _assert_only_literal_or_derived(source: str, names: list[str]) -> None:
    """Every occurrence of a spec name lies in a string literal or a derived identifier."""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING:
            continue
        text = tok.string
        for name in names:
            if name not in text:
                continue
            if tok.type == tokenize.NAME:
                # m_<name>, o_<name>, step_<name>, v_<name>__<port>, possibly suffixed _2.
                assert re.fullmatch(r"(?:[mtocb]_|step_|v_)?[A-Za-z0-9_]+", text), text
            elif tok.type == tokenize.COMMENT:
                assert re.fullmatch(
                    r"# [A-Za-z0-9_]+: [a-z]+ [A-Za-z0-9_]+ \([a-z ]+\)", text), text
            else:
                kind = tokenize.tok_name[tok.type]
                pytest.fail(f"name {name!r} reached generated code as {kind} token {text!r}")


def _problem_is_located(exc: DgraphError) -> None:
    if isinstance(exc, ValidationError):
        assert exc.problems
        assert all(p.location is not None and p.location.line > 0 for p in exc.problems), exc
    else:
        assert isinstance(exc, SpecError) and exc.location is not None, exc


NAMES = st.one_of(
    st.text(min_size=0, max_size=12),
    st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=12),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
    st.sampled_from(["u\"\"\"; __import__('os').system('touch /tmp/pwned'); \"\"\"",
                     "kd\nimport os", "a'b", "class", "def", "return", "None", "__init__",
                     "x" * 65, "é", "ﬁ", "a b", "a.b", "a-b", "1a", "", "_"]),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(update=NAMES, loss=NAMES, node=NAMES)
def test_any_unicode_name_is_refused_with_a_location_or_stays_data(update, loss, node):
    taken = {"data", "student"}
    if loss in taken or node in taken or loss == node:
        return
    with tempfile.TemporaryDirectory() as folder:
        try:
            graph = _load(_spec(update, loss, node), Path(folder))
        except DgraphError as exc:
            bad = [n for n in (update, loss, node) if not NAME_RULE.match(n) or len(n) > 64]
            assert bad, f"valid names {update!r}, {loss!r}, {node!r} were refused: {exc}"
            _problem_is_located(exc)
            return
    for name in (update, loss, node):
        assert NAME_RULE.match(name), f"{name!r} was accepted"
    program = compile_graph(graph)
    reference = compile_graph(_load(_spec("u", "l", "n"), Path(tempfile.mkdtemp())))
    for plan, ref in zip(program.plans.values(), reference.plans.values(), strict=True):
        compile(plan.source, "<test>", "exec")  # it is Python
        assert _structure(plan.source) == _structure(ref.source)
        _assert_only_literal_or_derived(plan.source, [update, loss, node])


def test_update_name_with_code_is_refused_at_its_key(tmp_path):
    evil = "u\"\"\"; __import__('os').system('touch pwned'); \"\"\""
    with pytest.raises(ValidationError) as info:
        _load(_spec(evil, "kd", "teacher"), tmp_path)
    problem = info.value.problems[0]
    assert problem.location is not None and problem.location.line == 1
    assert problem.found == repr(evil)
    assert not (tmp_path / "pwned").exists()


def test_keywords_are_allowed_names_because_generated_code_prefixes_them(tmp_path):
    graph = _load(_spec("class", "lambda", "return"), tmp_path)
    program = compile_graph(graph)
    plan = program.plans["class"]
    assert plan.function == "step_class"
    assert "v_lambda__loss = m_lambda(student=v_student__logits, teacher=v_return__logits)" \
        in plan.source
    assert keyword.iskeyword("lambda")


def test_compiler_refuses_unchecked_names_even_without_validation(tmp_path):
    """A graph whose names slipped past validation cannot be compiled into code."""
    graph = _load(_spec("main", "kd", "teacher"), tmp_path)
    plan_spec = graph.spec.updates["main"]
    graph.spec.updates.clear()
    graph.spec.updates["main\nimport os"] = plan_spec
    with pytest.raises(DgraphError, match=re.escape(
            "name 'main\\nimport os' cannot be compiled: generated code only uses names "
            "matching [A-Za-z_][A-Za-z0-9_]*; validate the spec first (dgraph validate)")):
        compile_graph(graph)
