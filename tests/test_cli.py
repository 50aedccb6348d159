"""`dgraph list`, `dgraph list KIND` and `dgraph compile`: what the CLI prints and exits with."""

from __future__ import annotations

import json

import pytest

from dgraph.cli import main
from dgraph.registry import COMPONENTS, ROLES, load_plugins

load_plugins()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def blocks(listing: str) -> dict[str, str]:
    """`dgraph list` output split into one block per type, keyed by type name."""
    out = {}
    for block in listing.strip("\n").split("\n\n"):
        out[block.split("  ", 1)[0]] = block
    return out


def test_list_shows_every_type_with_ports_params_defaults_and_doc(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "list")
    assert (code, err) == (0, "")
    shown = blocks(out)
    assert list(shown) == list(COMPONENTS)
    for name, cls in COMPONENTS.items():
        lines = shown[name].splitlines()
        assert lines[0] == f"{name}  [{', '.join(cls.roles)}]  ({COMPONENTS.origin(name)})"
        doc = cls.doc().splitlines()
        assert doc, f"{name} has no doc"
        assert lines[1: 1 + len(doc)] == [f"    {d}" for d in doc]
        for port, decl in cls.inputs.items():
            assert any(line.startswith(f"    {port}: {decl.type}[") for line in lines), port
        for port, decl in cls.outputs.items():
            assert any(line.startswith(f"    {port}: {decl.type}[") for line in lines), port
        for pname, field in cls.Params.model_fields.items():
            (line,) = [ln for ln in lines if ln.startswith(f"    {pname}: ")
                       and (" = default " in ln or " = required" in ln)]
            if field.is_required():
                assert " = required" in line
            else:
                default = json.dumps(field.get_default(call_default_factory=True), default=str)
                assert f" = default {default}" in line


def test_list_block_of_hinton_kd(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "loss")
    assert code == 0
    doc = "\n".join(f"    {d}" for d in COMPONENTS.get("hinton_kd").doc().splitlines())
    assert blocks(out)["hinton_kd"] == (
        "hinton_kd  [loss]  (preset of kl_div)\n"
        f"{doc}\n"
        "  inputs:\n"
        "    student: Logits[B, C]  student class scores\n"
        "    teacher: Logits[B, C]  teacher class scores (same classes)\n"
        "  outputs:\n"
        "    loss: Scalar[*]  KD loss\n"
        "  params:\n"
        '    direction: "forward" | "reverse" = default "forward"  forward: KL(p_t || p_s); '
        "reverse: KL(p_s || p_t)\n"
        "    temperature: float = default 4.0, > 0.0, <= 1000.0  softmax temperature T\n"
        "    scale_by_t2: bool = default true  multiply by T^2 so gradient magnitudes do not "
        "shrink as T grows"
    )


def test_list_shows_literal_and_list_params_readably(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "list")
    shown = blocks(out)
    assert '    reduction: "mean" | "sum" | "half_squared_norm" = default "mean"' in shown["mse"]
    assert "    hidden: list[int] = default [128]  hidden layer widths" in shown["mlp"]
    assert "    copy_every: int | None = default null" in shown["ema"]


def test_list_loss_shows_only_losses(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "loss")
    assert (code, err) == (0, "")
    shown = blocks(out)
    expected = [name for name, cls in COMPONENTS.items() if "loss" in cls.roles]
    assert list(shown) == expected
    assert {"cross_entropy", "hinton_kd", "feature_mse", "mse"} <= set(shown)
    assert "mlp" not in shown


@pytest.mark.parametrize(
    ("kind", "hint"),
    [("nonsense", ""), ("studnet", "; did you mean 'student'?")],
)
def test_list_unknown_kind_exits_2(kind: str, hint: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", kind)
    assert (code, out) == (2, "")
    assert err == f"dgraph list: unknown kind '{kind}'{hint} (kinds: {', '.join(ROLES)})\n"


def test_compile_kd_prints_the_step_function(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", "kd")
    assert (code, err) == (0, "")
    assert out.startswith("# dgraph compiled program (spec text appears only in string "
                          "literals)\nSPEC_NAME = 'kd'\n")
    assert "\ndef step_main(batch, w):\n" in out
    assert ("    v_kd__weighted = v_kd__loss if w['kd'] == 1.0 else w['kd'] * v_kd__loss\n"
            "    v_ce__weighted = v_ce__loss if w['ce'] == 1.0 else w['ce'] * v_ce__loss\n"
            "    total = v_kd__weighted + v_ce__weighted\n") in out
    compile(out, "<dgraph compile kd>", "exec")  # the printed program is valid Python


def test_compile_of_an_invalid_spec_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", "kd", "--set", "nodes.kd.inputs.teacher=data.y")
    assert (code, out) == (1, "")
    assert "error[type-mismatch]: node 'kd', port 'teacher'" in err
    assert err.endswith("1 error: the spec is not valid\n")
