"""A learnable synthetic digits set for dataset distillation: images plus their fixed labels.

Like ``learnable_tensor`` but with class structure: ``images_per_class`` images of each class,
class-major (``labels = [0]*ipc + [1]*ipc + ...``), initialised from randomly chosen real
training images of the class (the DM paper's default) or from noise.
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.declare import Images, Labels, Module, Outputs, component, param
from dgraph.registry import BuildContext

__all__ = ["SyntheticDigits"]

_CLASSES = 10


def _num_images(p: Any) -> dict[str, int]:
    return {"num_images": _CLASSES * p.images_per_class}


@component("synthetic_digits", roles=("tensor",), tappable=False, sizes=_num_images)
class SyntheticDigits(Module):
    """Learnable ``images [10*ipc, 1, 8, 8]`` (an ``nn.Parameter``) and ``labels [10*ipc]``.

    ``labels[k] = k // images_per_class`` (a buffer, saved with the images). With
    ``init: real`` image ``k`` starts as a training image of class ``labels[k]`` chosen
    without replacement by torch's global generator (so by ``train.seed``). With ``clamp:
    [low, high]`` the images are clamped into that range after every optimizer step that
    trains them (:class:`~dgraph.declare.Projected`).
    """

    def __init__(self, *, images_per_class: int = param(10, gt=0, le=100,
                                                        doc="synthetic images per class"),
                 init: Literal["real", "noise"] = param(
                     "real", doc="real: random training images of each class; noise: "
                     "N(0.5, 0.25^2)"),
                 test_fraction: float = param(0.2, gt=0.0, lt=1.0,
                                              doc="as the digits source's"),
                 split_seed: int = param(0, ge=0, doc="as the digits source's (real init only "
                                         "draws from its training split)"),
                 clamp: tuple[float, float] | None = param(
                     None, doc="[low, high]: clamp the images into this range after each "
                     "optimizer step that trains them (the Projected protocol; SRe2L keeps "
                     "pixels in [0, 1])"),
                 context: BuildContext) -> None:
        super().__init__()
        import torch

        if clamp is not None and not clamp[0] < clamp[1]:
            raise ValueError(f"clamp must be [low, high] with low < high; found {list(clamp)}")
        self.clamp = clamp

        labels = torch.arange(_CLASSES).repeat_interleave(images_per_class)
        self.register_buffer("labels", labels)
        self.images = torch.nn.Parameter(torch.empty(len(labels), 1, 8, 8))
        if context.meta:
            return
        with torch.no_grad():
            if init == "noise":
                self.images.normal_(0.5, 0.25)
                return
            from dgraph.components.data.digits import digits_split

            x_train, y_train, _, _ = digits_split(test_fraction, split_seed)
            for c in range(_CLASSES):
                members = torch.nonzero(y_train == c).flatten()
                chosen = members[torch.randperm(len(members))[:images_per_class]]
                self.images[c * images_per_class:(c + 1) * images_per_class] = x_train[chosen]

    def project(self) -> None:
        """Clamp the images into ``clamp`` (in place; nothing without ``clamp``)."""
        if self.clamp is not None:
            self.images.data.clamp_(*self.clamp)

    def forward(self) -> Outputs(images=Images("{num_images}, 1, 8, 8", "the synthetic images"),
                                 labels=Labels("{num_images}", "their classes (fixed)")):
        return {"images": self.images, "labels": self.labels}
