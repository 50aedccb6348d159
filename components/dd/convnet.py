"""The ConvNet of the dataset-distillation papers, the evaluator's image network.

DC, DSA, DM, MTT and their successors train and evaluate on ``ConvNet``: blocks of
``[Conv3x3 (width), instance norm, ReLU, AvgPool2]`` and a linear classifier on the flattened
last block. Their instance norm is a ``GroupNorm`` with one group per channel (per-example
statistics, an affine scale and shift), so nothing depends on batch statistics: a network
trained on a handful of learned images is tested on real ones without the running-statistics
mismatch that breaks a BatchNorm network on pixels outside the data's range. The papers use
width 128 and depth 3 on 32x32 images; on 8x8 digits two blocks (8 -> 4 -> 2) are the default.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from dgraph.declare import Features, Images, Logits, Module, Outputs, model, param

__all__ = ["ConvNet"]


@functools.cache
def _instance_norm_type() -> Any:
    """``GroupNorm(C, C)`` (per-example, per-channel statistics, affine) written with plain
    tensor ops, so that its backward also runs under ``vmap`` (``param_grad``'s batched
    per-class gradients), which the fused group-norm kernel does not support."""
    import torch
    from torch import nn

    class InstanceNorm(nn.Module):
        def __init__(self, channels: int, eps: float = 1e-5) -> None:
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

        def forward(self, h: Any) -> Any:
            mean = h.mean((-2, -1), keepdim=True)
            var = h.var((-2, -1), keepdim=True, unbiased=False)
            scaled = (h - mean) * torch.rsqrt(var + self.eps)
            return scaled * self.weight[:, None, None] + self.bias[:, None, None]

    return InstanceNorm


def _sizes(p: Any) -> dict[str, int]:
    size = p.image_size
    for _ in range(p.depth):
        size = max(size // 2, 1)
    return {"feature_dim": p.width * size * size}


@model("convnet", roles=("model", "student", "teacher"), sizes=_sizes)
class ConvNet(Module):
    """``[Conv3x3 (width, padding 1), norm, ReLU, AvgPool2] * depth``, flatten, Linear.

    ``norm: instance`` (the papers') is ``GroupNorm(width, width)`` (written out, see
    :func:`_instance_norm_type`): per-example, per-channel statistics with a learned scale
    and shift; ``none`` leaves it out. A block pools only while
    the map is at least 2 pixels wide. ``features`` is the flattened last block ``[B,
    width * s * s]`` (``s`` = image_size halved ``depth`` times); the blocks are the submodules
    ``block1 .. blockN`` (tappable).
    """

    def __init__(self, *, in_channels: int = param(1, gt=0, le=4096, doc="image channels"),
                 image_size: int = param(8, gt=0, le=65536, doc="image height = width"),
                 num_classes: int = param(10, gt=0, doc="number of output logits"),
                 width: int = param(128, gt=0, le=4096, doc="channels of every conv block"),
                 depth: int = param(2, ge=1, le=8, doc="conv blocks; each halves the size "
                                    "by average pooling (2 for 8x8 digits, 3 for 32x32)"),
                 norm: Literal["instance", "none"] = param(
                     "instance", doc="instance: GroupNorm with one group per channel, as "
                     "in the papers; none: no normalisation")) -> None:
        super().__init__()
        from torch import nn

        channels, size = in_channels, image_size
        for index in range(1, depth + 1):
            block = nn.Sequential()
            block.conv = nn.Conv2d(channels, width, 3, padding=1)
            if norm == "instance":
                block.norm = _instance_norm_type()(width)
            block.relu = nn.ReLU()
            if size >= 2:
                block.pool = nn.AvgPool2d(2)
                size //= 2
            self.add_module(f"block{index}", block)
            channels = width
        self.depth = depth
        self.head = nn.Linear(width * size * size, num_classes)

    def forward(self, x: Images("B, {in_channels}, {image_size}, {image_size}", "input images"),
                ) -> Outputs(logits=Logits("B, {num_classes}", "class scores"),
                             features=Features("B, {feature_dim}", "the flattened last "
                                               "block")):
        h = x
        for index in range(1, self.depth + 1):
            h = getattr(self, f"block{index}")(h)
        features = h.flatten(1)
        return {"logits": self.head(features), "features": features}
