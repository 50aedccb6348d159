"""One-for-All heterogeneous KD (Hao et al., NeurIPS 2023, "One-for-All: Bridge the Gap Between
Heterogeneous Architectures in Knowledge Distillation").

OFA-KD projects intermediate student features into the logit space with small branch heads
(``logit_branch``), where architecture-specific information is gone, and trains every branch
and the student's own head with the *adaptive target enhancement* loss ``ofa_loss``: the
teacher's distribution with the ground-truth class enhanced by a power of ``1 + p_t``.

Derivation of ``ofa_loss`` (``variant: paper``). Adding the one-hot label ``y`` to the teacher's
distribution ``p_t`` and taking the cross-entropy with the student's ``p_s`` gives
``-(1 + p_t[c]) log p_s[c] - sum_{k != c} p_t[k] log p_s[k]`` (``c`` the target class): cross-
entropy plus soft-label KD. OFA modulates the target term with an exponent ``gamma >= 1``:

    L = -(1 + p_t[c])^gamma log p_s[c] - sum_{k != c} p_t[k] log p_s[k]

so the target class weighs more where the teacher is confident about it. With
``p_t = [0.75, 0.25]``, ``p_s = [0.5, 0.5]`` and ``c = 0``: ``gamma = 1`` gives
``(1.75 + 0.25) ln 2 = 2 ln 2``; ``gamma = 2`` gives ``(3.0625 + 0.25) ln 2``.
``variant: reference`` is the authors' released code, which weights every class by
``(p_t + y)^gamma - y`` (target ``(1 + p_t[c])^gamma - 1``, others ``p_t[k]^gamma``) and adds the
cross-entropy as a separate term: ``2.0625 ln 2 + 0.0625 ln 2`` for the example at ``gamma = 2``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dgraph.declare import Features, Labels, Logits, Mask, Module, Scalar, loss, param, projector

__all__ = ["LogitBranch", "ofa_loss"]

Widths = list[Annotated[int, Field(gt=0)]]


@projector("logit_branch")
class LogitBranch(Module):
    """OFA branch head: a student's intermediate features projected into the logit space.

    ``x`` is a flat feature vector ``[B, C]`` (an MLP's hidden layer) or a feature map
    ``[B, C, *spatial]`` (a CNN block), which is averaged over its spatial dimensions first;
    then ``[Linear, ReLU] * len(hidden)`` and a ``Linear`` to ``num_classes`` logits. Declare one
    node per tapped stage.
    """

    def __init__(self, *, in_features: int = param(gt=0, doc="channels (feature maps) or width "
                                                   "(flat features) of the tapped stage"),
                 num_classes: int = param(gt=0, doc="number of class logits"),
                 hidden: Widths = param([], doc="hidden widths of the head (none: one linear "
                                        "map)")) -> None:
        super().__init__()
        from torch import nn

        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)

    def forward(self, x: Features("B, {in_features}, ...", "tapped features: [B, C] or "
                                  "[B, C, H, W]")) -> Logits("B, {num_classes}",
                                                             "the branch's class scores"):
        pooled = x.flatten(2).mean(-1) if x.dim() > 2 else x
        return self.head(pooled)


@loss("ofa_loss")
def ofa_loss(
    student: Logits("B, C", "student (or branch) class scores"),
    teacher: Logits("B, C", "teacher class scores (same classes)"),
    target: Labels("B", "class indices (int64); negative = no label"),
    mask: Mask("B", "which examples have a label (optional)") = None, *,
    gamma: float = param(1.0, ge=1.0, le=10.0, doc="modulating exponent of the target term "
                         "(the paper's gamma >= 1; 1 is plain target enhancement)"),
    temperature: float = param(1.0, gt=0.0, le=1000.0, doc="softmax temperature of both sides"),
    variant: Literal["paper", "reference"] = param(
        "paper", doc="paper: -(1+p_t[c])^gamma log p_s[c] - sum_{k!=c} p_t[k] log p_s[k]; "
        "reference: the released code's weights (p_t + y)^gamma - y"),
) -> Scalar(None, "OFA loss"):
    """OFA's adaptive target enhancement loss, averaged over the batch (see the module docs).

    ``p_t = softmax(teacher / T)``, ``log p_s = log_softmax(student / T)`` and, per example,
    ``loss_b = -sum_k w[b, k] log p_s[b, k]`` with ``w = p_t`` except at the target class ``c``:
    ``w[c] = (1 + p_t[c])^gamma`` (``paper``), or ``w = (p_t + y)^gamma - y`` everywhere
    (``reference``). The target class is the label where the example has one (``mask`` true
    and ``target >= 0``), else the teacher's arg-max: unlabelled examples are enhanced towards
    the teacher's own class. An empty batch gives 0, connected to the inputs. The teacher is
    not detached (the compiler decides). fp16/bf16 logits are computed in float32.
    """
    import torch
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32, same_shape, zero_from

    same_shape(student, teacher, "student", "teacher", "both must score the same classes; "
               "give the branch num_classes equal to the teacher's")
    if student.dim() != 2 or target.dim() != 1 or target.shape[0] != student.shape[0]:
        raise ValueError(f"ofa_loss expects student and teacher [B, C] and target [B]; found "
                         f"student {list(student.shape)} and target {list(target.shape)}")
    if student.shape[0] == 0:
        return zero_from(student, teacher)
    log_s = F.log_softmax(at_least_float32(student) / temperature, dim=-1)
    p_t = F.softmax(at_least_float32(teacher) / temperature, dim=-1)
    target = target.long()
    has_label = target >= 0
    if mask is not None:
        has_label = has_label & mask.reshape(target.shape).bool()
    classes = torch.where(has_label, target.clamp_min(0), p_t.argmax(-1))
    onehot = F.one_hot(classes, p_t.shape[-1]).to(p_t.dtype)
    if variant == "paper":
        enhanced = (1.0 + p_t).pow(gamma)
        weights = torch.where(onehot.bool(), enhanced, p_t)
    else:
        weights = (p_t + onehot).pow(gamma) - onehot
    return -(weights * log_s).sum(-1).mean()
