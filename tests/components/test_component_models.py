"""Models, projectors, learnable tensors and ops: forward shapes equal the declared ports."""

from __future__ import annotations

import pytest
import torch
from dgraph.components.models.cnn import layer_shapes
from pydantic import ValidationError

from dgraph.ports import Port, parse_shape
from dgraph.registry import BuildContext

CTX = BuildContext(node="test")


def concrete(port: Port, params: dict, **symbols: int) -> tuple[int, ...]:
    """A port's declared shape with parameters substituted and the remaining symbols given."""
    dims = parse_shape(port.shape, params)
    assert dims is not None
    out = []
    for dim in dims:
        assert not dim.ellipsis
        out.append(dim.size if dim.size is not None else symbols[dim.symbol])
    return tuple(out)


def check_outputs(comp, module, inputs: dict, **symbols: int) -> dict:
    params = comp.port_params()
    outputs = comp.resolved_outputs({})
    result = module(**inputs)
    assert set(result) == set(outputs)
    for name, port in outputs.items():
        assert tuple(result[name].shape) == concrete(port, params, **symbols), name
    return result


@pytest.mark.parametrize(
    "params",
    [
        {"in_channels": 1, "channels": [16, 32], "num_classes": 10, "image_size": 8},
        {"in_channels": 3, "channels": [8, 16, 24], "num_classes": 5, "image_size": 15,
         "downsample_first": True},
    ],
)
def test_cnn_forward_matches_ports(make, params):
    comp = make("cnn", **params)
    module = comp.build(CTX)
    x_shape = concrete(comp.resolved_inputs({})["x"], comp.port_params(), B=4)
    assert x_shape == (4, params["in_channels"], params["image_size"], params["image_size"])
    out = check_outputs(comp, module, {"x": torch.randn(x_shape)}, B=4)
    assert out["features"].shape == (4, params["channels"][-1])


def test_cnn_blocks_are_tappable_and_layer_shapes_are_right(make):
    comp = make("cnn", in_channels=1, channels=[16, 32, 64], num_classes=10, image_size=8)
    assert comp.tappable
    module = comp.build(CTX)
    named = dict(module.named_modules())
    assert {"layer1", "layer2", "layer3", "head"} <= set(named)
    seen = {}
    for name in ("layer1", "layer2", "layer3"):
        named[name].register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out.shape[1:]))
        )
    module(x=torch.randn(2, 1, 8, 8))
    assert seen == layer_shapes(comp.params) == {
        "layer1": (16, 8, 8), "layer2": (32, 4, 4), "layer3": (64, 2, 2)
    }
    assert isinstance(named["layer1"].bn, torch.nn.BatchNorm2d)


def test_cnn_rejects_bad_params(make):
    with pytest.raises(ValidationError):
        make("cnn", in_channels=1, channels=[16, 0], num_classes=10, image_size=8)
    with pytest.raises(ValidationError):
        make("cnn", in_channels=1, channels=[], num_classes=10, image_size=8)
    with pytest.raises(ValidationError):
        make("cnn", in_channels=1, num_classes=10, image_size=8, width=3)


def test_mlp_forward_matches_ports(make):
    comp = make("mlp", in_features=64, hidden=[32, 16], num_classes=10)
    check_outputs(comp, comp.build(CTX), {"x": torch.randn(5, 64)}, B=5)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_projector(make, bias):
    comp = make("linear_projector", in_features=12, out_features=7, bias=bias)
    module = comp.build(CTX)
    check_outputs(comp, module, {"x": torch.randn(3, 12)}, B=3)
    assert (module.proj.bias is not None) == bias
    x = torch.randn(3, 12)
    expected = x @ module.proj.weight.T + (module.proj.bias if bias else 0.0)
    assert torch.allclose(module(x=x)["y"], expected, atol=1e-6)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_conv1x1_projector(make, batch_norm):
    comp = make("conv1x1_projector", in_channels=16, out_channels=32, batch_norm=batch_norm)
    module = comp.build(CTX)
    check_outputs(comp, module, {"x": torch.randn(2, 16, 5, 6)}, B=2, H=5, W=6)
    assert isinstance(module.bn, torch.nn.BatchNorm2d) == batch_norm
    assert (module.conv.bias is None) == batch_norm


@pytest.mark.parametrize(
    ("init", "check"),
    [
        ("zeros", lambda v: bool((v == 0).all())),
        ("ones", lambda v: bool((v == 1).all())),
        ("uniform", lambda v: bool(((v >= -2) & (v <= 3)).all()) and v.std() > 0.5),
        ("normal", lambda v: abs(float(v.mean()) - 1.0) < 0.2 and abs(float(v.std()) - 0.5) < 0.1),
    ],
)
def test_learnable_tensor(make, init, check):
    comp = make("learnable_tensor", shape=[20, 1, 8, 8], init=init, mean=1.0, std=0.5, low=-2.0,
                high=3.0, type="Images")
    port = comp.resolved_outputs({})["value"]
    assert port.type == "Images" and port.shape == "20, 1, 8, 8"
    module = comp.build(CTX)
    out = check_outputs(comp, module, {})
    value = out["value"]
    assert value.requires_grad and check(value.detach())
    assert [n for n, _ in module.named_parameters()] == ["value"]
    value.sum().backward()
    assert torch.equal(module.value.grad, torch.ones(20, 1, 8, 8))


def test_learnable_tensor_rejects_bad_params(make):
    with pytest.raises(ValidationError, match="unknown semantic type"):
        make("learnable_tensor", shape=[3], type="Imagez")
    with pytest.raises(ValidationError, match="carries no gradient"):
        make("learnable_tensor", shape=[3], type="Labels")
    with pytest.raises(ValidationError, match="low < high"):
        make("learnable_tensor", shape=[3], init="uniform", low=1.0, high=1.0)
    with pytest.raises(ValidationError):
        make("learnable_tensor", shape=[3, 0])


def test_flatten(make):
    comp = make("flatten")
    module = comp.build(CTX)
    x = torch.randn(4, 3, 2, 5)
    out = module(x=x)
    assert out["y"].shape == (4, 30)
    assert torch.equal(out["y"], x.reshape(4, 30))
    assert comp.resolved_outputs({})["y"].type == "Features"
    assert parse_shape(comp.resolved_outputs({})["y"].shape)[0].symbol == "B"


def test_detach_stops_gradient_and_keeps_type(make, tmp_path):
    comp = make("detach")
    assert comp.resolved_inputs({})["x"].type == "Tensor"
    assert comp.resolved_outputs({})["y"].like == "x"  # the type of what feeds x
    x = torch.randn(3, 4, requires_grad=True)
    y = comp.build(CTX)(x=x)["y"]
    assert torch.equal(y, x) and not y.requires_grad
    (x * 2).sum().backward()  # x itself still works with autograd
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        make("detach", type="Logits")  # the type comes from the input now
    from dgraph.graph import validate
    from dgraph.spec import load_spec

    spec = tmp_path / "detach.yaml"
    spec.write_text(
        "dgraph: 1\nname: detach\nnodes:\n"
        "  data: {kind: data, type: digits}\n"
        "  student: {kind: student, type: mlp, params: {in_features: 64, num_classes: 10},\n"
        "            inputs: {x: data.x}}\n"
        "  stop: {kind: op, type: detach, inputs: {x: student.logits}}\n"
        "  kd: {kind: loss, type: hinton_kd, inputs: {student: student.logits,\n"
        "                                             teacher: stop.y}}\n"
        "updates:\n  main: {optimizer: {type: adam, lr: 0.001}, params: [student],\n"
        "         objective: {kd: 1}}\n")
    graph, _ = validate(load_spec(spec))  # detached logits feed a Logits input
    assert graph.nodes["stop"].outputs["y"].type == "Logits"
