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
    Scalar,
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
