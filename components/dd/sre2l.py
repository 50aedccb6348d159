"""SRe2L's recover step (Yin et al. 2023): BatchNorm-statistics matching and image priors.

``bn_stat_match`` is SRe2L's ``L_BN``: synthetic images are fed through a frozen teacher that
was trained with batch norm, and the statistics of what reaches each BN layer are pulled to
the layer's running statistics,

    L_BN = sum_l ||mu_l(x) - running_mean_l||_2 + ||sigma^2_l(x) - running_var_l||_2

where ``mu_l`` and ``sigma^2_l`` are the per-channel mean and (biased, population) variance of
the BN layer's INPUT over every dimension but the channel one (``[B, C, ...]``), as in the
paper's code. Taps read a submodule's output; this needs a BN layer's input and its running
statistics, so the node holds a :class:`~dgraph.declare.NodeRef` to the teacher and registers
its own forward pre-hooks on every ``BatchNorm1d/2d/3d`` of it. Each forward of the teacher
records the statistics of that forward (the latest replaces the previous); the loss consumes
them and clears them, so a step can only use statistics recorded in that step. The node's
``after`` input is wired to an output of the teacher (``teacher.logits``): it orders this node
after the teacher's forward on the synthetic images, which the teacher node itself runs (the
teacher is not run twice).

``total_variation`` and ``l2_prior`` are the image priors of DeepInversion/SRe2L.
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.declare import Images, Module, NodeRef, Scalar, Tensor, component, loss, param

__all__ = ["BNStatMatch", "l2_prior", "total_variation"]


@component("bn_stat_match", roles=("loss",), tappable=False)
class BNStatMatch(Module):
    """SRe2L's ``L_BN`` over every BatchNorm layer of the node named by ``model``.

    ``loss = sum_l ||mean_l - running_mean_l||_2 + ||var_l - running_var_l||_2``, with
    ``mean_l``/``var_l`` the per-channel mean and biased variance of layer ``l``'s input over
    the batch and spatial dimensions in the model's latest forward (the one that produced
    ``after``). The referenced model must be frozen (evaluation mode), so its forward uses and
    keeps its running statistics; gradients reach the images through the model.
    """

    def __init__(self, *, model: NodeRef = param(doc="the frozen node (a network trained with "
                                                 "batch norm) whose BN layers are matched")
                 ) -> None:
        super().__init__()
        from torch import nn

        # A tuple: the referenced network must not become a submodule of this node.
        self._model = (model,)
        self._layers = [(name, module) for name, module in model.named_modules()
                        if isinstance(module, nn.modules.batchnorm._BatchNorm)]
        if not self._layers:
            raise ValueError("bn_stat_match: the model named by 'model' has no BatchNorm "
                             "layer (BatchNorm1d/2d/3d) to match")
        for missing in [name for name, bn in self._layers if bn.running_mean is None]:
            raise ValueError(f"bn_stat_match: BatchNorm layer '{missing}' keeps no running "
                             "statistics (track_running_stats=False)")
        self._stats: dict[str, tuple[Any, Any]] = {}
        self._handles = [bn.register_forward_pre_hook(self._hook(name))
                         for name, bn in self._layers]

    def _hook(self, name: str) -> Any:
        def record(_module: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            dims = [0, *range(2, x.dim())]
            self._stats[name] = (x.mean(dim=dims), x.var(dim=dims, unbiased=False))

        return record

    def forward(self, after: Tensor("B, ...", "an output of the model's forward whose BN "
                                    "inputs are matched (wire model.logits): orders this node "
                                    "after it"),
                ) -> Scalar(None, "sum over BN layers of the L2 distances of the batch "
                            "statistics to the running ones"):
        del after
        training = [name for name, bn in self._layers if bn.training]
        if training:
            raise ValueError(f"bn_stat_match: BatchNorm layer '{training[0]}' of the model is "
                             "in training mode, so its forward changes the running statistics "
                             "it is matched to; make the model node frozen")
        missing = [name for name, _ in self._layers if name not in self._stats]
        if missing:
            raise ValueError(f"bn_stat_match: no forward of the model reached BatchNorm layer "
                             f"'{missing[0]}' since the last loss; wire 'after' to an output "
                             "of the model fed with the images")
        total = 0
        for name, bn in self._layers:
            mean, var = self._stats[name]
            total = total + (mean.float() - bn.running_mean.float()).norm(2) \
                + (var.float() - bn.running_var.float()).norm(2)
        self._stats.clear()
        return total


@loss
def total_variation(
    images: Images("B, C, H, W", "the images"), *,
    norm: Literal["l1", "l2"] = param("l2", doc="l1: mean absolute neighbour differences; "
                                      "l2: mean squared ones"),
) -> Scalar(None, "anisotropic total variation"):
    """Anisotropic total variation of images, ``p = 1`` (``l1``) or ``p = 2`` (``l2``).

    ``TV = mean_{b,c,i,j} |x[b,c,i+1,j] - x[b,c,i,j]|^p + mean_{b,c,i,j} |x[b,c,i,j+1] -
    x[b,c,i,j]|^p``: each mean is over that direction's ``B*C*(H-1)*W`` (resp.
    ``B*C*H*(W-1)``) differences; a direction with no pairs (``H = 1`` or ``W = 1``) adds 0.
    Computed in float32 for half inputs.
    """
    x = images.float()
    down = x[:, :, 1:, :] - x[:, :, :-1, :]
    right = x[:, :, :, 1:] - x[:, :, :, :-1]
    total = x.sum() * 0
    for diff in (down, right):
        if diff.numel():
            total = total + (diff.abs() if norm == "l1" else diff.square()).mean()
    return total


@loss
def l2_prior(images: Tensor("B, ...", "the images"),
             ) -> Scalar(None, "mean over the batch of the squared L2 norm"):
    """L2 image prior: the squared norm of each image, averaged over the batch.

    ``L = (1/B) sum_b ||x_b||_2^2`` (0 for an empty batch). Computed in float32 for half
    inputs.
    """
    x = images.float()
    return x.square().sum() / max(x.shape[0], 1)
