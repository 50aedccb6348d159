"""Two-dimensional toy distributions for generative and adversarial specs.

``ring``: a mixture of ``modes`` Gaussians evenly spaced on a circle, the classic GAN toy.
Samples are drawn once, with a fixed seed, into a training and a held-out set.
"""

from __future__ import annotations

from dgraph.declare import Features, Labels, Outputs, data, param
from dgraph.registry import BuildContext

__all__ = ["toy2d"]


@data("toy2d")
def toy2d(
    *,
    modes: int = param(8, ge=1, le=64, doc="Gaussians on the ring"),
    radius: float = param(2.0, gt=0, allow_inf_nan=False, doc="ring radius"),
    std: float = param(0.05, gt=0, allow_inf_nan=False,
                       doc="standard deviation of each Gaussian"),
    train_size: int = param(8192, ge=16, doc="points in the training set"),
    eval_size: int = param(2048, ge=16, doc="points in the held-out set"),
    seed: int = param(0, ge=0, doc="seed of the fixed sample"),
    batch_size: int = param(256, ge=1, doc="points per batch"),
    context: BuildContext,
) -> Outputs(x=Features("B, 2", "a point in the plane"),
             mode=Labels("B", "which Gaussian the point came from")):
    """Points from a ring of Gaussians: ``x`` is ``Features [B, 2]``, ``mode`` its component.

    Mode ``m`` is centred at ``radius * (cos 2 pi m / modes, sin 2 pi m / modes)``; a point is
    its centre plus ``N(0, std^2)`` noise in each coordinate.
    """
    import math

    import torch

    from dgraph.data import DataSource

    def sample(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        mode = torch.randint(0, modes, (n,), generator=generator)
        angle = mode.float() * (2 * math.pi / modes)
        centre = torch.stack([angle.cos(), angle.sin()], dim=1) * radius
        return {"x": centre + std * torch.randn(n, 2, generator=generator), "mode": mode}

    if context.meta:
        def empty(n: int) -> dict[str, torch.Tensor]:
            return {"x": torch.empty(n, 2, device="meta"),
                    "mode": torch.empty(n, dtype=torch.long, device="meta")}

        return DataSource(empty(train_size), empty(eval_size), batch_size=batch_size)
    generator = torch.Generator().manual_seed(seed)
    train = sample(train_size, generator)
    held_out = sample(eval_size, generator)
    return DataSource(train, held_out, batch_size=batch_size,
                      info={"modes": modes, "radius": radius})
