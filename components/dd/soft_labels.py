"""Learnable soft labels of a small set (DATM, Guo et al. 2024): label logits as a tensor node.

DATM learns, besides the synthetic images, one logit vector per image, trained by the same
trajectory-matching loss (a further parameter group of the update): the inner training of
trajectory matching and the evaluation then use ``softmax(logits / T)`` instead of one-hot
classes. The logits start at ``scale`` for the image's class and 0 elsewhere.
"""

from __future__ import annotations

from dgraph.declare import Logits, Module, NodeRef, Outputs, Probs, component, param

__all__ = ["LearnableSoftLabels"]


@component("learnable_soft_labels", roles=("tensor",), tappable=False)
class LearnableSoftLabels(Module):
    """Soft labels ``probs = softmax(logits / temperature)`` of a set's images, learnable.

    The set is the node named by ``set``, a tensor node keeping its classes as a ``labels``
    tensor (``synthetic_digits``, ``dataset_quantization``): ``logits [N, C]`` (an
    ``nn.Parameter``, one row per image of the set, so a set of another size resizes it)
    start as ``scale * onehot(labels)``. With
    ``learn: false`` the output ``probs`` is the one-hot classes themselves, a constant (the
    parameter then gets no gradient, so an update listing the node leaves it unchanged): a
    spec can wire soft labels everywhere and switch learning on with one ``--set``.
    """

    def __init__(self, *,
                 set: NodeRef = param(doc="the tensor node of the set labelled (its "
                                      "classes: its labels tensor)"),
                 num_classes: int = param(10, gt=1, doc="classes"),
                 learn: bool = param(False, doc="true: probs = softmax(logits / T), learned; "
                                     "false: the one-hot classes (constant)"),
                 scale: float = param(5.0, gt=0.0, allow_inf_nan=False,
                                      doc="initial logit of each image's class (others 0)"),
                 temperature: float = param(1.0, gt=0.0, allow_inf_nan=False,
                                            doc="softmax temperature T")) -> None:
        super().__init__()
        import torch

        labels = getattr(set, "labels", None)
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or \
                labels.is_floating_point():
            raise ValueError(f"set must name a tensor node holding its classes as a 1-D "
                             f"integer tensor 'labels' (synthetic_digits, dataset_quantization)"
                             f"; it names a {type(set).__name__}")
        onehot = torch.eye(num_classes)[labels]
        self.register_buffer("onehot", onehot)
        self.logits = torch.nn.Parameter(scale * onehot)
        self.learn, self.temperature = learn, temperature

    def forward(self) -> Outputs(probs=Probs("N, {num_classes}", "the soft labels (one row "
                                             "per image of the set)"),
                                 logits=Logits("N, {num_classes}",
                                               "the learnable label logits")):
        import torch

        if not self.learn:
            return {"probs": self.onehot, "logits": self.logits}
        return {"probs": torch.softmax(self.logits / self.temperature, dim=-1),
                "logits": self.logits}

    def extra_repr(self) -> str:
        return f"shape={list(self.logits.shape)}, learn={self.learn}"
