"""``token_projector``: a linear map of per-token hidden states ``[B, T, in] -> [B, T, out]``,
the projector of hidden-state distillation between a narrow student and a wide teacher."""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["TokenProjector", "TokenProjectorParams"]


class TokenProjectorParams(Params):
    """Parameters of :class:`TokenProjector`."""

    in_features: int = Field(gt=0, description="student hidden width")
    out_features: int = Field(gt=0, description="teacher hidden width")
    bias: bool = Field(True, description="add a learnable bias")


@component("token_projector", roles=("projector",))
class TokenProjector(Component):
    """``y[b, t] = W x[b, t] (+ b)``: maps a tapped student layer to the teacher's width."""

    Params = TokenProjectorParams
    inputs = {"x": Port("Features", "B, T, {in_features}", "per-token hidden states")}
    outputs = {"y": Port("Features", "B, T, {out_features}", "projected hidden states")}
    tappable = True

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_projectors import LinearProjectorModule

        p = self.params
        return LinearProjectorModule(p.in_features, p.out_features, bias=p.bias)
