"""The torch modules behind the loss components (imported only when a graph is built).

Each ``forward`` takes the input ports as keyword arguments and returns ``{"loss": scalar}``.
Narrow floats (fp16, bf16) are computed in float32. An empty batch gives a loss of 0 that is
still connected to the inputs (backward gives zero gradients): every mean is a sum divided by
``max(count, 1)``, with the count taken from shapes (no host sync).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dgraph.components.losses._torch_divergence import at_least_float32, kl_div_terms
from torch import nn

__all__ = [
    "CosineFeatureLoss",
    "CrossEntropyLoss",
    "FeatureMSELoss",
    "GANCriticLossModule",
    "GANGeneratorLossModule",
    "HintonKDLoss",
    "MSELoss",
]


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all elements; 0 (connected to ``x``) when there are none."""
    return x.sum() / max(x.numel(), 1)


def _same_shape(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"'{a_name}' has shape {list(a.shape)} but '{b_name}' has shape {list(b.shape)}; "
            "they must be equal (put a projector in front of the student to match them)"
        )


class CrossEntropyLoss(nn.Module):
    """Cross-entropy averaged over examples with ``mask`` true and a non-negative target."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if logits.dim() != 2 or target.dim() != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(
                f"cross_entropy expects logits [B, C] and target [B]; found logits "
                f"{list(logits.shape)} and target {list(target.shape)}"
            )
        logits, target = at_least_float32(logits), target.long()
        if mask is None and logits.shape[0] > 0:
            # The fast path (one kernel each way): every target is a label. Negative targets
            # are still ignored, but a batch with none left would give NaN: wire `mask`.
            return {"loss": F.cross_entropy(logits, target, ignore_index=-1,
                                            label_smoothing=self.label_smoothing)}
        if mask is not None:
            target = torch.where(mask.reshape(target.shape).bool(), target,
                                 torch.full_like(target, -1))
        # Summed, then divided by the number of labelled examples: the same numbers as
        # PyTorch's mean reduction, but 0 rather than NaN for a batch with no label at all.
        total = F.cross_entropy(logits, target, reduction="sum", ignore_index=-1,
                                label_smoothing=self.label_smoothing)
        count = (target >= 0).sum().clamp_min(1).to(total.dtype)
        return {"loss": total / count}


class HintonKDLoss(nn.Module):
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` with batch-mean reduction.

    Exact at ``-inf`` logits: a class the teacher gives probability 0 adds nothing (PyTorch's
    ``kl_div`` computes ``0 * -inf = nan`` there); one the student gives 0 but the teacher
    does not makes the loss ``+inf``, which is the true KL.
    """

    def __init__(self, temperature: float = 4.0, *, scale_by_t2: bool = True) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.scale = self.temperature**2 if scale_by_t2 else 1.0

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_shape(student, teacher, "student", "teacher")
        log_p_s = F.log_softmax(at_least_float32(student) / self.temperature, dim=-1)
        log_p_t = F.log_softmax(at_least_float32(teacher) / self.temperature, dim=-1)
        # batchmean: divided by the batch size (a shape, so no host sync); 0 for an empty batch.
        factor = self.scale / max(student.shape[0], 1)
        return {"loss": kl_div_terms(log_p_t, log_p_s, dim=None) * factor}


class MSELoss(nn.Module):
    """Squared error over all elements, ``mean`` or ``sum``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, prediction: torch.Tensor,
                target: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_shape(prediction, target, "prediction", "target")
        total = F.mse_loss(at_least_float32(prediction), at_least_float32(target),
                           reduction="sum")
        return {"loss": total if self.reduction == "sum" else total / max(prediction.numel(), 1)}


class FeatureMSELoss(nn.Module):
    """FitNets hint loss: plain MSE (``mean``) or ``1/2 ||s - t||^2`` averaged over the batch."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_shape(student, teacher, "student", "teacher")
        total = F.mse_loss(at_least_float32(student), at_least_float32(teacher),
                           reduction="sum")
        if self.reduction == "mean":
            return {"loss": total / max(student.numel(), 1)}
        return {"loss": total * (0.5 / max(student.shape[0], 1))}


class CosineFeatureLoss(nn.Module):
    """``1 - cos(s, t)`` along dimension 1, averaged over the batch (and any positions)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_shape(student, teacher, "student", "teacher")
        if student.dim() < 2:
            raise ValueError(f"cosine_feature needs at least 2 dimensions [B, C, ...], found "
                             f"{list(student.shape)}")
        cosine = F.cosine_similarity(at_least_float32(student), at_least_float32(teacher),
                                     dim=1, eps=self.eps)
        return {"loss": (1.0 - cosine).sum() / max(cosine.numel(), 1)}


class GANCriticLossModule(nn.Module):
    """``mean(softplus(-real)) + mean(softplus(fake))``."""

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": _mean(F.softplus(-at_least_float32(real)))
                + _mean(F.softplus(at_least_float32(fake)))}


class GANGeneratorLossModule(nn.Module):
    """``mean(softplus(-fake))``."""

    def forward(self, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": _mean(F.softplus(-at_least_float32(fake)))}
