"""The torch side of :mod:`dgraph.components.models.quant`: fake quantisers and quantised layers.

Imported only when a quantised node is built (a private module: the component discovery skips
it, so static validation stays torch-free).

Rounding, clamping and the straight-through gradient are torch's own fake-quantisation ops:
``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine`` (the
input's gradient passes where the value is inside the clamp range, is 0 outside) and, for
learnable scales, ``torch._fake_quantize_learnable_per_tensor_affine`` /
``..._per_channel_affine`` (LSQ, Esser et al. 2020: the same forward, and
``d x_hat / d s = round(x/s) - x/s`` inside the range, ``q_min - z`` below it and ``q_max - z``
above it, times a gradient factor). In evaluation (and so in the exported graph) only the first
two are used; the TorchScript ONNX exporter writes them as QuantizeLinear/DequantizeLinear.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = ["ActQuant", "QuantConv1d", "QuantConv2d", "QuantLinear", "WeightQuant",
           "fill_missing_quant_state", "quantize_module", "quantizers", "set_observing"]

EPS = 1e-8
# The integer ranges ONNX QuantizeLinear holds (uint8, int8): narrower ranges are exported as a
# float clamp to the narrow range followed by Q/DQ with the 8-bit container.
_CONTAINER = {True: (-128, 127), False: (0, 255)}


def _container_qdq_per_tensor(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                              qmin: int, qmax: int, signed: bool) -> torch.Tensor:
    """Fake-quantise ``x`` with the op ONNX can express: (``bits`` < 8) a clamp to the narrow
    range, then the 8-bit op (values inside the narrow range round the same way)."""
    low, high = _CONTAINER[signed]
    if (qmin, qmax) != (low, high):
        lo = (qmin - zero_point).to(scale.dtype) * scale
        hi = (qmax - zero_point).to(scale.dtype) * scale
        x = torch.minimum(torch.maximum(x, lo), hi)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, low, high)


class ActQuant(nn.Module):
    """Per-tensor affine fake quantisation of an activation, ``bits`` unsigned levels.

    While ``observing`` (the calibration window) in training mode, the range ``[min, max]``
    of each batch (widened to hold 0, so that 0 is exact) updates an exponential moving
    average (the first batch sets it), and ``scale = (max - min) / (2^bits - 1)``,
    ``zero_point = round(-min / scale)`` follow it. After the window they are frozen; with
    ``learn_scale`` the scale then trains with the LSQ gradient (the zero point stays).
    """

    def __init__(self, bits: int = 8, ema: float = 0.9, learn_scale: bool = False,
                 lsq_grad_scale: bool = True) -> None:
        super().__init__()
        self.bits, self.ema = bits, ema
        self.qmin, self.qmax = 0, 2 ** bits - 1
        self.learn_scale, self.lsq_grad_scale = learn_scale, lsq_grad_scale
        self.observing = True
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self.register_buffer("observed", torch.zeros(()))  # batches seen (kept for resume)
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        scale = torch.ones(())
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, learn_scale={self.learn_scale}"

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        low = x.detach().min().float().clamp(max=0.0)
        high = x.detach().max().float().clamp(min=0.0)
        first = self.observed == 0
        self.min_val.copy_(torch.where(first, low, self.ema * self.min_val + (1 - self.ema) * low))
        self.max_val.copy_(torch.where(first, high,
                                       self.ema * self.max_val + (1 - self.ema) * high))
        self.observed.add_(1)
        scale = ((self.max_val - self.min_val) / (self.qmax - self.qmin)).clamp(min=EPS)
        self.scale.data.copy_(scale)
        zero = (self.qmin - torch.round(self.min_val / scale)).clamp(self.qmin, self.qmax)
        self.zero_point.copy_(zero.to(torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_meta:  # the dry run: torch has no meta kernels for fake quantisation
            return x
        if self.training and self.observing:
            self.observe(x)
        if self.training and self.learn_scale and not self.observing:
            with torch.no_grad():  # a learnt scale stays positive (as torch.ao's LSQ)
                self.scale.clamp_(min=EPS)
            scale = self.scale.reshape(1)
            factor = 1.0 / math.sqrt(x[0].numel() * self.qmax) if self.lsq_grad_scale else 1.0
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, scale, self.zero_point.float().reshape(1), self.qmin, self.qmax, factor)
        scale = self.scale.detach()
        if not self.training:
            return _container_qdq_per_tensor(x, scale, self.zero_point, self.qmin, self.qmax,
                                             signed=False)
        return torch.fake_quantize_per_tensor_affine(x, scale, self.zero_point, self.qmin,
                                                     self.qmax)


class WeightQuant(nn.Module):
    """Symmetric fake quantisation of a weight to ``bits`` signed levels, per output channel
    (axis 0) or per tensor: ``scale = max |w| / (2^(bits-1) - 1)``, zero point 0.

    Without ``learn_scale`` the scale follows the weights (recomputed at every call). With it,
    the scale is a parameter that follows ``max |w|`` while ``observing`` (the calibration
    window) and then trains with the LSQ gradient, its own point of the trade-off between
    clipping and resolution (the learnable quantisation points of quantized distillation).
    """

    def __init__(self, channels: int, bits: int = 8, per_channel: bool = True,
                 learn_scale: bool = False, lsq_grad_scale: bool = True) -> None:
        super().__init__()
        self.bits, self.per_channel = bits, per_channel
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.learn_scale, self.lsq_grad_scale = learn_scale, lsq_grad_scale
        self.observing = True
        self.channels = channels if per_channel else 1
        if learn_scale:
            self.scale = nn.Parameter(torch.ones(self.channels))

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, per_channel={self.per_channel}, "
                f"learn_scale={self.learn_scale}")

    def max_scale(self, w: torch.Tensor) -> torch.Tensor:
        """``max |w| / q_max`` per output channel (shape ``[channels]``)."""
        w = w.detach()
        peak = w.abs().flatten(1).amax(1) if self.per_channel else w.abs().max().reshape(1)
        return (peak / self.qmax).clamp(min=EPS)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.is_meta:
            return w
        if self.learn_scale:
            if self.training:
                with torch.no_grad():
                    if self.observing:
                        self.scale.copy_(self.max_scale(w))
                    self.scale.clamp_(min=EPS)
            scale = self.scale
        else:
            scale = self.max_scale(w)
        zero = torch.zeros(self.channels, dtype=torch.int32, device=w.device)
        if self.training and self.learn_scale and not self.observing:
            per = w[0].numel() if self.per_channel else w.numel()
            factor = 1.0 / math.sqrt(per * self.qmax) if self.lsq_grad_scale else 1.0
            if self.per_channel:
                return torch._fake_quantize_learnable_per_channel_affine(
                    w, scale, zero.float(), 0, self.qmin, self.qmax, factor)
            return torch._fake_quantize_learnable_per_tensor_affine(
                w, scale, zero.float(), self.qmin, self.qmax, factor)
        scale = scale.detach()
        if not self.training and self.bits < 8:  # ONNX holds int8: clamp, then the 8-bit op
            bound = (self.qmax * scale).reshape(-1, *([1] * (w.dim() - 1)))
            w = torch.minimum(torch.maximum(w, -bound - scale.reshape(bound.shape)), bound)
            qmin, qmax = -128, 127
        else:
            qmin, qmax = self.qmin, self.qmax
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, qmin, qmax)
        return torch.fake_quantize_per_tensor_affine(w, scale, zero[0], qmin, qmax)


class _QuantLayer:
    """Mixin: the layer's input and weight pass through fake quantisers before the float op.

    The quantised layer keeps the float layer's parameter names (``weight``, ``bias``), so
    weights of the float architecture load into it (see :func:`fill_missing_quant_state`).
    """

    input_quant: nn.Module
    weight_quant: WeightQuant

    def _attach(self, config: dict) -> None:
        act_bits = config["act_bits"]
        self.input_quant = (ActQuant(act_bits, config["ema"], config["learn_scales"],
                                     config["lsq_grad_scale"]) if act_bits else nn.Identity())
        self.weight_quant = WeightQuant(self.weight.shape[0], config["bits"],  # type: ignore
                                        config["per_channel"], config["learn_scales"],
                                        config["lsq_grad_scale"])


class QuantLinear(_QuantLayer, nn.Linear):
    """``nn.Linear`` on fake-quantised input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_quant(x), self.weight_quant(self.weight),
                                    self.bias)


class QuantConv1d(_QuantLayer, nn.Conv1d):
    """``nn.Conv1d`` on fake-quantised input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.weight_quant(self.weight),
                                  self.bias)


class QuantConv2d(_QuantLayer, nn.Conv2d):
    """``nn.Conv2d`` on fake-quantised input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.weight_quant(self.weight),
                                  self.bias)


_QUANTISED = ((nn.Linear, QuantLinear), (nn.Conv1d, QuantConv1d), (nn.Conv2d, QuantConv2d))
LAYER_TYPES = "torch.nn.Linear, Conv1d, Conv2d"


def _swap(layer: nn.Module, config: dict) -> nn.Module | None:
    for float_type, quant_type in _QUANTISED:
        if type(layer) is float_type:
            new = quant_type.__new__(quant_type)
            new.__dict__.update(layer.__dict__)  # same parameters, hooks and attributes
            new.__dict__["_modules"] = dict(layer._modules)
            new._attach(config)
            new.to(layer.weight.device)
            return new
    return None


def quantize_module(module: nn.Module, config: dict, layers: Sequence[str] = ()
                    ) -> list[str]:
    """Replace, in place, every ``nn.Linear``/``Conv1d``/``Conv2d`` of ``module`` whose path
    ends with one of ``layers`` (all of them when ``layers`` is empty) by its quantised
    version sharing its parameters; returns the replaced paths (raises ``ValueError`` with
    the candidates when none matches)."""
    candidates = [name for name, sub in module.named_modules()
                  if name and any(type(sub) is t for t, _ in _QUANTISED)]
    chosen = [name for name in candidates
              if not layers or any(name == s or name.endswith("." + s) for s in layers)]
    if not chosen:
        found = ", ".join(candidates) or f"none ({LAYER_TYPES} are quantisable)"
        raise ValueError(f"no layer to quantise matches {list(layers)}; the layers are: {found}")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        swapped = _swap(getattr(parent, child), config)
        assert swapped is not None
        setattr(parent, child, swapped)
    return chosen


def quantizers(module: nn.Module) -> Iterator[ActQuant | WeightQuant]:
    return (m for m in module.modules() if isinstance(m, ActQuant | WeightQuant))


def set_observing(module: nn.Module, observing: bool) -> None:
    for quantizer in quantizers(module):
        quantizer.observing = observing


def fill_missing_quant_state(module: nn.Module, state_dict: dict, prefix: str,
                             *_args: object) -> None:
    """A load_state_dict pre-hook: weights of the float architecture (no quantiser entries)
    load into the quantised one, whose quantisers keep their current state (so a float
    student's run can initialise a quantised student: ``init: {run: kd, node: student}``)."""
    own = module.state_dict()
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not keys or any(("_quant." in k) for k in keys):
        return
    inner = getattr(module, "inner_prefix", "")  # ``base.`` for a copy of another node
    if inner and not any(k[len(prefix):].startswith(inner) for k in keys):
        for key in keys:
            state_dict[prefix + inner + key[len(prefix):]] = state_dict.pop(key)
        keys = [prefix + inner + k[len(prefix):] for k in keys]
    if not all(k[len(prefix):] in own for k in keys):
        return  # not the float architecture's weights: load_state_dict reports the mismatch
    for key, value in own.items():
        if "_quant." in key:
            state_dict.setdefault(prefix + key, value)
