"""Small convolutional network for images ``[B, C, H, W]``: a teacher or student for pictures.

Blocks ``layer1 .. layerN`` (3x3 conv, BatchNorm, ReLU) can be tapped for feature distillation;
their output shapes are known statically from the parameters (see :func:`layer_shapes`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from dgraph.declare import Features, Images, Logits, Module, Outputs, model, param

__all__ = ["CNN", "layer_shapes"]


def _halve(size: int) -> int:
    # A 3x3 convolution with stride 2 and padding 1 maps H to ceil(H / 2).
    return (size + 1) // 2


def layer_shapes(params: Any) -> dict[str, tuple[int, int, int]]:
    """Submodule path -> ``(channels, height, width)`` of its output, per example, for the
    parameters of a ``cnn`` node."""
    size = params.image_size
    shapes: dict[str, tuple[int, int, int]] = {}
    for index, width in enumerate(params.channels, start=1):
        if index > 1 or params.downsample_first:
            size = _halve(size)
        shapes[f"layer{index}"] = (width, size, size)
    return shapes


@model("cnn", roles=("teacher", "student", "model"))
class CNN(Module):
    """Small CNN: ``[Conv3x3, BatchNorm, ReLU]`` blocks, global average pool, linear head.

    Blocks are the submodules ``layer1 .. layerN`` (one per entry of ``channels``); block
    ``i > 1`` has stride 2, so it halves the spatial size (rounding up), and ``layer1`` keeps it
    unless ``downsample_first``. ``features`` is the pooled output of the last block,
    ``[B, channels[-1]]``; ``logits`` is the head's output. Tap ``node.layer2`` (etc.) in a spec
    to read a block's feature map ``[B, channels[i-1], h_i, h_i]``.
    """

    def __init__(self, *,
                 in_channels: int = param(gt=0, le=4096, doc="input image channels (1 for "
                                          "digits)"),
                 channels: list[Annotated[int, Field(gt=0)]] = param(
                     [16, 32], min_length=1, max_length=16, doc="output channels of layer1, "
                     "layer2, ...; each block after the first halves the spatial size"),
                 num_classes: int = param(gt=0, doc="number of output logits"),
                 image_size: int = param(gt=0, le=65536, doc="input height = width, in pixels"),
                 downsample_first: bool = param(False, doc="let layer1 halve the spatial size "
                                                "too (stride 2)")) -> None:
        super().__init__()
        from torch import nn

        self.depth = len(channels)
        width = in_channels
        for index, out in enumerate(channels, start=1):
            stride = 2 if (index > 1 or downsample_first) else 1
            block = nn.Sequential()
            block.conv = nn.Conv2d(width, out, 3, stride=stride, padding=1, bias=False)
            block.bn = nn.BatchNorm2d(out)
            block.relu = nn.ReLU(inplace=False)
            self.add_module(f"layer{index}", block)
            width = out
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Images("B, {in_channels}, {image_size}, {image_size}", "input images"),
                ) -> Outputs(logits=Logits("B, {num_classes}", "class scores"),
                             features=Features("B, {channels[-1]}",
                                               "globally pooled last block")):
        h = x
        for index in range(1, self.depth + 1):
            h = getattr(self, f"layer{index}")(h)
        features = self.pool(h).flatten(1)
        return {"logits": self.head(features), "features": features}
