"""A learnable synthetic digits set for dataset distillation: images plus their fixed labels.

Like ``learnable_tensor`` but with class structure: ``images_per_class`` images of each class,
class-major (``labels = [0]*ipc + [1]*ipc + ...``), initialised from randomly chosen real
training images of the class (the DM paper's default) or from noise.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["SyntheticDigits", "SyntheticDigitsParams"]


class SyntheticDigitsParams(Params):
    """Parameters of :class:`SyntheticDigits`."""

    images_per_class: int = Field(10, gt=0, le=100, description="synthetic images per class")
    init: Literal["real", "noise"] = Field(
        "real", description="real: random training images of each class; noise: N(0.5, 0.25^2)"
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="as the digits source's")
    split_seed: int = Field(0, ge=0, description="as the digits source's (real init only "
                            "draws from its training split)")


@component("synthetic_digits", roles=("tensor",))
class SyntheticDigits(Component):
    """Learnable ``images [10*ipc, 1, 8, 8]`` (an ``nn.Parameter``) and ``labels [10*ipc]``.

    ``labels[k] = k // images_per_class`` (a buffer, saved with the images). With
    ``init: real`` image ``k`` starts as a training image of class ``labels[k]`` chosen
    without replacement by torch's global generator (so by ``train.seed``).
    """

    Params = SyntheticDigitsParams
    inputs: dict[str, Port] = {}
    outputs = {
        "images": Port("Images", "{num_images}, 1, 8, 8", "the synthetic images"),
        "labels": Port("Labels", "{num_images}", "their classes (fixed)"),
    }

    def port_params(self) -> dict[str, Any]:
        return {**self.params.model_dump(), "num_images": 10 * self.params.images_per_class}

    def build(self, context: BuildContext):
        from dgraph.components.models._torch_synthetic import SyntheticDigitsModule

        p = self.params
        return SyntheticDigitsModule(p.images_per_class, p.init, p.test_fraction, p.split_seed,
                                     meta=context.meta)
