"""Fake quantisation (quant_mlp, quantize): values, straight-through and LSQ gradients by hand,
calibration then freezing, float weights loading into quantised layers, located errors."""

from __future__ import annotations

import math

import pytest
import torch
from dgraph.components.models._quant import ActQuant, WeightQuant, set_observing
from dgraph.components.models.cnn import CNN
from dgraph.components.models.mlp import MLP
from dgraph.components.models.quant import Quantize, QuantMLP

from dgraph.errors import DgraphError
from dgraph.registry import COMPONENTS, BuildContext


def test_activation_range_is_an_ema_during_calibration_then_frozen():
    quant = ActQuant(bits=2, ema=0.5).train()  # 4 levels: q in {0, 1, 2, 3}
    x = torch.tensor([-1.0, 0.0, 0.4, 1.3, 2.0])
    # range [-1, 2]: s = 3 / 3 = 1, z = 0 - round(-1 / 1) = 1; q = clamp(round(x) + 1, 0, 3)
    assert quant(x).tolist() == [-1.0, 0.0, 0.0, 1.0, 2.0]
    assert (float(quant.scale), int(quant.zero_point)) == (1.0, 1)
    # range [-3, 0]: EMA min = 0.5 * -1 + 0.5 * -3 = -2, max = 0.5 * 2 + 0.5 * 0 = 1
    quant(torch.tensor([-3.0, -1.0]))
    assert (float(quant.min_val), float(quant.max_val)) == (-2.0, 1.0)
    assert (float(quant.scale), int(quant.zero_point)) == (1.0, 2)
    set_observing(quant, False)  # after the window: frozen
    out = quant(torch.tensor([-10.0, -1.4, 0.6, 10.0]))
    assert out.tolist() == [-2.0, -1.0, 1.0, 1.0]  # clamped to [(0 - 2) s, (3 - 2) s]
    assert (float(quant.min_val), float(quant.max_val), float(quant.observed)) == (-2.0, 1.0, 2)


def test_straight_through_gradient_passes_inside_the_range_only():
    quant = ActQuant(bits=2, ema=0.5).train()
    quant(torch.tensor([-1.0, 2.0]))  # s = 1, z = 1: representable [-1, 2]
    set_observing(quant, False)
    x = torch.tensor([-3.0, -0.7, 0.2, 1.6, 2.6], requires_grad=True)
    # the mask is on round(x / s) + z: 2.6 -> 3 + 1 = 4 > q_max is clamped (2.4 would not be)
    quant(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_weights_are_symmetric_per_output_channel():
    quant = WeightQuant(2, bits=8).train()
    w = torch.tensor([[0.504, -1.27, 0.0349], [2.54, 1.011, -0.013]])
    # s = max |w_c| / 127 = 0.01 and 0.02; q = round(w / s) = [50, -127, 3], [127, 51, -1]
    expected = torch.tensor([[0.50, -1.27, 0.03], [2.54, 1.02, -0.02]])
    torch.testing.assert_close(quant(w), expected, atol=1e-6, rtol=0)
    per_tensor = WeightQuant(2, bits=8, per_channel=False).train()
    # one s = 2.54 / 127 = 0.02: row 0 rounds to [25, -64 (63.5, half to even), 2] * 0.02
    torch.testing.assert_close(per_tensor(w)[0], torch.tensor([0.50, -1.28, 0.04]),
                               atol=1e-6, rtol=0)


def test_lsq_scale_gradient_matches_the_formula():
    quant = WeightQuant(1, bits=3, per_channel=False, learn_scale=True).train()
    set_observing(quant, False)  # the scale is now learnt: set it by hand
    with torch.no_grad():
        quant.scale.fill_(0.2)
    w = torch.tensor([-1.0, -0.26, 0.1, 0.34, 0.9], requires_grad=True)
    # 3 bits: q in [-4, 3]; w / s = [-5, -1.3, 0.5, 1.7, 4.5] -> q = [-4, -1, 0, 2, 3]
    out = quant(w)
    torch.testing.assert_close(out, torch.tensor([-0.8, -0.2, 0.0, 0.4, 0.6]))
    out.sum().backward()
    # d/ds: q_min at the low clamp, round(w/s) - w/s inside, q_max at the high clamp, times
    # LSQ's 1 / sqrt(N q_max) with N = 5 elements, q_max = 3
    inside = (-1 + 1.3) + (0 - 0.5) + (2 - 1.7)
    expected = (-4 + inside + 3) / math.sqrt(5 * 3)
    assert quant.scale.grad.item() == pytest.approx(expected, abs=1e-6)
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_activation_scale_gradient_per_example_size():
    quant = ActQuant(bits=2, learn_scale=True, lsq_grad_scale=False).train()
    quant(torch.tensor([[0.0, 3.0]]))  # s = 1, z = 0
    set_observing(quant, False)
    x = torch.tensor([[0.4, 1.6, 5.0]])
    quant(x).sum().backward()  # (0 - 0.4) + (2 - 1.6) + q_max 3, gradient factor 1
    assert quant.scale.grad.item() == pytest.approx(3.0, abs=1e-6)


def test_quant_mlp_trains_with_kd_and_keeps_the_mlp_weight_names():
    torch.manual_seed(0)
    teacher = MLP.create(in_features=16, hidden=[32], num_classes=4)
    student = QuantMLP.create(in_features=16, hidden=[8], num_classes=4, bits=4, act_bits=4,
                              learn_scales=True, calibrate_steps=5)
    optim = torch.optim.Adam(student.parameters(), lr=0.01)
    x = torch.randn(256, 16)
    with torch.no_grad():
        target = torch.softmax(teacher(x=x)["logits"] * 3, -1)
    losses = []
    for step in range(60):
        student.set_step(step)
        log_q = torch.log_softmax(student(x=x)["logits"], -1)
        loss = (target * (target.log() - log_q)).sum(-1).mean()  # KL(teacher || student)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert student.head.weight_quant.scale.grad is not None  # the scales were learnt
    assert float(student.head.input_quant.observed) == 5  # observed in the window only
    # 4-bit weights: at most 16 distinct values per output channel
    student.eval()
    w = student.head.weight_quant(student.head.weight)
    assert all(len(torch.unique(row)) <= 16 for row in w)
    # the float mlp's weights load into the quantised one (its quantisers keep their state)
    float_student = MLP.create(in_features=16, hidden=[8], num_classes=4)
    scale = student.head.input_quant.scale.detach().clone()
    student.load_state_dict(float_student.state_dict())
    assert torch.equal(student.head.weight, float_student.head.weight)
    assert torch.equal(student.head.input_quant.scale, scale)


def test_eval_of_narrow_bits_equals_training_forward():
    # Below 8 bits evaluation clamps, then uses the 8-bit op (what ONNX can hold): same values.
    torch.manual_seed(1)
    for quant in (ActQuant(bits=3), WeightQuant(4, bits=3)):
        x = torch.randn(4, 6) * 3
        if isinstance(quant, ActQuant):
            quant.train()(x)
        set_observing(quant, False)
        trained = quant.train()(x)
        assert torch.equal(quant.eval()(x), trained)


def test_quantize_wraps_any_node_with_linear_or_conv_layers():
    torch.manual_seed(0)
    cnn = CNN.create(in_channels=1, channels=[4, 8], num_classes=10, image_size=8)
    quant = Quantize.create(BuildContext(node="student", references={"base": cnn}),
                            base="teacher", layers=["conv", "head"])
    names = {n for n, m in quant.named_modules()
             if type(m).__name__ in ("QuantLinear", "QuantConv2d")}
    assert names == {"base.layer1.conv", "base.layer2.conv", "base.head"}
    images = torch.rand(3, 1, 8, 8)
    out = quant(x=images)
    assert out["logits"].shape == (3, 10)
    # weights saved by the cnn node (no "base." prefix) load into the copy
    quant.load_state_dict(cnn.state_dict())
    assert torch.equal(quant.base.head.weight, cnn.head.weight)
    quant.set_step(100)  # past the window (calibrate_steps 100): frozen
    assert not quant.base.head.input_quant.observing


def test_quantize_names_the_layers_when_none_match():
    mlp = MLP.create(in_features=4, hidden=[3], num_classes=2)
    with pytest.raises(DgraphError) as error:
        Quantize.create(BuildContext(node="student", references={"base": mlp}),
                        base="float", layers=["conv"])
    assert str(error.value) == ("node 'student': no layer to quantise matches ['conv']; the "
                                "layers are: body.0, head")


def test_calibration_window_is_required_with_activation_quantisation():
    params = COMPONENTS.get("quant_mlp").Params
    with pytest.raises(ValueError) as error:
        params.model_validate({"in_features": 4, "num_classes": 2, "calibrate_steps": 0})
    assert ("calibrate_steps must be >= 1 when activations are quantised (act_bits > 0): "
            "their ranges are observed during those steps") in str(error.value)
    params.model_validate({"in_features": 4, "num_classes": 2, "calibrate_steps": 0,
                           "act_bits": 0})
