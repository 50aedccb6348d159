"""The torch modules behind the loss components (imported only when a graph is built).

Each ``forward`` takes the input ports as keyword arguments and returns ``{"loss": scalar}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        target = target.long()
        if mask is None:
            # The fast path (one kernel each way): every target is a label. Negative targets
            # are still ignored, but a batch with none left would give NaN: wire `mask`.
            return {"loss": F.cross_entropy(logits, target, ignore_index=-1,
                                            label_smoothing=self.label_smoothing)}
        target = torch.where(mask.reshape(target.shape).bool(), target,
                             torch.full_like(target, -1))
        # Summed, then divided by the number of labelled examples: the same numbers as
        # PyTorch's mean reduction, but 0 rather than NaN for a batch with no label at all.
        total = F.cross_entropy(logits, target, reduction="sum", ignore_index=-1,
                                label_smoothing=self.label_smoothing)
        count = (target >= 0).sum().clamp_min(1).to(total.dtype)
        return {"loss": total / count}


class HintonKDLoss(nn.Module):
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` with batch-mean reduction."""

    def __init__(self, temperature: float = 4.0, *, scale_by_t2: bool = True) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.scale = self.temperature**2 if scale_by_t2 else 1.0

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_shape(student, teacher, "student", "teacher")
        log_p_s = F.log_softmax(student.float() / self.temperature, dim=-1)
        log_p_t = F.log_softmax(teacher.float() / self.temperature, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return {"loss": kl * self.scale}


class MSELoss(nn.Module):
    """Squared error over all elements, ``mean`` or ``sum``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, prediction: torch.Tensor,
                target: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_shape(prediction, target, "prediction", "target")
        return {"loss": F.mse_loss(prediction, target, reduction=self.reduction)}


class FeatureMSELoss(nn.Module):
    """FitNets hint loss: plain MSE (``mean``) or ``1/2 ||s - t||^2`` averaged over the batch."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_shape(student, teacher, "student", "teacher")
        if self.reduction == "mean":
            return {"loss": F.mse_loss(student, teacher)}
        per_example = (student - teacher).pow(2).flatten(1).sum(dim=1)
        return {"loss": 0.5 * per_example.mean()}


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
        cosine = F.cosine_similarity(student, teacher, dim=1, eps=self.eps)
        return {"loss": (1.0 - cosine).mean()}


class GANCriticLossModule(nn.Module):
    """``mean(softplus(-real)) + mean(softplus(fake))``."""

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.softplus(-real).mean() + F.softplus(fake).mean()}


class GANGeneratorLossModule(nn.Module):
    """``mean(softplus(-fake))``."""

    def forward(self, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.softplus(-fake).mean()}
