"""LELP: Learning Embedding Linear Projections (Cao et al., 2024, "Linear Projections of
Teacher Embeddings for Few-Class Distillation").

With two or a few classes a teacher's output distribution says little about how it
generalises. LELP reads that knowledge from the teacher's embeddings instead: it finds
informative linear subspaces of the embeddings of each class, splits each class into
pseudo-subclasses along them, and trains a student with ``classes x subclasses`` outputs to
reproduce the teacher's pseudo-subclass assignment. The student's class probability is the sum
of its subclass probabilities.

What is done here (the paper's exact recipe is not in its abstract; these are our choices):

* **Fit, once, before training** (at the loss's first call, and again only if the teacher's
  weights change): the frozen teacher embeds the whole training split (``embedding``: one of its
  output ports, by default its penultimate-layer ``features``). For each class ``c``, with
  ``E_c`` the embeddings of its labelled examples, ``mu_c`` their mean, the informative
  directions are the top ``r = S / 2`` right singular vectors ``v_{c,1..r}`` of ``E_c - mu_c``
  (its principal components), each with the standard deviation ``sigma_{c,j}`` of the
  projections along it. A direction's sign is fixed so that its largest-magnitude entry is
  positive (SVD signs are otherwise arbitrary). Computed in float64, deterministic.
* **Pseudo-subclasses**: each direction is split at the class mean into its two halves, so
  class ``c`` has ``S = 2r`` pseudo-subclasses with scores
  ``s_{c,2j} = +u_{c,j}``, ``s_{c,2j+1} = -u_{c,j}``, ``u_{c,j}(x) = v_{c,j} . (e(x) - mu_c) /
  sigma_{c,j}``. (``S = 2``: the sign of the projection on the first principal component.)
* **Target**: ``q(c, k | x) = softmax(z_t / T)[c] * w_c(x)[k]`` with ``w_c = softmax(s_c /
  tau)`` (``assignment: soft``) or the one-hot of ``argmax_k s_c`` (``hard``). Its class
  marginal is the teacher's softened class distribution (Hinton KD's target); within a class
  it spreads the mass over the pseudo-subclasses the embedding points to.
* **Loss**: ``T^2 * (1/B) sum_b KL(q_b || softmax(z_s / T))`` over the student's ``C * S``
  subclass scores (ordered ``c * S + k``). The labels are learnt by a separate
  ``cross_entropy`` on the student's class logits (``subclass_mlp``'s ``logits``: the
  log-sum-exp of each class's subclass scores, so ``softmax(logits)`` sums the subclass
  probabilities).

The fit (means, directions, scales and the teacher's fingerprint) is saved with the node in
checkpoints (``get_extra_state``), so a resumed run uses the same projections bit for bit.
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.declare import (
    Features,
    Logits,
    Module,
    NodeRef,
    Outputs,
    Scalar,
    loss,
    model,
    param,
)

__all__ = ["LELP", "SubclassMLP", "fit_projections", "subclass_scores", "subclass_target"]


def fit_projections(embeddings, labels, classes: int, directions: int):  # noqa: ANN001, ANN201
    """Per class: mean ``[C, D]``, top principal directions ``[C, r, D]`` and the standard
    deviation of the projections along them ``[C, r]`` (float64).

    ``labels`` are class indices (negative: no label, skipped). A class needs at least two
    labelled examples; a direction along which its embeddings do not vary gets scale 1.
    """
    import torch

    e = embeddings.detach().to(torch.float64)
    dim = e.shape[1]
    if directions > dim:
        raise ValueError(f"lelp: {directions} directions per class do not fit in the "
                         f"teacher's {dim}-dimensional embeddings; use subclasses <= {2 * dim}")
    means = torch.zeros(classes, dim, dtype=torch.float64)
    vectors = torch.zeros(classes, directions, dim, dtype=torch.float64)
    scales = torch.ones(classes, directions, dtype=torch.float64)
    for c in range(classes):
        rows = e[labels == c]
        if rows.shape[0] < 2:
            raise ValueError(f"lelp: class {c} has {rows.shape[0]} labelled training "
                             "examples; fitting its subspace needs at least 2")
        means[c] = rows.mean(0)
        _, singular, vh = torch.linalg.svd(rows - means[c], full_matrices=False)
        v = vh[:directions]
        if v.shape[0] < directions:  # fewer examples than directions: pad with zeros
            v = torch.cat([v, torch.zeros(directions - v.shape[0], dim, dtype=v.dtype)])
            singular = torch.cat([singular, torch.zeros(directions, dtype=singular.dtype)])
        largest = v.abs().argmax(dim=1, keepdim=True)
        v = v * torch.sign(v.gather(1, largest)).clamp_min(0).mul(2).sub(1)
        vectors[c] = v
        std = singular[:directions] / max(rows.shape[0] - 1, 1) ** 0.5
        scales[c] = torch.where(std > 1e-12, std, torch.ones_like(std))
    return means, vectors, scales


def subclass_scores(embeddings, means, vectors, scales):  # noqa: ANN001, ANN201
    """``[B, C, 2r]``: ``+u, -u`` for each direction, ``u = v . (e - mu_c) / sigma``."""
    import torch

    e = embeddings.to(means.dtype)
    u = torch.einsum("bd,crd->bcr", e, vectors) - torch.einsum("cd,crd->cr", means, vectors)
    u = u / scales
    return torch.stack([u, -u], dim=-1).flatten(2)


def subclass_target(teacher_logits, scores, temperature: float, sub_temperature: float,  # noqa: ANN001, ANN201
                    assignment: str = "soft"):
    """``q[b, c * S + k] = softmax(z_t / T)[b, c] * w[b, c, k]`` (``w``: softmax of the scores
    over ``k`` at ``sub_temperature``, or their arg-max one-hot)."""
    import torch
    import torch.nn.functional as F

    p_class = F.softmax(teacher_logits.to(torch.float64) / temperature, dim=-1)
    if assignment == "hard":
        w = F.one_hot(scores.argmax(-1), scores.shape[-1]).to(torch.float64)
    else:
        w = F.softmax(scores.to(torch.float64) / sub_temperature, dim=-1)
    return (p_class.unsqueeze(-1) * w).flatten(1)


def _even(p) -> None:  # noqa: ANN001 - the generated parameter model
    if p.subclasses % 2:
        raise ValueError(f"subclasses ({p.subclasses}) must be even: each informative "
                         "direction splits a class into two halves")


@loss("lelp", check=_even)
class LELP(Module):
    """LELP: the student learns pseudo-subclasses found in the teacher's embeddings.

    They come from linear projections of the embeddings, fit once on the training split (see
    the module docs).

    ``loss = T^2 (1/B) sum_b KL(q_b || softmax(student_b / T))`` with ``q`` the teacher's
    softened class distribution split over ``subclasses`` pseudo-subclasses per class.
    """

    def __init__(self, *,
                 model: NodeRef = param(doc="the teacher node (frozen) whose embeddings are "
                                        "projected"),
                 data: NodeRef = param(doc="the data node whose training split is fitted"),
                 subclasses: int = param(2, ge=2, le=64, doc="S: pseudo-subclasses per class "
                                         "(even: S/2 directions, each split in two)"),
                 temperature: float = param(4.0, gt=0.0, le=1000.0,
                                            doc="T of the class distributions (scaled by T^2)"),
                 sub_temperature: float = param(1.0, gt=0.0, le=1000.0,
                                                doc="tau: softness of the split within a "
                                                "class (soft assignment)"),
                 assignment: Literal["soft", "hard"] = param(
                     "soft", doc="soft: softmax of the projection scores; hard: the "
                     "pseudo-subclass with the largest score"),
                 input: str = param("x", doc="the data port the teacher reads"),
                 labels: str = param("y", doc="the data port holding the class indices"),
                 embedding: str = param("features", doc="the teacher output port holding "
                                        "its embeddings (penultimate layer)"),
                 batch_size: int = param(512, gt=0, doc="examples per teacher call in the "
                                         "fit")) -> None:
        super().__init__()
        import torch

        self.refs = (model, data)
        self.subclasses, self.temperature = subclasses, temperature
        self.sub_temperature, self.assignment = sub_temperature, assignment
        self.input, self.labels, self.embedding, self.chunk = input, labels, embedding, \
            batch_size
        self.fit: dict[str, Any] = {"fingerprint": torch.zeros(2, dtype=torch.float64)}
        self.fits = 0  # how many times this module has fitted (not saved)

    # -- the fit, saved with the node -----------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in self.fit.items()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.fit = {k: v.clone() for k, v in state.items()}

    def _fingerprint(self):  # noqa: ANN202
        import torch

        params = [p.detach().double().cpu() for p in self.refs[0].parameters()]
        if not params:
            return torch.zeros(2, dtype=torch.float64)
        return torch.stack([sum(p.sum() for p in params),
                            sum(p.square().sum() for p in params)])

    def refresh(self, classes: int) -> None:
        """Fit the projections if never fitted, or (in training) if the teacher changed."""
        import torch

        model, data = self.refs
        fingerprint = self._fingerprint()
        fitted = "means" in self.fit
        if fitted and (not self.training or torch.equal(fingerprint, self.fit["fingerprint"])):
            return
        split = data.train
        if self.input not in split or self.labels not in split:
            raise ValueError(f"lelp: the data's training split has no '{self.input}' and "
                             f"'{self.labels}' ports (it has {sorted(split)}); set input / "
                             "labels to its ports")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                xs, parts = split[self.input], []
                for start in range(0, xs.shape[0], self.chunk):
                    out = model(x=xs[start:start + self.chunk].to(device))
                    if not isinstance(out, dict) or self.embedding not in out:
                        found = sorted(out) if isinstance(out, dict) else ["a tensor"]
                        raise ValueError(f"lelp: the teacher has no output '{self.embedding}' "
                                         f"(it outputs {', '.join(found)}); set embedding to "
                                         "its embedding port")
                    parts.append(out[self.embedding].flatten(1).cpu())
        finally:
            model.train(was_training)
        means, vectors, scales = fit_projections(torch.cat(parts), split[self.labels].long(),
                                                 classes, self.subclasses // 2)
        self.fit = {"means": means, "vectors": vectors, "scales": scales,
                    "fingerprint": fingerprint}
        self.fits += 1

    def forward(self, student: Logits("B, N", "student subclass scores, c * S + k "
                                      "(subclass_mlp's subclass_logits)"),
                teacher: Logits("B, C", "teacher class scores"),
                embeddings: Features("B, D", "the teacher's embeddings of the batch (the "
                                     "port named by embedding)")
                ) -> Scalar(None, "LELP loss"):
        import torch
        import torch.nn.functional as F
        from dgraph.components.losses._divergence import at_least_float32, zero_from

        batch, classes = teacher.shape
        if student.dim() != 2 or student.shape[1] != classes * self.subclasses:
            raise ValueError(f"lelp: the student has {list(student.shape)} subclass scores; "
                             f"with the teacher's {classes} classes and subclasses "
                             f"{self.subclasses} it needs [B, {classes * self.subclasses}] "
                             "(a subclass_mlp with the same num_classes and subclasses)")
        if student.is_meta or batch == 0:
            return zero_from(student, teacher, embeddings)
        self.refresh(classes)
        fit = {k: v.to(embeddings.device) for k, v in self.fit.items()}
        scores = subclass_scores(embeddings.flatten(1).detach(), fit["means"],
                                 fit["vectors"], fit["scales"])
        q = subclass_target(teacher.detach(), scores, self.temperature, self.sub_temperature,
                            self.assignment)
        log_s = F.log_softmax(at_least_float32(student) / self.temperature, dim=-1)
        q = q.to(log_s.dtype)
        kl = torch.where(q > 0, q * (q.clamp_min(1e-30).log() - log_s),
                         torch.zeros_like(q)).sum(-1).mean()
        return kl * self.temperature ** 2


@model("subclass_mlp", roles=("student", "teacher", "model"),
       sizes=lambda p: {"subclass_outputs": p.num_classes * p.subclasses})
class SubclassMLP(Module):
    """An MLP scoring subclasses, whose class score sums its subclasses' probabilities.

    It has ``num_classes * subclasses`` outputs (subclass ``k`` of class ``c`` at
    ``c * subclasses + k``); the class scores are the log-sum-exp over each class's subclass
    scores: ``softmax(logits)[c] = sum_k softmax(subclass_logits)[c * S + k]``.

    The student of ``lelp``: evaluation, agreement and export see its class ``logits``.
    """

    def __init__(self, *, in_features: int = param(gt=0, doc="input width"),
                 hidden: list[int] = param([128], doc="hidden layer widths"),
                 num_classes: int = param(gt=0, doc="classes C"),
                 subclasses: int = param(2, ge=1, le=64, doc="S: outputs per class"),
                 activation: Literal["relu", "gelu", "tanh", "silu"] = param(
                     "relu", doc="nonlinearity after each hidden layer")) -> None:
        super().__init__()
        from dgraph.components.models.mlp import MLP

        self.num_classes, self.subclasses = num_classes, subclasses
        self.net = MLP.create(in_features=in_features, hidden=hidden,
                              num_classes=num_classes * subclasses, activation=activation)

    def forward(self, x: Features("B, {in_features}", "flat input features")) -> Outputs(
            logits=Logits("B, {num_classes}", "class scores: log-sum-exp of each class's "
                          "subclass scores"),
            subclass_logits=Logits("B, {subclass_outputs}", "subclass scores, c * S + k"),
            features=Features("B, {hidden[-1]}", "last hidden activation")):
        out = self.net(x=x)
        sub = out["logits"]
        logits = sub.unflatten(1, (self.num_classes, self.subclasses)).logsumexp(-1)
        return {"logits": logits, "subclass_logits": sub, "features": out["features"]}
