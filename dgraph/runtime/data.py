"""Batching a data node's tensors, exactly resumably.

A data component builds a :class:`dgraph.data.DataSource` (named tensors for training and for
held-out evaluation). The :class:`BatchLoader` walks seeded permutations of its training
tensors epoch by epoch; its position is two integers, so a checkpoint can restore it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dgraph.data import BatchSampler
from dgraph.errors import DgraphError

__all__ = ["BatchLoader", "iterate_once"]


class BatchLoader:
    """Seeded, resumable batching over a data source's tensors, already on the device.

    ``size`` is the number of examples (needed when no tensor is batched). A batch larger
    than the data, or no data at all, is refused: it cannot be drawn, and cutting it short
    silently would change what a spec means.

    ``shard`` is ``(rank, world size)`` in data-parallel training: ``batch_size`` is then the
    global batch, every rank walks the same permutation and takes its own contiguous slice of
    each batch, so the ranks together see exactly the batches one process would.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, *, shuffle: bool,
                 drop_last: bool, seed: int, device: torch.device | str = "cpu",
                 size: int | None = None, shard: tuple[int, int] = (0, 1),
                 sampler: BatchSampler | None = None) -> None:
        # ``sampler`` (the source's, see dgraph.data.BatchSampler) draws each batch's indices
        # instead of the epoch permutation; epochs still count batches_per_epoch batches.
        self.sampler = sampler
        self.tensors = {k: v.to(device) for k, v in tensors.items()}
        if size is None:
            size = next(iter(self.tensors.values())).shape[0] if self.tensors else 0
        self.size = int(size)
        if self.size <= 0:
            raise DgraphError("a batch loader needs at least one training example; the data "
                              "source has none")
        if not 0 < batch_size <= self.size:
            raise DgraphError(
                f"batch_size {batch_size} does not fit a dataset of {self.size} examples; "
                f"use a batch_size between 1 and {self.size}"
            )
        self.batch_size = batch_size
        self.rank, self.world = shard
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.position = 0  # batches already taken from this epoch
        # (epoch, position) of the batch the last next() returned: batch_at() draws it again.
        self.drawn: tuple[int, int] = (0, -1)
        self._order: torch.Tensor | None = None
        # The shuffled epoch's batch indices, for next() (see there).
        self._indices: tuple[torch.Tensor, ...] | None = None
        self._per_epoch = (self.size // batch_size if drop_last
                           else -(-self.size // batch_size))

    @property
    def batches_per_epoch(self) -> int:
        return self._per_epoch

    def _order_of(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            gen = torch.Generator().manual_seed(_generator_seed(self.seed, epoch))
            order = torch.randperm(self.size, generator=gen)
        else:
            order = torch.arange(self.size)
        device = next(iter(self.tensors.values())).device if self.tensors else None
        if device is not None and device.type == "cuda":
            # From pinned memory the copy is asynchronous: no stall of the GPU queue
            # at each epoch boundary.
            return order.pin_memory().to(device, non_blocking=True)
        return order if device is None else order.to(device)

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            self._order = self._order_of(self.epoch)
        return self._order

    def _take(self, order: torch.Tensor | None, position: int,
              epoch: int = 0) -> dict[str, torch.Tensor]:
        if order is None:  # a sampler's batch
            assert self.sampler is not None
            index = self.sampler.indices(self.seed, epoch, position, self.batch_size)
            device = next(iter(self.tensors.values())).device if self.tensors else None
            index = index if device is None else index.to(device)
        else:
            start = position * self.batch_size
            index = order[start: start + self.batch_size]
        if self.world > 1:
            index = index.tensor_split(self.world)[self.rank]
        elif order is not None and not self.shuffle and index.numel() == self.size:
            return dict(self.tensors)
        return {name: t.index_select(0, index) for name, t in self.tensors.items()}

    def next(self) -> dict[str, torch.Tensor]:
        position = self.position
        if position >= self._per_epoch:
            self.epoch += 1
            position = 0
            self._order = None
            self._indices = None
        self.drawn = (self.epoch, position)
        self.position = position + 1
        indices = self._indices
        if indices is None:
            if self.sampler is not None or self.world > 1 or not self.shuffle:
                order = None if self.sampler is not None else self._epoch_order()
                return self._take(order, position, self.epoch)
            # One process walking a permutation (the usual case): the epoch's batch indices
            # are views made once per epoch, so a step only selects its rows (as _take does).
            indices = self._indices = self._epoch_order().split(self.batch_size)
        index = indices[position]
        return {name: t.index_select(0, index) for name, t in self.tensors.items()}

    def batch_at(self, epoch: int, position: int) -> dict[str, torch.Tensor]:
        """The batch that ``next()`` returned at ``(epoch, position)`` (for diagnosis; with a
        sampler, drawn with its current state)."""
        if self.sampler is not None:
            return self._take(None, position, epoch)
        order = self._order if epoch == self.epoch and self._order is not None \
            else self._order_of(epoch)
        return self._take(order, position)

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
        self._indices = None


def _generator_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's permutation.

    torch generators take seeds in ``[-2**63, 2**64)``; a large ``train.seed`` times the
    epoch stride would leave that range (an overflow error mid-training), so such values wrap
    modulo ``2**64``. Seeds in range are used as they are, so existing runs draw as before.
    """
    value = seed * 1_000_003 + epoch
    if not -(2**63) <= value < 2**64:
        value %= 2**64
    return value


def iterate_once(tensors: dict[str, torch.Tensor],
                 batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every example once, in order, in batches (for evaluation)."""
    size = next(iter(tensors.values())).shape[0]
    for start in range(0, size, batch_size):
        yield {k: v[start: start + batch_size] for k, v in tensors.items()}
