"""A learnable tensor: one trainable ``nn.Parameter`` exposed as an output port.

For synthetic data in dataset distillation, learnable soft labels, prompts or a learnable rate.
Its port's shape is the concrete ``shape`` parameter, so it unifies with whatever it feeds.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from dgraph.declare import Module, Outputs, Tensor, component, param
from dgraph.ports import SEMANTIC_TYPES, Port, carries_grad

__all__ = ["LearnableTensor"]


def _learnable_type(value: str) -> str:
    if value not in SEMANTIC_TYPES:
        raise ValueError(f"unknown semantic type '{value}'; known: {', '.join(SEMANTIC_TYPES)}")
    if not carries_grad(value):
        raise ValueError(f"semantic type '{value}' carries no gradient, so it cannot be "
                         "learned; use a floating type such as Tensor, Images or Logits")
    return value


def _bounds(p) -> None:
    if p.init == "uniform" and not p.low < p.high:
        raise ValueError(f"uniform init needs low < high, found low={p.low}, high={p.high}")


def _value_port(p) -> dict[str, Port]:
    return {"value": Port(p.type, ", ".join(str(s) for s in p.shape), "the learnable tensor")}


@component("learnable_tensor", roles=("tensor",), tappable=False, check=_bounds,
           output_ports=_value_port)
class LearnableTensor(Module):
    """A trainable tensor of a fixed ``shape``; ``forward()`` takes no inputs.

    The output ``value`` has the semantic ``type`` given in the parameters and the concrete
    shape ``shape``. Random initialisation draws from torch's global generator, like the
    initialisation of any other module: ``N(mean, std^2)``, ``U(low, high)``, 0 or 1.
    """

    def __init__(self, *,
                 shape: list[Annotated[int, Field(gt=0)]] = param(
                     min_length=1, max_length=8, doc="the tensor's shape, e.g. [100, 1, 8, 8]"),
                 init: Literal["normal", "zeros", "ones", "uniform"] = param(
                     "normal", doc="initial values: N(mean, std^2), 0, 1, or U(low, high)"),
                 mean: float = param(0.0, allow_inf_nan=False,
                                     doc="mean of the normal initialisation"),
                 std: float = param(1.0, gt=0, allow_inf_nan=False,
                                    doc="standard deviation of the normal initialisation"),
                 low: float = param(0.0, allow_inf_nan=False,
                                    doc="lower bound of the uniform initialisation"),
                 high: float = param(1.0, allow_inf_nan=False,
                                     doc="upper bound of the uniform initialisation"),
                 type: Annotated[str, AfterValidator(_learnable_type)] = param(
                     "Tensor", doc="semantic type of the output port (e.g. Images)")) -> None:
        super().__init__()
        import torch

        self.value = torch.nn.Parameter(torch.empty(shape))
        with torch.no_grad():
            if init == "normal":
                self.value.normal_(mean, std)
            elif init == "uniform":
                self.value.uniform_(low, high)
            else:
                self.value.fill_(1.0 if init == "ones" else 0.0)

    def forward(self) -> Outputs(
            value=Tensor(None, "the learnable tensor (type and shape from params)")):
        return {"value": self.value}
