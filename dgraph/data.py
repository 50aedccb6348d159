"""What a data component builds: a :class:`DataSource` of named tensors for training and for
held-out evaluation.

It sits below the compiler (which checks what data nodes build) and the runtime (which
batches it), beside the registry: components import it to build one. torch is imported only
when a source is made, so importing this module stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = ["BatchSampler", "DataSource"]


@runtime_checkable
class BatchSampler(Protocol):
    """How a source's training batches are drawn, when not by seeded permutations.

    ``indices(seed, epoch, position, batch_size)`` returns the ``batch_size`` example indices
    (int64, into the train split) of batch ``position`` of ``epoch``; it must depend only on
    its arguments and the sampler's own state (e.g. mixture weights), which a node that
    changes it saves in checkpoints, so that a resumed run draws the same batches.
    """

    def indices(self, seed: int, epoch: int, position: int,
                batch_size: int) -> torch.Tensor: ...


@dataclass
class DataSource:
    """Tensors keyed by output port; every tensor's first dimension indexes examples.

    ``eval`` holds the held-out split (None when the source has none). ``label_names`` names
    the classes, for metrics and for export metadata. ``sampler`` (a :class:`BatchSampler`)
    replaces the loader's epoch permutations (weighted domain mixtures).
    """

    train: dict[str, torch.Tensor]
    eval: dict[str, torch.Tensor] | None = None
    batch_size: int = 64
    shuffle: bool = True
    drop_last: bool = True
    label_names: list[str] | None = None
    info: dict[str, object] = field(default_factory=dict)
    sampler: BatchSampler | None = None

    def __post_init__(self) -> None:
        import torch

        for split_name, split in (("train", self.train), ("eval", self.eval or {})):
            for name, t in split.items():
                if not isinstance(t, torch.Tensor) or t.dim() == 0:
                    found = ("a scalar tensor" if isinstance(t, torch.Tensor)
                             else f"a {type(t).__name__}")
                    raise ValueError(
                        f"{split_name} value '{name}' is {found}; every value must be a tensor "
                        "whose first dimension indexes examples")
            sizes = {name: int(t.shape[0]) for name, t in split.items()}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"{split_name} tensors have different lengths: {sizes}")

    def __len__(self) -> int:
        return next(iter(self.train.values())).shape[0] if self.train else 0
