"""In-memory data sources and the loader that batches them exactly resumably.

A data component builds a :class:`DataSource`: named tensors for training and for held-out
evaluation. The :class:`BatchLoader` walks seeded permutations epoch by epoch; its position is
two integers, so a checkpoint can restore it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["BatchLoader", "DataSource"]


@dataclass
class DataSource:
    """Tensors keyed by output port; every tensor's first dimension indexes examples.

    ``eval`` holds the held-out split (None when the source has none). ``label_names`` names
    the classes, for metrics and for export metadata.
    """

    train: dict[str, torch.Tensor]
    eval: dict[str, torch.Tensor] | None = None
    batch_size: int = 64
    shuffle: bool = True
    drop_last: bool = True
    label_names: list[str] | None = None
    info: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split_name, split in (("train", self.train), ("eval", self.eval or {})):
            sizes = {name: int(t.shape[0]) for name, t in split.items()}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"{split_name} tensors have different lengths: {sizes}")

    def __len__(self) -> int:
        return next(iter(self.train.values())).shape[0] if self.train else 0


class BatchLoader:
    """Seeded, resumable batching over a :class:`DataSource`'s tensors, already on device."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, *, shuffle: bool,
                 drop_last: bool, seed: int, device: torch.device | str = "cpu") -> None:
        self.tensors = {k: v.to(device) for k, v in tensors.items()}
        self.size = next(iter(self.tensors.values())).shape[0]
        self.batch_size = min(batch_size, self.size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.position = 0  # batches already taken from this epoch
        self._order: torch.Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.size // self.batch_size
        return -(-self.size // self.batch_size)

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                order = torch.randperm(self.size, generator=gen)
            else:
                order = torch.arange(self.size)
            device = next(iter(self.tensors.values())).device
            if device.type == "cuda":
                # From pinned memory the copy is asynchronous: no stall of the GPU queue
                # at each epoch boundary.
                order = order.pin_memory().to(device, non_blocking=True)
            else:
                order = order.to(device)
            self._order = order
        return self._order

    def next(self) -> dict[str, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._order = None
        order = self._epoch_order()
        start = self.position * self.batch_size
        index = order[start: start + self.batch_size]
        self.position += 1
        if not self.shuffle and index.numel() == self.size:
            return dict(self.tensors)
        return {name: t.index_select(0, index) for name, t in self.tensors.items()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.seed = int(state["seed"])
        self._order = None


def iterate_once(tensors: dict[str, torch.Tensor],
                 batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every example once, in order, in batches (for evaluation)."""
    size = next(iter(tensors.values())).shape[0]
    for start in range(0, size, batch_size):
        yield {k: v[start: start + batch_size] for k, v in tensors.items()}
