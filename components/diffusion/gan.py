"""DMD2's GAN head (Yin et al. 2024): a discriminator on noisy samples for a one-step generator.

``gan_head`` outputs one realism logit per noisy sample ``x_t``. With ``network`` naming the
fake-score network (a ``unet_denoiser`` or ``time_mlp`` node), the logit is a small head on that
network's bottleneck features at ``(x_t, t, class)``, as in DMD2: the output of the UNet's
mid block (``[B, C, h, w]``: conv 3x3, GroupNorm, SiLU, spatial mean, linear) or the MLP's
last hidden layer (``[B, C]``: linear, SiLU, linear). The network is run up to its bottleneck
only; it is held by reference (its weights stay the fake-score node's), so the update that
trains the fake score with the head's loss trains the network's encoder too, and the
generator's update (which trains neither) passes gradients through both to the samples.
Without ``network`` the head has its own trunk: a ``time_mlp`` on the flattened ``x_t``
(``in_features`` values), read at its last hidden layer the same way.

The losses are the non-saturating GAN losses of ``components/losses/adversarial.py``, with
``d`` the head's logits: the discriminator's ``softplus(-d(x_t^real)) + softplus(d(x_t^fake))``
(``gan_critic_loss``, in the fake-score update, on detached generator samples) and the
generator's ``softplus(-d(x_t^fake))`` (``gan_generator_loss``, added to the DMD objective,
on samples with gradients). ``dmd2_digits`` wires them; DMD2's weights are 1e-2 (discriminator)
and 3e-3 (generator).
"""

from __future__ import annotations

from typing import Annotated, Any

from dgraph.components._inputs import input_error
from pydantic import Field

from dgraph.declare import (
    Features,
    Labels,
    Module,
    NodeRef,
    Outputs,
    Tensor,
    Timesteps,
    model,
    param,
)
from dgraph.registry import BuildContext

__all__ = ["GANHead", "bottleneck"]

Widths = list[Annotated[int, Field(gt=0)]]


class _Reached(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a forward hook to stop a network at its bottleneck, carrying the features."""

    def __init__(self, features: Any) -> None:
        super().__init__()
        self.features = features


def _bottleneck_layer(network: Any) -> tuple[Any, bool, int] | None:
    """``(module, read its input?, channels)`` of a denoiser's bottleneck, None if unknown:
    a diffusers UNet's mid block (its output), an MLP denoiser's output layer (its input)."""
    unet = getattr(network, "model", None)
    mid = getattr(unet, "mid_block", None)
    if mid is not None and hasattr(unet, "config"):
        return mid, False, int(unet.config.block_out_channels[-1])
    out = getattr(network, "out", None)
    if out is not None and hasattr(out, "in_features") and hasattr(network, "embed"):
        return out, True, int(out.in_features)
    return None


def bottleneck(network: Any, sample: Any, timestep: Any, class_labels: Any = None) -> Any:
    """The bottleneck features of ``network`` at ``(sample, timestep, class_labels)``; the
    layers after the bottleneck are not run."""
    found = _bottleneck_layer(network)
    if found is None:
        raise TypeError(f"{type(network).__name__} has no known bottleneck")
    layer, read_input, _ = found

    def stop(_module: Any, inputs: Any, output: Any = None) -> None:
        raise _Reached(inputs[0] if read_input else output)

    handle = (layer.register_forward_pre_hook(stop) if read_input
              else layer.register_forward_hook(stop))
    try:
        network(sample=sample, timestep=timestep, class_labels=class_labels)
    except _Reached as reached:
        return reached.features
    finally:
        handle.remove()
    raise RuntimeError(f"{type(network).__name__} never reached its bottleneck")


def _check(p: Any) -> None:
    if p.network is None and p.in_features is None:
        raise ValueError("a gan_head without 'network' needs 'in_features' (the values per "
                         "sample) for its own trunk")


@model("gan_head", roles=("model",), check=_check)
class GANHead(Module):
    """A realism logit per noisy sample, from the fake score's bottleneck or an own trunk.

    The head reads the bottleneck features of ``network`` (or of its own ``time_mlp`` trunk
    without one); see the module docs.
    """

    def __init__(self, *, network: NodeRef | None = param(
                     None, doc="the fake-score network (unet_denoiser or time_mlp) whose "
                     "bottleneck features the head reads; null: the head's own trunk"),
                 hidden: int = param(64, gt=0, doc="the head's hidden width"),
                 in_features: int | None = param(None, gt=0, doc="without network: values "
                                                 "per sample (flattened) of the own trunk"),
                 trunk: Widths = param([128, 128], min_length=1, doc="without network: "
                                       "hidden widths of the own trunk (a time_mlp)"),
                 num_classes: int | None = param(None, gt=0, doc="without network: classes "
                                                 "the own trunk is conditioned on"),
                 context: BuildContext) -> None:
        super().__init__()
        from torch import nn

        if network is not None:
            found = _bottleneck_layer(network)
            if found is None:
                raise input_error(context, "network", "the GAN head reads the bottleneck of a "
                                  "unet_denoiser (its mid block) or a time_mlp (its last "
                                  "hidden layer), and the node named is neither",
                                  code="bad-reference", expected="a unet_denoiser or "
                                  "time_mlp node (the fake score)",
                                  found=type(network).__name__, hint="name the fake-score "
                                  "network, or set network: null for the head's own trunk")
            channels = found[2]
            spatial = not found[1]
            self.refs = (network,)
            self.trunk = None
        else:
            from dgraph.components.diffusion.denoisers import TimeMLP

            self.refs = ()
            self.trunk = TimeMLP.create(in_features=in_features, hidden=list(trunk),
                                        num_classes=num_classes)
            channels, spatial = trunk[-1], False
        if spatial:
            groups = next(g for g in (8, 4, 2, 1) if hidden % g == 0)
            self.head = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1),
                                      nn.GroupNorm(groups, hidden), nn.SiLU())
        else:
            self.head = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU())
        self.logit = nn.Linear(hidden, 1)

    def features(self, sample: Any, timestep: Any, class_labels: Any = None) -> Any:
        """The bottleneck features the head reads."""
        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        if self.trunk is not None:
            return bottleneck(self.trunk, sample.flatten(1), timestep, class_labels)
        (network,) = self.refs
        return bottleneck(network, sample, timestep, class_labels)

    def forward(self, sample: Tensor("B, ...", "noisy samples x_t (real or generated)"),
                timestep: Timesteps("B", "t per sample"),
                class_labels: Labels("B", "class per sample (conditional networks)") = None,
                ) -> Outputs(logits=Features("B, 1", "realism logits (high: real)")):
        h = self.head(self.features(sample, timestep, class_labels))
        if h.dim() == 4:
            h = h.mean(dim=(2, 3))
        return {"logits": self.logit(h)}
