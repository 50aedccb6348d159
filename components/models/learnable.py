"""A learnable tensor: one trainable ``nn.Parameter`` exposed as an output port.

For synthetic data in dataset distillation, learnable soft labels, prompts or a learnable rate.
Its port's shape is the concrete ``shape`` parameter, so it unifies with whatever it feeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from dgraph.ports import SEMANTIC_TYPES, Port, carries_grad
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["LearnableTensor", "LearnableTensorParams"]


class LearnableTensorParams(Params):
    """Parameters of :class:`LearnableTensor`."""

    shape: list[Annotated[int, Field(gt=0)]] = Field(
        min_length=1, max_length=8, description="the tensor's shape, e.g. [100, 1, 8, 8]"
    )
    init: Literal["normal", "zeros", "ones", "uniform"] = Field(
        "normal", description="initial values: N(mean, std^2), 0, 1, or U(low, high)"
    )
    mean: float = Field(0.0, allow_inf_nan=False,
                        description="mean of the normal initialisation")
    std: float = Field(1.0, gt=0, allow_inf_nan=False,
                       description="standard deviation of the normal initialisation")
    low: float = Field(0.0, allow_inf_nan=False,
                       description="lower bound of the uniform initialisation")
    high: float = Field(1.0, allow_inf_nan=False,
                        description="upper bound of the uniform initialisation")
    type: str = Field("Tensor", description="semantic type of the output port (e.g. Images)")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in SEMANTIC_TYPES:
            raise ValueError(f"unknown semantic type '{value}'; known: {', '.join(SEMANTIC_TYPES)}")
        if not carries_grad(value):
            raise ValueError(
                f"semantic type '{value}' carries no gradient, so it cannot be learned; "
                "use a floating type such as Tensor, Images or Logits"
            )
        return value

    @model_validator(mode="after")
    def _bounds(self) -> LearnableTensorParams:
        if self.init == "uniform" and not self.low < self.high:
            raise ValueError(f"uniform init needs low < high, found low={self.low}, "
                             f"high={self.high}")
        return self


@component("learnable_tensor", roles=("tensor",))
class LearnableTensor(Component):
    """A trainable tensor of a fixed ``shape``; ``forward()`` takes no inputs.

    The output ``value`` has the semantic ``type`` given in the parameters and the concrete
    shape ``shape``. Random initialisation draws from torch's global generator, like the
    initialisation of any other module.
    """

    Params = LearnableTensorParams
    inputs: dict[str, Port] = {}
    outputs = {"value": Port("Tensor", None, "the learnable tensor (type and shape from params)")}

    def resolved_outputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        p = self.params
        shape = ", ".join(str(s) for s in p.shape)
        return {"value": Port(p.type, shape, "the learnable tensor")}

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_learnable import LearnableTensorModule

        p = self.params
        return LearnableTensorModule(list(p.shape), p.init, mean=p.mean, std=p.std, low=p.low,
                                     high=p.high)
