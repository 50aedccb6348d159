"""The torch module behind ``synthetic_digits`` (imported only when a graph is built)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SyntheticDigitsModule", "digits_split"]


def digits_split(test_fraction: float = 0.2, split_seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_eval, y_eval)`` of the ``digits`` source, images ``[N, 1, 8, 8]``."""
    import numpy as np
    from dgraph.components.data._torch_data import _digits_arrays
    from sklearn.model_selection import train_test_split

    images, labels = _digits_arrays()
    train_idx, eval_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           random_state=split_seed, stratify=labels)
    return (torch.from_numpy(images[train_idx].copy()), torch.from_numpy(labels[train_idx].copy()),
            torch.from_numpy(images[eval_idx].copy()), torch.from_numpy(labels[eval_idx].copy()))


class SyntheticDigitsModule(nn.Module):
    """``images`` parameter and ``labels`` buffer; ``forward()`` returns both."""

    def __init__(self, images_per_class: int, init: str, test_fraction: float, split_seed: int,
                 *, meta: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        n = num_classes * images_per_class
        labels = torch.arange(num_classes).repeat_interleave(images_per_class)
        self.register_buffer("labels", labels)
        self.images = nn.Parameter(torch.empty(n, 1, 8, 8))
        if meta:
            return
        with torch.no_grad():
            if init == "noise":
                self.images.normal_(0.5, 0.25)
                return
            x_train, y_train, _, _ = digits_split(test_fraction, split_seed)
            for c in range(num_classes):
                members = torch.nonzero(y_train == c).flatten()
                chosen = members[torch.randperm(len(members))[:images_per_class]]
                self.images[c * images_per_class:(c + 1) * images_per_class] = x_train[chosen]

    def forward(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, "labels": self.labels}
