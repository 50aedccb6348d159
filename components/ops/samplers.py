"""Samplers: per-step random inputs drawn from torch's global (seeded, checkpointed) RNG."""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["GaussianNoise"]


class GaussianNoiseParams(Params):
    dim: int = Field(gt=0, description="features per sample")
    std: float = Field(1.0, gt=0, allow_inf_nan=False, description="standard deviation")


@component("gaussian_noise", roles=("sampler",))
class GaussianNoise(Component):
    """``noise ~ N(0, std^2)`` of shape ``[B, dim]``; ``B`` is taken from the ``like`` input."""

    Params = GaussianNoiseParams
    inputs = {"like": Port("Tensor", "B, ...", "any batch; only its size is used")}
    outputs = {"noise": Port("Noise", "B, {dim}", "standard normal samples times std")}

    def build(self, context: BuildContext):
        from dgraph.components.ops._torch_ops import GaussianNoiseModule

        return GaussianNoiseModule(self.params.dim, self.params.std)
