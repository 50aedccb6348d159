"""Samplers: per-step random inputs drawn from torch's global (seeded, checkpointed) RNG."""

from __future__ import annotations

from dgraph.declare import Noise, Outputs, Tensor, param, sampler

__all__ = ["gaussian_noise"]


@sampler
def gaussian_noise(like: Tensor("B, ...", "any batch; only its size is used"), *,
                   dim: int = param(gt=0, doc="features per sample"),
                   std: float = param(1.0, gt=0, allow_inf_nan=False,
                                      doc="standard deviation"),
                   ) -> Outputs(noise=Noise("B, {dim}", "standard normal samples times std")):
    """``noise ~ N(0, std^2)`` of shape ``[B, dim]``; ``B`` is taken from the ``like`` input."""
    import torch

    noise = torch.randn(like.shape[0], dim, device=like.device)
    return {"noise": noise * std if std != 1.0 else noise}
