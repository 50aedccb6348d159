"""L2 normalisation of feature vectors: the last step of a contrastive embedding head."""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["L2Normalize", "L2NormalizeParams"]


class L2NormalizeParams(Params):
    """Parameters of :class:`L2Normalize`."""

    eps: float = Field(1e-12, gt=0.0, le=1e-2, description="guards the norm against zero")


@component("l2_normalize", roles=("op",))
class L2Normalize(Component):
    """``y_b = x_b / max(||x_b||_2, eps)`` for each example ``b`` of ``[B, D]`` features."""

    Params = L2NormalizeParams
    inputs = {"x": Port("Features", "B, D", "features")}
    outputs = {"y": Port("Embeddings", "B, D", "unit-length embeddings")}

    def build(self, context: BuildContext):
        from dgraph.components.ops._torch_normalize import L2NormalizeModule

        return L2NormalizeModule(self.params.eps)
