"""Quantisation-aware students: fake-quantised weights and activations trained with KD.

Quantized distillation (Polino, Pascanu & Alistarh 2018) trains a student whose weights are
quantised, with the distillation loss, and "differentiable quantization" learns where the
quantisation points are. Here:

* weights: symmetric, per output channel by default, ``bits`` signed levels,
  ``scale = max |w| / (2^(bits-1) - 1)`` (zero point 0);
* activations (each quantised layer's input): per-tensor affine, ``act_bits`` unsigned
  levels; the range is an exponential moving average of the batches' ``[min, max]`` during the
  first ``calibrate_steps`` training steps, then frozen;
* rounding and the straight-through estimator are torch's fake-quantisation ops (the gradient
  passes unchanged inside the range, is 0 where the value is clamped);
* ``learn_scales: true``: after the calibration window the scales are trained (LSQ, Esser et
  al. 2020): ``d x_hat / d s = round(x/s) - x/s`` inside the range, ``q_min - z`` / ``q_max - z``
  at the clamps, times ``1 / sqrt(N q_max)`` (``N`` elements per example or per channel).

``quant_mlp`` is the ``mlp`` with its linear layers quantised (same parameters and ports, plus
the quantisation parameters); ``quantize`` quantises a copy of any model node (``base``) with
``nn.Linear``/``Conv1d``/``Conv2d`` layers (a ``cnn``, an ``mlp``) and has its ports.
Quantised layers keep the float layers' weight names, so ``init: {run: ..., node: ...}`` of a
float run starts a quantised student from trained float weights. ``dgraph export`` writes the
quantiser pairs as ONNX QuantizeLinear/DequantizeLinear and stores the quantised weights as
int8 tensors (see ``dgraph.exporters.onnx_export.fold_weight_quantization``).
"""

from __future__ import annotations

from typing import Any

from dgraph.declare import Features, Logits, Module, NodeRef, Outputs, model, param
from dgraph.errors import DgraphError
from dgraph.registry import BuildContext

from .mlp import MLP, Activation, Widths

__all__ = ["QuantMLP", "Quantize"]


def _check_bits(params: Any) -> None:
    if params.calibrate_steps == 0 and params.act_bits:
        raise ValueError("calibrate_steps must be >= 1 when activations are quantised "
                         "(act_bits > 0): their ranges are observed during those steps")


class _Quantised:
    """What both components share: the quantisation config and the calibration window."""

    calibrate_steps: int

    def _quantise(self, target: Any, layers: list[str], node: str, **config: Any) -> list[str]:
        from ._quant import fill_missing_quant_state, quantize_module

        self.calibrate_steps = config.pop("calibrate_steps")
        try:
            names = quantize_module(target, config, layers)
        except ValueError as exc:
            raise DgraphError(f"node '{node}': {exc}") from None
        self.register_load_state_dict_pre_hook(fill_missing_quant_state)  # type: ignore
        return names

    def set_step(self, step: int) -> None:
        """The StepAware protocol: observe ranges during the first ``calibrate_steps`` steps."""
        from ._quant import set_observing

        set_observing(self, step < self.calibrate_steps)  # type: ignore[arg-type]


# The quantisation parameters both components take (each declaration names these).
_BITS = param(8, ge=2, le=8, doc="weight bits (symmetric, signed)")
_ACT_BITS = param(8, ge=0, le=8, doc="activation bits (affine, unsigned); 0 leaves "
                  "activations in float")
_PER_CHANNEL = param(True, doc="one weight scale per output channel (else one per tensor)")
_LEARN_SCALES = param(False, doc="train the scales (LSQ gradient) after the calibration "
                      "window")
_LSQ_GRAD_SCALE = param(True, doc="scale the LSQ gradient by 1/sqrt(N q_max)")
_CALIBRATE = param(100, ge=0, doc="training steps during which activation ranges are "
                   "observed")
_EMA = param(0.9, ge=0, lt=1, doc="EMA decay of the observed ranges")


@model("quant_mlp", roles=("teacher", "student", "model"), check=_check_bits)
class QuantMLP(_Quantised, Module):
    """The ``mlp`` with fake-quantised linear layers (weights and their inputs).

    ``x -> [QLinear, activation] * len(hidden) -> QLinear``; submodules ``body.<i>`` and
    ``head`` as in ``mlp`` (with ``input_quant`` and ``weight_quant`` inside each).
    """

    def __init__(self, *, in_features: int = param(gt=0, doc="input width"),
                 hidden: Widths = param([128], doc="hidden layer widths (each >= 1)"),
                 num_classes: int = param(gt=0, doc="number of output logits"),
                 activation: Activation = param("relu", doc="nonlinearity after each hidden "
                                                "layer"),
                 dropout: float = param(0.0, ge=0, lt=1, doc="dropout probability after each "
                                        "hidden layer"),
                 bits: int = _BITS, act_bits: int = _ACT_BITS,
                 per_channel: bool = _PER_CHANNEL, learn_scales: bool = _LEARN_SCALES,
                 lsq_grad_scale: bool = _LSQ_GRAD_SCALE, calibrate_steps: int = _CALIBRATE,
                 ema: float = _EMA,
                 context: BuildContext) -> None:
        super().__init__()
        self.net = MLP.create(in_features=in_features, hidden=hidden, num_classes=num_classes,
                              activation=activation, dropout=dropout)
        self.body, self.head = self.net.body, self.net.head
        del self.net
        self._quantise(self, [], context.node, bits=bits, act_bits=act_bits,
                       per_channel=per_channel, learn_scales=learn_scales,
                       lsq_grad_scale=lsq_grad_scale, calibrate_steps=calibrate_steps, ema=ema)

    def forward(self, x: Features("B, {in_features}", "flat input features")) -> Outputs(
            logits=Logits("B, {num_classes}", "class scores"),
            features=Features("B, {hidden[-1]}", "last hidden activation")):
        features = self.body(x.flatten(1))
        return {"logits": self.head(features), "features": features}


@model("quantize", roles=("student", "model"), ports_from="base", check=_check_bits)
class Quantize(_Quantised, Module):
    """A fake-quantised copy of another model node (its ports, its weight names).

    Every ``nn.Linear``/``Conv1d``/``Conv2d`` of the copy whose path ends with one of
    ``layers`` (all when empty) gets quantised weights and inputs.
    """

    def __init__(self, *,
                 base: NodeRef = param(doc="the model node to quantise (copied; the copy "
                                       "trains, the node itself is not changed)"),
                 layers: list[str] = param([], doc="paths (suffixes) of the layers to "
                                           "quantise; empty: every Linear/Conv layer"),
                 bits: int = _BITS, act_bits: int = _ACT_BITS,
                 per_channel: bool = _PER_CHANNEL, learn_scales: bool = _LEARN_SCALES,
                 lsq_grad_scale: bool = _LSQ_GRAD_SCALE, calibrate_steps: int = _CALIBRATE,
                 ema: float = _EMA,
                 context: BuildContext) -> None:
        super().__init__()
        import copy

        self.base = copy.deepcopy(base)
        self.base.requires_grad_(True)
        self.inner_prefix = "base."  # float weights saved by the base node load into the copy
        for attr in ("prediction_type", "num_classes"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))
        self._quantise(self.base, list(layers), context.node, bits=bits, act_bits=act_bits,
                       per_channel=per_channel, learn_scales=learn_scales,
                       lsq_grad_scale=lsq_grad_scale, calibrate_steps=calibrate_steps, ema=ema)

    def forward(self, **inputs: Any) -> Any:
        return self.base(**inputs)
