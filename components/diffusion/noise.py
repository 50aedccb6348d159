"""Standard normal noise shaped like a batch (images, latents, points)."""

from __future__ import annotations

from dgraph.declare import Noise, Outputs, Tensor, sampler

__all__ = ["noise_like"]


@sampler
def noise_like(like: Tensor("B, ...", "any batch; its shape is used")
               ) -> Outputs(noise=Noise("B, ...", "standard normal, shaped like 'like'")):
    """``noise ~ N(0, 1)`` with the shape of ``like`` (from torch's global, seeded RNG)."""
    import torch

    return {"noise": torch.randn(like.shape, device=like.device, dtype=like.dtype
                                 if like.is_floating_point() else torch.float32)}
