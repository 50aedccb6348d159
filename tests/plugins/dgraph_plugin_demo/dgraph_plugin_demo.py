"""A demo dgraph plug-in: registers the loss component type ``demo_l1`` on import.

Like dgraph's own components, the declaration imports no torch; ``build`` does.
"""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["DemoL1", "DemoL1Params"]


class DemoL1Params(Params):
    """Parameters of :class:`DemoL1`."""

    scale: float = Field(1.0, gt=0.0, description="multiplies the mean absolute error")


@component("demo_l1", roles=("loss",))
class DemoL1(Component):
    """Mean absolute error between two tensors of the same shape, times ``scale``."""

    Params = DemoL1Params
    inputs = {
        "prediction": Port("Tensor", "B, ...", "predicted values"),
        "target": Port("Tensor", "B, ...", "target values (same shape)"),
    }
    outputs = {"loss": Port("Scalar", None, "scaled mean absolute error")}

    def build(self, context: BuildContext):
        import torch
        from torch import nn

        scale = self.params.scale

        class DemoL1Module(nn.Module):
            def forward(self, prediction: torch.Tensor, target: torch.Tensor):
                return {"loss": scale * (prediction - target).abs().mean()}

        return DemoL1Module()
