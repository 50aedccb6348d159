"""Two-dimensional toy distributions for generative and adversarial specs.

``ring``: a mixture of ``modes`` Gaussians evenly spaced on a circle, the classic GAN toy.
Samples are drawn once, with a fixed seed, into a training and a held-out set.
"""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["Toy2D"]


class Toy2DParams(Params):
    modes: int = Field(8, ge=1, le=64, description="Gaussians on the ring")
    radius: float = Field(2.0, gt=0, allow_inf_nan=False, description="ring radius")
    std: float = Field(0.05, gt=0, allow_inf_nan=False,
                       description="standard deviation of each Gaussian")
    train_size: int = Field(8192, ge=16)
    eval_size: int = Field(2048, ge=16)
    seed: int = Field(0, ge=0, description="seed of the fixed sample")
    batch_size: int = Field(256, ge=1)


@component("toy2d", roles=("data",))
class Toy2D(Component):
    """Points from a ring of Gaussians: ``x`` is ``Features [B, 2]``, ``mode`` its component."""

    Params = Toy2DParams
    outputs = {
        "x": Port("Features", "B, 2", "a point in the plane"),
        "mode": Port("Labels", "B", "which Gaussian the point came from"),
    }

    def build(self, context: BuildContext):
        import math

        import torch

        from dgraph.runtime.data import DataSource

        p = self.params

        def sample(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
            mode = torch.randint(0, p.modes, (n,), generator=generator)
            angle = mode.float() * (2 * math.pi / p.modes)
            centre = torch.stack([angle.cos(), angle.sin()], dim=1) * p.radius
            return {"x": centre + p.std * torch.randn(n, 2, generator=generator),
                    "mode": mode}

        if context.meta:
            def empty(n: int) -> dict[str, torch.Tensor]:
                return {"x": torch.empty(n, 2, device="meta"),
                        "mode": torch.empty(n, dtype=torch.long, device="meta")}

            return DataSource(empty(p.train_size), empty(p.eval_size), batch_size=p.batch_size)
        generator = torch.Generator().manual_seed(p.seed)
        train = sample(p.train_size, generator)
        held_out = sample(p.eval_size, generator)
        return DataSource(train, held_out, batch_size=p.batch_size,
                          info={"modes": p.modes, "radius": p.radius})
