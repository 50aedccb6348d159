"""Embedding networks re-initialised at random on every forward pass (distribution matching).

The weights are drawn from torch's global generator at each call, so a run is seeded and
resumes exactly (the runtime checkpoints that generator). The network holds no parameters: it
is frozen with respect to optimisation, yet gradients pass through it to its inputs.
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.declare import Features, Images, Module, Outputs, model, param

__all__ = ["RandomConvNet"]


def _embed_dim(p: Any) -> dict[str, int]:
    size = p.image_size
    for _ in range(p.depth):
        size = max(size // 2, 1)
    return {"embed_dim": p.width * size * size}


@model("random_convnet", roles=("model",), tappable=False, sizes=_embed_dim)
class RandomConvNet(Module):
    """ConvNet embedding ``psi`` whose weights are re-sampled at every forward call.

    Blocks ``[Conv3x3 (width), InstanceNorm, ReLU, AvgPool2]`` times ``depth``, flattened
    (the DM paper's ConvNet without its classifier). Conv weights and biases are drawn
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PyTorch's default) once per call and applied to
    ``real`` and ``synthetic`` alike, so both are embedded by the same random network.
    """

    def __init__(self, *, in_channels: int = param(1, gt=0, doc="image channels"),
                 image_size: int = param(8, gt=0, doc="image height = width"),
                 width: int = param(64, gt=0, doc="channels of every conv block"),
                 depth: int = param(2, ge=1, le=8, doc="conv blocks; each halves the size by "
                                    "pooling"),
                 norm: Literal["instance", "none"] = param("instance",
                                                           doc="per-example norm")) -> None:
        super().__init__()
        self.in_channels, self.width, self.depth, self.norm = in_channels, width, depth, norm

    def sample(self, device: Any, dtype: Any) -> list[tuple[Any, Any]]:
        """Fresh ``(weight, bias)`` of every conv block, from the global generator."""
        import math

        import torch

        weights, channels = [], self.in_channels
        for _ in range(self.depth):
            bound = 1.0 / math.sqrt(channels * 9)
            w = torch.empty(self.width, channels, 3, 3, device=device, dtype=dtype)
            b = torch.empty(self.width, device=device, dtype=dtype)
            weights.append((w.uniform_(-bound, bound), b.uniform_(-bound, bound)))
            channels = self.width
        return weights

    def forward(self, real: Images("B, {in_channels}, {image_size}, {image_size}",
                                   "real images"),
                synthetic: Images("N, {in_channels}, {image_size}, {image_size}",
                                  "synthetic images"),
                ) -> Outputs(real_features=Features("B, {embed_dim}",
                                                    "embeddings of the real images"),
                             synthetic_features=Features("N, {embed_dim}",
                                                         "embeddings of the synthetic images")):
        import torch
        import torch.nn.functional as F

        h = torch.cat([real, synthetic.to(real.dtype)])
        for w, b in self.sample(real.device, real.dtype):
            h = F.conv2d(h, w, b, padding=1)
            if self.norm == "instance":
                h = F.instance_norm(h)
            h = F.relu(h)
            if h.shape[-1] >= 2:
                h = F.avg_pool2d(h, 2)
        both = h.flatten(1)
        return {"real_features": both[: len(real)], "synthetic_features": both[len(real):]}
