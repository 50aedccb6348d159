"""Small convolutional network for images ``[B, C, H, W]``: a teacher or student for pictures.

Blocks ``layer1 .. layerN`` (3x3 conv, BatchNorm, ReLU) can be tapped for feature distillation;
their output shapes are known statically from the parameters (see :meth:`CNN.layer_shapes`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["CNN", "CNNParams"]


class CNNParams(Params):
    """Parameters of :class:`CNN`."""

    in_channels: int = Field(gt=0, le=4096, description="input image channels (1 for digits)")
    channels: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [16, 32],
        min_length=1,
        max_length=16,
        description="output channels of layer1, layer2, ...; each block after the first "
        "halves the spatial size",
    )
    num_classes: int = Field(gt=0, description="number of output logits")
    image_size: int = Field(gt=0, le=65536, description="input height = width, in pixels")
    downsample_first: bool = Field(
        False, description="let layer1 halve the spatial size too (stride 2)"
    )


def _halve(size: int) -> int:
    # A 3x3 convolution with stride 2 and padding 1 maps H to ceil(H / 2).
    return (size + 1) // 2


@component("cnn", roles=("teacher", "student", "model"))
class CNN(Component):
    """Small CNN: ``[Conv3x3, BatchNorm, ReLU]`` blocks, global average pool, linear head.

    Blocks are the submodules ``layer1 .. layerN`` (one per entry of ``channels``); block
    ``i > 1`` has stride 2, so it halves the spatial size (rounding up), and ``layer1`` keeps it
    unless ``downsample_first``. ``features`` is the pooled output of the last block,
    ``[B, channels[-1]]``; ``logits`` is the head's output. Tap ``node.layer2`` (etc.) in a spec
    to read a block's feature map ``[B, channels[i-1], h_i, h_i]``.
    """

    Params = CNNParams
    inputs = {
        "x": Port("Images", "B, {in_channels}, {image_size}, {image_size}", "input images"),
    }
    outputs = {
        "logits": Port("Logits", "B, {num_classes}", "class scores"),
        "features": Port("Features", "B, {channels[-1]}", "globally pooled last block"),
    }
    tappable = True

    def layer_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Submodule path -> ``(channels, height, width)`` of its output, per example."""
        p = self.params
        size = p.image_size
        shapes: dict[str, tuple[int, int, int]] = {}
        for index, width in enumerate(p.channels, start=1):
            if index > 1 or p.downsample_first:
                size = _halve(size)
            shapes[f"layer{index}"] = (width, size, size)
        return shapes

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_cnn import CNNModule

        p = self.params
        return CNNModule(p.in_channels, list(p.channels), p.num_classes,
                         downsample_first=p.downsample_first)
