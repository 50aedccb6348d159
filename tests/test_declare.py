"""Declaring a component once: ports and parameters come from one signature."""

from __future__ import annotations

import re

import pytest
import torch
from pydantic import ValidationError as PydanticValidationError

from dgraph.declare import (
    Features,
    Logits,
    Module,
    Outputs,
    PortNames,
    Scalar,
    Tensor,
    TypeOf,
    component,
    loss,
    model,
    param,
    preset,
)
from dgraph.errors import RegistryError
from dgraph.registry import COMPONENTS, BuildContext, load_plugins

load_plugins()


@loss("test_declare_lskd")
def lskd(student: Logits("B, C", "student scores"), teacher: Logits("B, C"), *,
         temperature: float = param(2.0, gt=0.0, doc="softmax temperature")) -> Scalar:
    """Logit-standardised KD (the whole loss is these lines)."""
    def z(x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(1e-7)

    log_p = torch.log_softmax(z(student) / temperature, -1)
    return torch.nn.functional.kl_div(log_p, torch.log_softmax(z(teacher) / temperature, -1),
                                      reduction="batchmean", log_target=True)


@model("test_declare_net", roles=("student", "model"))
class Net(Module):
    """A linear map with a tappable submodule."""

    def __init__(self, *, width: int = param(ge=1, doc="input width"),
                 classes: list[int] = param([3], doc="output widths")) -> None:
        super().__init__()
        self.head = torch.nn.Linear(width, classes[0])

    def forward(self, x: Features("B, {width}")) -> Outputs(logits=Logits("B, {classes[0]}")):
        return {"logits": self.head(x)}


def test_function_signature_gives_ports_params_and_docs():
    cls = COMPONENTS.get("test_declare_lskd")
    assert cls.roles == ("loss",)
    assert list(cls.inputs) == ["student", "teacher"]
    assert cls.inputs["student"].doc == "student scores"
    assert list(cls.outputs) == ["loss"] and cls.outputs["loss"].type == "Scalar"
    schema = cls.Params.model_json_schema()["properties"]["temperature"]
    assert schema == {"default": 2.0, "description": "softmax temperature",
                      "exclusiveMinimum": 0.0, "title": "Temperature", "type": "number"}
    assert cls.doc() == "Logit-standardised KD (the whole loss is these lines)."
    with pytest.raises(PydanticValidationError, match="greater than 0"):
        cls.Params(temperature=0)
    with pytest.raises(PydanticValidationError, match="Extra inputs are not permitted"):
        cls.Params(temprature=1.0)


def test_function_component_computes_its_formula():
    cls = COMPONENTS.get("test_declare_lskd")
    module = cls(cls.Params(), "n").build(BuildContext("n"))
    s = torch.tensor([[1.0, 2.0, 3.0]])
    out = module(student=s, teacher=s * 10)
    # Standardisation removes scale and shift: identical standardised logits, KL = 0.
    assert out.keys() == {"loss"} and abs(float(out["loss"])) < 1e-6


def test_class_component_becomes_a_torch_module_with_its_state():
    cls = COMPONENTS.get("test_declare_net")
    assert cls.roles == ("student", "model") and cls.tappable
    assert cls.inputs["x"].shape == "B, {width}"
    built = cls(cls.Params(width=4), "n").build(BuildContext("n"))
    assert isinstance(built, torch.nn.Module) and isinstance(built, Net)
    assert set(built.state_dict()) == {"head.weight", "head.bias"}
    assert built(x=torch.ones(2, 4))["logits"].shape == (2, 3)
    with pytest.raises(PydanticValidationError, match="Field required"):
        cls.Params()


def test_preset_changes_defaults_only():
    kl = preset("test_declare_lskd_t4", lskd, doc="LSKD at T=4.", temperature=4.0)
    assert kl.Params().temperature == 4.0 and kl.Params(temperature=1.0).temperature == 1.0
    assert kl.inputs == COMPONENTS.get("test_declare_lskd").inputs
    assert kl.doc() == "LSKD at T=4."


def test_declarations_are_checked_when_imported():
    with pytest.raises(RegistryError, match=re.escape(
            "input 'x' must be annotated with a port such as Logits(\"B, C\"); found "
            "<class 'int'>")):
        @loss("test_declare_bad_port")
        def bad(x: int, *, k: float = 1.0) -> Scalar:
            return x
    with pytest.raises(RegistryError, match=re.escape("parameter 'k' needs a type annotation")):
        @loss("test_declare_bad_param")
        def bad2(x: Logits("B, C"), *, k=1.0) -> Scalar:
            return x
    with pytest.raises(RegistryError, match=re.escape(
            "the return annotation must give the output ports")):
        @loss("test_declare_no_return")
        def bad3(x: Logits("B, C")):
            return x
    with pytest.raises(RegistryError, match=re.escape(
            "output 'y' takes the type of input 'z', which is not an input port")):
        @component("test_declare_bad_like", roles=("op",))
        def bad4(x: Logits("B, C")) -> TypeOf("z")("B, C"):
            return x
    with pytest.raises(RegistryError, match="already registered"):
        @loss("test_declare_lskd")
        def again(x: Logits("B, C")) -> Scalar:
            return x


def _positive_gap(params) -> None:
    if params.gap <= 0:
        raise ValueError(f"gap must be positive, found {params.gap}")


@loss("test_declare_gap", check=_positive_gap)
def gap_loss(student: Features("B, D", "student side"), teacher: Features("B, D"), *,
             gap: float = param(1.0, doc="margin"),
             names: PortNames) -> Scalar:
    """``relu(gap - (s - t))`` summed; a shape mismatch names the ports as the spec does."""
    if student.shape != teacher.shape:
        raise ValueError(f"'{names['student']}' has shape {list(student.shape)} but "
                         f"'{names['teacher']}' has shape {list(teacher.shape)}")
    return torch.relu(gap - (student - teacher)).sum()


def test_preset_renames_ports_and_keeps_the_check():
    renamed = preset("test_declare_gap_renamed", gap_loss, doc="The gap over any tensors.",
                     inputs={"prediction": Tensor("B, D", "predicted values"),
                             "target": Tensor("B, D", "target values")},
                     outputs={"loss": Scalar(None, "hinge")}, gap=2.0)
    assert {name: port.type for name, port in renamed.inputs.items()} == {
        "prediction": "Tensor", "target": "Tensor"}
    assert renamed.outputs["loss"].doc == "hinge" and "names" not in renamed.Params.model_fields
    module = renamed(renamed.Params(), "n").build(BuildContext("n"))
    value = module(prediction=torch.tensor([[1.0, 0.5]]), target=torch.zeros(1, 2))["loss"]
    assert value.item() == 2.5  # relu(2 - 1) + relu(2 - 0.5)
    with pytest.raises(ValueError, match=re.escape(
            "'prediction' has shape [1, 2] but 'target' has shape [2]")):
        module(prediction=torch.zeros(1, 2), target=torch.zeros(2))
    base = COMPONENTS.get("test_declare_gap")
    with pytest.raises(ValueError, match=re.escape(
            "'student' has shape [1, 2] but 'teacher' has shape [2]")):
        base(base.Params(), "n").build(BuildContext("n"))(student=torch.zeros(1, 2),
                                                          teacher=torch.zeros(2))
    with pytest.raises(PydanticValidationError, match="gap must be positive, found -1.0"):
        renamed.Params(gap=-1.0)


def test_preset_ports_are_checked():
    with pytest.raises(RegistryError, match=re.escape(
            "preset 'test_declare_gap_one' of 'test_declare_gap': inputs must declare one port "
            "for each input of 'test_declare_gap' (student, teacher), in that order; found x")):
        preset("test_declare_gap_one", gap_loss, doc="x.", inputs={"x": Tensor("B, D")})
    with pytest.raises(RegistryError, match=re.escape(
            "preset 'test_declare_gap_out' of 'test_declare_gap': unknown outputs ['value']; "
            "'test_declare_gap' outputs loss")):
        preset("test_declare_gap_out", gap_loss, doc="x.", outputs={"value": Scalar()})
    with pytest.raises(RegistryError, match=re.escape(
            "preset 'test_declare_gap_clash' of 'test_declare_gap': inputs ['gap'] have the "
            "names of parameters")):
        preset("test_declare_gap_clash", gap_loss, doc="x.",
               inputs={"gap": Tensor("B, D"), "target": Tensor("B, D")})


def test_the_readme_component_example_is_real(tmp_path, capsys):
    """README's "Write a component" block, imported as a file, is listed as README says."""
    import importlib.util
    from pathlib import Path

    from dgraph.cli import main

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Write a component", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme_lskd.py"
    path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("readme_lskd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = COMPONENTS.get("lskd")
    built = cls(cls.Params(), "n").build(BuildContext("n"))
    s = torch.tensor([[1.0, 2.0, 4.0]])
    t = torch.tensor([[0.0, 3.0, 1.0]])
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    p = torch.softmax(z(t[0]) / 2.0, -1)
    q = torch.softmax(z(s[0]) / 2.0, -1)
    assert float(built(student=s, teacher=t)["loss"]) == pytest.approx(
        float((p * (p / q).log()).sum()), rel=1e-6)
    assert main(["list", "loss"]) == 0
    out = capsys.readouterr().out
    block = out.split("lskd  [loss]", 1)[1].split("\n\n", 1)[0]
    assert "    student: Logits[B, C]  student scores" in block
    assert "    temperature: float = default 2.0, > 0.0  softmax temperature" in block
