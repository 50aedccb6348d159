"""Adversarial losses (non-saturating GAN) for two-update specs: a critic and a generator.

With logits ``d`` from the critic: critic loss ``softplus(-d_real) + softplus(d_fake)``
(mean over the batch); generator loss ``softplus(-d_fake)`` (Goodfellow et al., 2014).
An empty set of scores adds 0 (connected to the inputs); a logit of ``-inf`` on the side
that should be high gives ``+inf`` (the true loss), on the other side exactly 0. fp16/bf16
logits are computed in float32.
"""

from __future__ import annotations

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, component

__all__ = ["GANCriticLoss", "GANGeneratorLoss"]


@component("gan_critic_loss", roles=("loss",))
class GANCriticLoss(Component):
    """``mean(softplus(-real)) + mean(softplus(fake))``: the critic's side of a GAN.

    Fake scores should come from generator samples the critic update does not train (the
    compiler then runs the generator without gradients: the samples are detached).
    """

    inputs = {
        "real": Port("Features", "B, 1", "critic logits on real samples"),
        "fake": Port("Features", "N, 1", "critic logits on generated samples"),
    }
    outputs = {"loss": Port("Scalar", None, "critic loss")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_losses import GANCriticLossModule

        return GANCriticLossModule()


@component("gan_generator_loss", roles=("loss",))
class GANGeneratorLoss(Component):
    """``mean(softplus(-fake))``: the non-saturating generator loss."""

    inputs = {"fake": Port("Features", "B, 1", "critic logits on generated samples")}
    outputs = {"loss": Port("Scalar", None, "generator loss")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_losses import GANGeneratorLossModule

        return GANGeneratorLossModule()
