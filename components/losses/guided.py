"""Self-distillation with ground-truth weighting (Borup & Andersen, NeurIPS 2021, "Even your
Teacher Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed by Self-Distillation").

Round ``t`` of iterated self-distillation trains a fresh network on a target that mixes the
labels and the previous round's outputs (the teacher, a copy of the round ``t-1`` student):

    q_t = alpha_t * y + (1 - alpha_t) * p_{t-1},     p_{t-1} = softmax(z_{t-1} / T)
    L   = -(1/B) sum_b sum_k q_t[b, k] log softmax(z_s / T)[b, k]      (form: cross_entropy)
    L   = (1/(B C)) sum_b sum_k (softmax(z_s / T)[b, k] - q_t[b, k])^2  (form: mse, the paper's)

``alpha`` fixes the ground-truth weight; ``alpha: null`` computes it in closed form at the
start of each round (whenever the teacher's weights change) from the teacher's predictions on
the whole training split of ``data``.

The closed form. The paper's formula for the optimal weight is not in its abstract; this is
the weight that minimises the expected squared distance of the mixed target to the clean class
probabilities ``y*`` when the label is a draw from ``y*`` (``E y = y*``, noise ``E||y - y*||^2 =
1 - ||y*||^2``) independent of the teacher's error ``e = p - y*``:
``E||q - y*||^2 = alpha^2 (1 - ||y*||^2) + (1 - alpha)^2 ||e||^2``, minimised at
``alpha* = ||e||^2 / (||e||^2 + 1 - ||y*||^2)``. With the plug-ins ``1 - ||y*||^2 ~ s = mean(1 -
||p||^2)`` (the teacher's own estimate of the label noise) and ``||e||^2 ~ d - s`` where
``d = mean ||y - p||^2`` (the Brier score), ``alpha* = clip(1 - s / d, 0, 1)`` (1 when ``d = 0``).
Since ``d - s = 2 mean(||p||^2 - p[y])``, ``alpha* > 0`` only when the teacher puts less mass on
the labels than on its own arg-max: on training examples the teacher has fitted, it trusts the
teacher (``alpha* = 0``); measured on held-out labelled data (``split: eval``) it is the
risk-minimising weight of the model above.

The kernel closed form (``estimate: kernel_ridge``), from the paper's own setting: each round
is a ridge regression whose fit is linear in its targets. With the teacher's last hidden
features ``F`` (plus a constant) as the feature map, the next round's predictions on held-out
inputs ``F_v`` for the target ``alpha * Y + (1 - alpha) * P`` are

    f_v(alpha) = F_v M P + alpha * F_v M (Y - P),    M = (F^T F + c I)^-1 F^T

(``Y`` one-hot training labels, ``P`` the teacher's training probabilities, ``c = ridge *
trace(F^T F) / width``), so the held-out squared error ``||f_v(alpha) - Y_v||^2`` is a
parabola in ``alpha`` with its minimum at ``alpha* = <b, Y_v - a> / ||b||^2`` (``a = F_v M P``,
``b = F_v M (Y - P)``), clipped to [0, 1]; 1 when ``b = 0`` (the teacher reproduces the
labels, so the weight changes nothing). The held-out rows are a seeded ``holdout`` fraction of
the training split (the ridge fits the rest), or with ``split: eval`` the whole eval split: use
that only when the eval split is not the one you report, since the weight is tuned on it. The
teacher must expose its features.
"""

from __future__ import annotations

from typing import Literal

from dgraph.declare import Labels, Logits, Mask, Module, NodeRef, Scalar, loss, param

__all__ = ["GuidedSelfDistill", "closed_form_alpha", "kernel_ridge_alpha", "mixed_target"]


def mixed_target(teacher_probs, labels, alpha):  # noqa: ANN001, ANN201 - torch tensors
    """``alpha * onehot(labels) + (1 - alpha) * teacher_probs``; rows with a negative label
    keep the teacher's distribution."""
    import torch
    import torch.nn.functional as F

    has_label = (labels >= 0).unsqueeze(-1)
    onehot = F.one_hot(labels.clamp_min(0), teacher_probs.shape[-1]).to(teacher_probs.dtype)
    return torch.where(has_label, alpha * onehot + (1 - alpha) * teacher_probs, teacher_probs)


def closed_form_alpha(teacher_probs, labels):  # noqa: ANN001, ANN201 - torch tensors
    """``clip(1 - mean(1 - ||p||^2) / mean ||y - p||^2, 0, 1)`` over the labelled rows (a 0-dim
    float64 tensor; 1 when there is none or the teacher reproduces the labels exactly)."""
    import torch
    import torch.nn.functional as F

    keep = labels >= 0
    p = teacher_probs[keep].double()
    if p.shape[0] == 0:
        return torch.ones((), dtype=torch.float64, device=teacher_probs.device)
    y = F.one_hot(labels[keep], p.shape[-1]).double()
    noise = (1 - p.square().sum(-1)).mean()
    brier = (y - p).square().sum(-1).mean()
    alpha = torch.where(brier > 0, 1 - noise / brier.clamp_min(1e-300), torch.ones_like(brier))
    return alpha.clamp(0.0, 1.0)


def kernel_ridge_alpha(features, teacher_probs, labels, eval_features, eval_labels,  # noqa: ANN001
                       ridge: float = 1e-3):  # noqa: ANN201 - torch tensors
    """The held-out risk-minimising ground-truth weight of a ridge regression on ``features``
    (module docs): a 0-dim float64 tensor in [0, 1]. Training rows with a negative label keep
    the teacher's distribution whatever the weight; held-out rows with one are not scored."""
    import torch
    import torch.nn.functional as F

    def with_bias(x):  # noqa: ANN001, ANN202
        x = x.double().flatten(1)
        return torch.cat([x, torch.ones_like(x[:, :1])], 1)

    one = torch.ones((), dtype=torch.float64, device=teacher_probs.device)
    keep_v = eval_labels >= 0
    if features.shape[0] == 0 or not bool(keep_v.any()):
        return one
    phi, phi_v = with_bias(features), with_bias(eval_features[keep_v])
    p = teacher_probs.double()
    y = torch.where((labels >= 0).unsqueeze(-1),
                    F.one_hot(labels.clamp_min(0), p.shape[-1]).double(), p)
    y_v = F.one_hot(eval_labels[keep_v], p.shape[-1]).double()
    gram = phi.T @ phi
    shift = ridge * gram.diagonal().sum() / gram.shape[0]
    solve = torch.linalg.solve(gram + shift * torch.eye(gram.shape[0], dtype=gram.dtype,
                                                          device=gram.device), phi.T)
    a = phi_v @ (solve @ p)
    b = phi_v @ (solve @ (y - p))
    norm = b.square().sum()
    if norm.item() == 0.0:
        return one
    return ((b * (y_v - a)).sum() / norm).clamp(0.0, 1.0)


def _closed_form_needs_refs(p) -> None:  # noqa: ANN001 - the generated parameter model
    if p.alpha is None and (p.model is None or p.data is None):
        missing = " and ".join(n for n in ("model", "data") if getattr(p, n) is None)
        raise ValueError(f"alpha: null (the closed form) needs the teacher and the data: set "
                         f"{missing} (e.g. model: teacher, data: data), or give alpha a value "
                         f"in [0, 1]")


@loss("guided_self_distill", check=_closed_form_needs_refs)
class GuidedSelfDistill(Module):
    """Loss against the mixed target ``alpha * y + (1 - alpha) * softmax(teacher / T)``.

    ``alpha`` is fixed, or in closed form from the teacher on the training split (see the
    module docs).
    The weight in use is the buffer ``alpha`` (saved in checkpoints and final weights, so a
    resumed run continues with the same value); ``teacher_fingerprint`` records which teacher
    weights it was computed from. Unlabelled rows (negative target, or ``mask`` false) learn
    the teacher's distribution alone.
    """

    def __init__(self, *,
                 alpha: float | None = param(None, ge=0.0, le=1.0, doc="ground-truth weight; "
                                             "null: the closed form from the teacher's "
                                             "predictions, recomputed when its weights change"),
                 model: NodeRef | None = param(None, doc="the teacher node (needed when alpha "
                                               "is null)"),
                 data: NodeRef | None = param(None, doc="the data node whose split the closed "
                                              "form reads (needed when alpha is null)"),
                 input: str = param("x", doc="the data port the teacher reads"),
                 labels: str = param("y", doc="the data port holding the class indices"),
                 split: Literal["train", "eval"] = param(
                     "train", doc="the split the closed form is measured on (kernel_ridge "
                     "with train: a held-out part of it)"),
                 estimate: Literal["label_noise", "kernel_ridge"] = param(
                     "label_noise", doc="which closed form: the label-noise plug-in on "
                     "`split`, or the held-out optimum of a ridge regression on the "
                     "teacher's features (fits on train, scores on eval)"),
                 features: str = param("features", doc="the teacher's output port the "
                                       "kernel_ridge estimate uses as its feature map"),
                 ridge: float = param(1e-3, gt=0.0, doc="kernel_ridge: ridge strength "
                                      "relative to the mean feature energy"),
                 holdout: float = param(0.2, gt=0.0, lt=1.0, doc="kernel_ridge on the train "
                                        "split: the fraction of its rows held out to score "
                                        "the weight (a fixed seeded choice)"),
                 form: Literal["cross_entropy", "mse"] = param(
                     "cross_entropy", doc="cross-entropy against the mixed target, or the "
                     "paper's squared error between probabilities"),
                 temperature: float = param(1.0, gt=0.0, le=1000.0,
                                            doc="softmax temperature of both sides"),
                 batch_size: int = param(512, gt=0, doc="examples per teacher call when "
                                         "computing the closed form")) -> None:
        super().__init__()
        import torch

        self.fixed = alpha
        self.refs = (model, data)
        self.input, self.labels, self.split = input, labels, split
        self.estimate, self.features, self.ridge = estimate, features, ridge
        self.holdout = holdout
        self.form, self.temperature, self.chunk = form, temperature, batch_size
        self.register_buffer("alpha", torch.tensor(1.0 if alpha is None else alpha,
                                                   dtype=torch.float64))
        self.register_buffer("teacher_fingerprint", torch.zeros(2, dtype=torch.float64))

    def _fingerprint(self):  # noqa: ANN202
        import torch

        model = self.refs[0]
        params = [p.detach().double() for p in model.parameters()]
        if not params:
            return torch.zeros(2, dtype=torch.float64, device=self.alpha.device)
        return torch.stack([sum(p.sum() for p in params),
                            sum(p.square().sum() for p in params)]).to(self.alpha.device)

    def _split(self, data, name: str):  # noqa: ANN001, ANN202 - a DataSource, its split
        split = data.train if name == "train" else data.eval
        if split is None or self.input not in split or self.labels not in split:
            raise ValueError(f"guided_self_distill: the data's {name} split has no "
                             f"'{self.input}' and '{self.labels}' ports (it has "
                             f"{sorted(split or {})}); set input/labels to its ports")
        return split

    def _teacher_outputs(self, model, split, *, features: bool = True,  # noqa: ANN001, ANN202
                         probs: bool = True):
        """The teacher's softmax probabilities (float32) and, if asked, its feature port."""
        import torch

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        scores, feats = [], []
        try:
            xs = split[self.input]
            for start in range(0, xs.shape[0], self.chunk):
                out = model(x=xs[start:start + self.chunk].to(device))
                logits = out["logits"] if isinstance(out, dict) else out
                if probs:
                    scores.append(torch.softmax(logits.float() / self.temperature, -1))
                if features:
                    if not isinstance(out, dict) or self.features not in out:
                        found = sorted(out) if isinstance(out, dict) else ["logits"]
                        raise ValueError(f"guided_self_distill: estimate kernel_ridge reads "
                                         f"the teacher's '{self.features}' output, but it "
                                         f"has {found}; set features to one of them")
                    feats.append(out[self.features])
        finally:
            model.train(was_training)
        return (torch.cat(scores) if probs else None), (torch.cat(feats) if features else None)

    def refresh(self) -> None:
        """Recompute the closed-form weight when the teacher's weights have changed."""
        import torch

        model, data = self.refs
        if self.fixed is not None or self.alpha.device.type == "meta":
            return
        with torch.no_grad():
            fingerprint = self._fingerprint()
            if torch.equal(fingerprint, self.teacher_fingerprint):
                return
            if self.estimate == "kernel_ridge":
                train = self._split(data, "train")
                probs, feats = self._teacher_outputs(model, train)
                labels = train[self.labels].to(probs.device).long()
                if self.split == "eval":
                    held_out = self._split(data, "eval")
                    _, feats_v = self._teacher_outputs(model, held_out, probs=False)
                    labels_v = held_out[self.labels].to(probs.device).long()
                else:  # a fixed seeded part of the training rows scores the rest's fit
                    order = torch.randperm(labels.shape[0],
                                           generator=torch.Generator().manual_seed(0))
                    cut = min(max(1, round(self.holdout * labels.shape[0])),
                              labels.shape[0] - 1)
                    rest, chosen = order[cut:].to(probs.device), order[:cut].to(probs.device)
                    feats_v, labels_v = feats[chosen], labels[chosen]
                    probs, feats, labels = probs[rest], feats[rest], labels[rest]
                alpha = kernel_ridge_alpha(feats, probs, labels, feats_v, labels_v, self.ridge)
            else:
                split = self._split(data, self.split)
                probs, _ = self._teacher_outputs(model, split, features=False)
                alpha = closed_form_alpha(probs, split[self.labels].to(probs.device).long())
            self.alpha.copy_(alpha)
            self.teacher_fingerprint.copy_(fingerprint)

    def forward(self, student: Logits("B, C", "student class scores"),
                teacher: Logits("B, C", "previous round's class scores (same classes)"),
                target: Labels("B", "class indices (int64); negative = no label"),
                mask: Mask("B", "which examples have a label (optional)") = None
                ) -> Scalar(None, "loss against the mixed target"):
        import torch
        import torch.nn.functional as F
        from dgraph.components.losses._divergence import at_least_float32, same_shape, zero_from

        same_shape(student, teacher, "student", "teacher", "both must score the same classes")
        if student.dim() != 2 or target.dim() != 1 or target.shape[0] != student.shape[0]:
            raise ValueError(f"guided_self_distill expects student and teacher [B, C] and "
                             f"target [B]; found student {list(student.shape)} and target "
                             f"{list(target.shape)}")
        if student.shape[0] == 0:
            return zero_from(student, teacher)
        self.refresh()
        labels = target.long()
        if mask is not None:
            labels = torch.where(mask.reshape(labels.shape).bool(), labels,
                                 torch.full_like(labels, -1))
        p_t = F.softmax(at_least_float32(teacher) / self.temperature, -1)
        q = mixed_target(p_t, labels, self.alpha.to(p_t.dtype))
        if self.form == "mse":
            p_s = F.softmax(at_least_float32(student) / self.temperature, -1)
            return (p_s - q).square().mean()
        log_s = F.log_softmax(at_least_float32(student) / self.temperature, -1)
        return -(q * log_s).sum(-1).mean()
