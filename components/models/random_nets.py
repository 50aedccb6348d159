"""Embedding networks re-initialised at random on every forward pass (distribution matching).

The weights are drawn from torch's global generator at each call, so a run is seeded and
resumes exactly (the runtime checkpoints that generator). The network holds no parameters: it
is frozen with respect to optimisation, yet gradients pass through it to its inputs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["RandomConvNet", "RandomConvNetParams"]


class RandomConvNetParams(Params):
    """Parameters of :class:`RandomConvNet`."""

    in_channels: int = Field(1, gt=0, description="image channels")
    image_size: int = Field(8, gt=0, description="image height = width")
    width: int = Field(64, gt=0, description="channels of every conv block")
    depth: int = Field(2, ge=1, le=8, description="conv blocks; each halves the size by pooling")
    norm: Literal["instance", "none"] = Field("instance", description="per-example norm")


@component("random_convnet", roles=("model",))
class RandomConvNet(Component):
    """ConvNet embedding ``psi`` whose weights are re-sampled at every forward call.

    Blocks ``[Conv3x3 (width), InstanceNorm, ReLU, AvgPool2]`` times ``depth``, flattened
    (the DM paper's ConvNet without its classifier). Conv weights and biases are drawn
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PyTorch's default) once per call and applied to
    ``real`` and ``synthetic`` alike, so both are embedded by the same random network.
    """

    Params = RandomConvNetParams
    inputs = {
        "real": Port("Images", "B, {in_channels}, {image_size}, {image_size}", "real images"),
        "synthetic": Port("Images", "N, {in_channels}, {image_size}, {image_size}",
                          "synthetic images"),
    }
    outputs = {
        "real_features": Port("Features", "B, {embed_dim}", "embeddings of the real images"),
        "synthetic_features": Port("Features", "N, {embed_dim}",
                                   "embeddings of the synthetic images"),
    }

    def port_params(self) -> dict[str, Any]:
        p = self.params
        size = p.image_size
        for _ in range(p.depth):
            size = max(size // 2, 1)
        return {**p.model_dump(), "embed_dim": p.width * size * size}

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_random_nets import RandomConvNetModule

        p = self.params
        return RandomConvNetModule(p.in_channels, p.width, p.depth, p.norm)
