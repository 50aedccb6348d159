"""The torch modules behind the method-zoo losses (imported only when a graph is built).

KL divergence (forward / reverse), attention transfer, RKD distance and angle, DKD, CRD and
distribution matching. Each ``forward`` takes the input ports as keyword arguments and returns
``{"loss": scalar}``. The formulas are written out in the declaring modules' docstrings.
Narrow floats (fp16, bf16) are computed in float32. A batch too small to hold one term (no
example; fewer than 2 for RKD distance, 3 for RKD angle) gives 0, connected to the inputs so
that backward gives zero gradients. The KL-based losses are exact at ``-inf`` logits (see
``_torch_divergence``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dgraph.components.losses._torch_divergence import at_least_float32, kl_div_terms
from torch import nn

__all__ = [
    "AttentionTransferLoss",
    "CRDLoss",
    "DKDLoss",
    "DistributionMatchingLoss",
    "KLDivLoss",
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "attention_map",
]


def _zero(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """A zero that depends on both inputs: backward through it gives zero gradients.

    The sum of an empty slice, not ``0 * sum``: an infinite input must not make it NaN.
    """
    s, t = at_least_float32(student).flatten()[:0], at_least_float32(teacher).flatten()[:0]
    return s.sum() + t.sum()


def _same_batch(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{what}: 'student' has {a.shape[0]} examples but 'teacher' has "
                         f"{b.shape[0]}; both must come from the same batch")


# -- KL ------------------------------------------------------------------------------------------
class KLDivLoss(nn.Module):
    """``T^2 * KL(p || q)`` between softened distributions, batch mean; the direction picks p."""

    def __init__(self, temperature: float, direction: str, scale_by_t2: bool) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.direction = direction
        self.scale = self.temperature**2 if scale_by_t2 else 1.0

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        if student.shape != teacher.shape:
            raise ValueError(f"kl_div: 'student' has shape {list(student.shape)} but 'teacher' "
                             f"has shape {list(teacher.shape)}; they must be equal")
        log_s = F.log_softmax(at_least_float32(student) / self.temperature, dim=-1)
        log_t = F.log_softmax(at_least_float32(teacher) / self.temperature, dim=-1)
        if self.direction == "forward":  # KL(p_t || p_s)
            kl = kl_div_terms(log_t, log_s, dim=None)
        else:  # reverse: KL(p_s || p_t)
            kl = kl_div_terms(log_s, log_t, dim=None)
        # The mean over every row (all dimensions but the classes'); 0 for an empty batch.
        return {"loss": kl * (self.scale / max(student.shape[:-1].numel(), 1))}


# -- attention transfer --------------------------------------------------------------------------
def attention_map(features: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """``a = Q / ||Q||_2`` with ``Q = mean_c |F|^p`` flattened over positions: ``[B, H*W]``."""
    # p >= 1 (the parameter's bound): |F|^p has a finite derivative at F = 0, where ReLU
    # features often are; for p < 1 it is infinite there and the gradient would be NaN.
    q = at_least_float32(features).abs().pow(p).mean(dim=1).flatten(1)
    return q / q.norm(dim=1, keepdim=True).clamp_min(eps)


class AttentionTransferLoss(nn.Module):
    """Distance between the students' and teachers' normalised spatial attention maps."""

    def __init__(self, p: float, reduction: str, eps: float) -> None:
        super().__init__()
        self.p, self.reduction, self.eps = float(p), reduction, float(eps)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_batch(student, teacher, "attention_transfer")
        if student.dim() != 4 or teacher.dim() != 4 or student.shape[2:] != teacher.shape[2:]:
            raise ValueError(
                f"attention_transfer needs feature maps [B, C, H, W] of equal H, W; found "
                f"student {list(student.shape)} and teacher {list(teacher.shape)}"
            )
        diff = attention_map(student, self.p, self.eps) - attention_map(teacher, self.p, self.eps)
        if self.reduction == "norm":  # the norm's gradient at 0 is taken as 0 by torch
            return {"loss": diff.norm(dim=1).sum() / max(len(diff), 1)}
        return {"loss": diff.pow(2).sum() / max(diff.numel(), 1)}


# -- RKD -----------------------------------------------------------------------------------------
def _pairwise_distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    squared = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(-1)
    return squared.clamp_min(eps).sqrt() * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))


class RKDDistanceLoss(nn.Module):
    """Huber loss between mean-normalised pairwise distances of student and teacher."""

    def __init__(self, delta: float, eps: float) -> None:
        super().__init__()
        self.delta, self.eps = float(delta), float(eps)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        d = _pairwise_distances(at_least_float32(x).flatten(1), self.eps)
        n = len(x)
        mean = d.sum() / max(n * (n - 1), 1)
        return d / mean.clamp_min(self.eps)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_batch(student, teacher, "rkd_distance")
        n = len(student)
        if n < 2:  # no pair: nothing to match (a shape, so no host sync)
            return {"loss": _zero(student, teacher)}
        d_s, d_t = self._normalised(student), self._normalised(teacher)
        off = 1 - torch.eye(n, device=student.device)
        per_pair = F.smooth_l1_loss(d_s, d_t, beta=self.delta, reduction="none")
        return {"loss": (per_pair * off).sum() / (n * (n - 1))}


class RKDAngleLoss(nn.Module):
    """Huber loss between the cosines of the angles of every triplet of distinct examples."""

    def __init__(self, delta: float, eps: float) -> None:
        super().__init__()
        self.delta, self.eps = float(delta), float(eps)

    def _cosines(self, x: torch.Tensor) -> torch.Tensor:
        x = at_least_float32(x).flatten(1)
        # e[i, j] = (x_j - x_i) / ||x_j - x_i||
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2, eps=self.eps)
        return torch.bmm(e, e.transpose(1, 2))  # [i, j, k] = <e_ij, e_ik>, the angle at x_i

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        _same_batch(student, teacher, "rkd_angle")
        n = len(student)
        if n < 3:  # no triplet of distinct examples
            return {"loss": _zero(student, teacher)}
        off = 1 - torch.eye(n, device=student.device)
        distinct = off.unsqueeze(2) * off.unsqueeze(1) * off.unsqueeze(0)
        a_s, a_t = self._cosines(student), self._cosines(teacher)
        per_triplet = F.smooth_l1_loss(a_s, a_t, beta=self.delta, reduction="none")
        return {"loss": (per_triplet * distinct).sum() / (n * (n - 1) * (n - 2))}


# -- DKD -----------------------------------------------------------------------------------------
def _dkd_parts(z: torch.Tensor, gt: torch.Tensor,
               target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log b, log q)`` of DKD for tempered logits ``z [B, C]``, in log space.

    ``log b = [log p_g, log(1 - p_g)]`` (``[B, 2]``) and ``log q`` (``[B, C]``) the
    log-softmax over the non-target classes, ``-inf`` at the target. Both come from
    ``L = logsumexp_{c != g} z_c - z_g = log((1 - p_g) / p_g)``:
    ``log p_g = -softplus(L)`` and ``log(1 - p_g) = -softplus(-L)`` (which is the
    logsumexp of the non-target log-probabilities), exact in float32 even when ``p_g`` is
    within rounding of 1, where ``1 - p_g`` cancels (as in DKD's own code). When no
    non-target class has mass (all ``-inf``) ``L = -inf``, ``p_g = 1`` and ``q`` is all
    ``-inf`` (weight 0 in KD = TCKD + (1 - p_g) NCKD): the KL terms then vanish with zero
    gradients. The logsumexp of such a row would send ``0 * nan`` backwards, so it is taken
    over zeros and its result replaced. A row of only ``-inf`` is no distribution: NaN.
    """
    ninf = float("-inf")
    z_rest = z.masked_fill(gt, ninf)
    empty = z_rest.detach().amax(dim=-1, keepdim=True) == ninf
    lse_rest = torch.logsumexp(z_rest.masked_fill(empty, 0.0), dim=-1, keepdim=True)
    log_q = z_rest - lse_rest  # -inf at g, and everywhere in an empty row
    log_odds = lse_rest.masked_fill(empty, ninf) - z.gather(-1, target.unsqueeze(-1))
    log_b = -F.softplus(torch.cat([log_odds, -log_odds], dim=-1))
    return log_b, log_q


class DKDLoss(nn.Module):
    """``alpha * TCKD + beta * NCKD`` (both times ``T^2``, batch mean)."""

    def __init__(self, alpha: float, beta: float, temperature: float) -> None:
        super().__init__()
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                target: torch.Tensor) -> dict[str, torch.Tensor]:
        if student.shape != teacher.shape or student.dim() != 2:
            raise ValueError(f"dkd expects student and teacher logits [B, C] of equal shape; "
                             f"found {list(student.shape)} and {list(teacher.shape)}")
        t = self.temperature
        zs, zt = at_least_float32(student) / t, at_least_float32(teacher) / t
        target = target.reshape(-1).long()
        # Examples without a label (negative target) use the teacher's predicted class.
        target = torch.where(target >= 0, target, zt.argmax(-1))
        gt = F.one_hot(target, zs.shape[-1]).bool()
        log_b_s, log_q_s = _dkd_parts(zs, gt, target)
        log_b_t, log_q_t = _dkd_parts(zt, gt, target)
        per_batch = 1.0 / max(len(zs), 1)  # batch mean; 0 for an empty batch
        tckd = kl_div_terms(log_b_t, log_b_s, dim=None) * per_batch
        nckd = kl_div_terms(log_q_t, log_q_s, dim=None) * per_batch
        return {"loss": (self.alpha * tckd + self.beta * nckd) * t * t}


# -- CRD -----------------------------------------------------------------------------------------
class CRDLoss(nn.Module):
    """InfoNCE between student and teacher embeddings with negatives from memory banks.

    The banks (``memory_student``, ``memory_teacher``, ``[num_data, dim]``) are registered
    buffers: they are part of ``state_dict`` and so of every checkpoint.
    """

    def __init__(self, num_data: int, dim: int, num_negatives: int, temperature: float,
                 momentum: float, symmetric: bool) -> None:
        super().__init__()
        self.num_data, self.dim = num_data, dim
        self.num_negatives, self.temperature = num_negatives, float(temperature)
        self.momentum, self.symmetric = float(momentum), symmetric
        self.register_buffer("memory_student", F.normalize(torch.randn(num_data, dim), dim=1))
        self.register_buffer("memory_teacher", F.normalize(torch.randn(num_data, dim), dim=1))

    def _nce(self, anchor: torch.Tensor, positive: torch.Tensor, bank: torch.Tensor,
             negatives: torch.Tensor) -> torch.Tensor:
        pos = (anchor * positive).sum(-1, keepdim=True)                 # [B, 1]
        if bank.shape[0] <= 8 * negatives.shape[1]:
            # A small bank: every similarity at once is cheaper than gathering K rows each.
            neg = (anchor @ bank.t()).gather(1, negatives)              # [B, K]
        else:
            neg = torch.bmm(bank[negatives], anchor.unsqueeze(2)).squeeze(2)
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        return -F.log_softmax(logits, dim=1)[:, 0].sum() / max(len(logits), 1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                index: torch.Tensor) -> dict[str, torch.Tensor]:
        if student.shape != teacher.shape or student.dim() != 2 or student.shape[1] != self.dim:
            raise ValueError(f"crd expects student and teacher embeddings [B, {self.dim}]; "
                             f"found {list(student.shape)} and {list(teacher.shape)}")
        index = index.reshape(-1).long()
        if len(index) != len(student):
            raise ValueError(f"crd: 'index' has {len(index)} entries for {len(student)} examples")
        checkable = len(index) > 0 and index.device.type != "meta"
        if checkable and (int(index.min()) < 0 or int(index.max()) >= self.num_data):
            raise ValueError(
                f"crd: example index {int(index.max())} is outside the memory bank of "
                f"num_data={self.num_data} entries; set num_data to the training set's size"
            )
        s, t = student.float(), teacher.float()  # the banks are float32
        negatives = torch.randint(self.num_data, (len(s), self.num_negatives), device=s.device)
        loss = self._nce(s, t, self.memory_teacher, negatives)
        if self.symmetric:
            loss = loss + self._nce(t, s, self.memory_student, negatives)
        if self.training:
            with torch.no_grad():
                m = self.momentum
                for name, fresh in (("memory_student", s), ("memory_teacher", t)):
                    bank = getattr(self, name)
                    mixed = m * bank.index_select(0, index) + (1 - m) * fresh.detach()
                    # Out of place: autograd may still hold the old bank for the backward.
                    setattr(self, name, bank.index_copy(0, index,
                                                        F.normalize(mixed, dim=1).to(bank.dtype)))
        return {"loss": loss}


# -- distribution matching -----------------------------------------------------------------------
class DistributionMatchingLoss(nn.Module):
    """``sum_c ||mean(real embeddings of c) - mean(synthetic embeddings of c)||^2``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, real: torch.Tensor, real_labels: torch.Tensor, synthetic: torch.Tensor,
                synthetic_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        real = at_least_float32(real).flatten(1)
        synthetic = at_least_float32(synthetic).flatten(1)
        c = self.num_classes
        onehot_r = F.one_hot(real_labels.reshape(-1).long().clamp_min(0), c).to(real.dtype)
        onehot_r = onehot_r * (real_labels.reshape(-1, 1) >= 0)
        onehot_s = F.one_hot(synthetic_labels.reshape(-1).long(), c).to(synthetic.dtype)
        count_r, count_s = onehot_r.sum(0), onehot_s.sum(0)
        mean_r = onehot_r.t() @ real / count_r.clamp_min(1).unsqueeze(1)
        mean_s = onehot_s.t() @ synthetic / count_s.clamp_min(1).unsqueeze(1)
        present = (count_r > 0) & (count_s > 0)  # classes seen in both this step
        return {"loss": ((mean_r - mean_s).pow(2).sum(1) * present).sum()}
