"""Small parameter-free operations: flatten a tensor to features, stop a gradient.

Both keep the batch dimension; ``detach`` keeps the semantic type named in its parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator

from dgraph.ports import SEMANTIC_TYPES, Port
from dgraph.registry import BuildContext, Component, NoParams, Params, component

__all__ = ["Detach", "DetachParams", "Flatten"]


@component("flatten", roles=("op",))
class Flatten(Component):
    """Flatten every dimension after the batch: ``[B, d1, d2, ...] -> [B, d1*d2*...]``.

    Equivalent to ``x.flatten(1)``; the output is typed ``Features`` so that a feature map or an
    image can feed a linear projector or a flat-feature loss.
    """

    Params = NoParams
    inputs = {"x": Port("Tensor", "B, ...", "any tensor with a batch dimension")}
    outputs = {"y": Port("Features", "B, F", "the flattened tensor")}

    def build(self, context: BuildContext):
        from dgraph.components.ops._torch_ops import FlattenModule

        return FlattenModule()


class DetachParams(Params):
    """Parameters of :class:`Detach`."""

    type: str = Field(
        "Tensor", description="semantic type of both ports (e.g. Logits to detach logits)"
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in SEMANTIC_TYPES:
            raise ValueError(f"unknown semantic type '{value}'; known: {', '.join(SEMANTIC_TYPES)}")
        return value


@component("detach", roles=("op",))
class Detach(Component):
    """Stop-gradient: ``y = x`` in the forward pass, no gradient flows back into ``x``.

    Returns ``x.detach()`` (a view sharing storage, not a copy of the data). Both ports have the
    semantic ``type`` given in the parameters so that, e.g., detached logits still feed a
    ``Logits`` input.
    """

    Params = DetachParams
    inputs = {"x": Port("Tensor", "B, ...", "the tensor to stop gradients at")}
    outputs = {"y": Port("Tensor", "B, ...", "the same values, without gradient history")}

    def resolved_inputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        port = self.inputs["x"]
        return {"x": Port(self.params.type, port.shape, port.doc)}

    def resolved_outputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        port = self.outputs["y"]
        return {"y": Port(self.params.type, port.shape, port.doc)}

    def build(self, context: BuildContext):
        from dgraph.components.ops._torch_ops import DetachModule

        return DetachModule()
