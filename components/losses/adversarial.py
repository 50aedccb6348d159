"""Adversarial losses (non-saturating GAN) for two-update specs: a critic and a generator.

With logits ``d`` from the critic: critic loss ``softplus(-d_real) + softplus(d_fake)``
(mean over the batch); generator loss ``softplus(-d_fake)`` (Goodfellow et al., 2014).
An empty set of scores adds 0 (connected to the inputs); a logit of ``-inf`` on the side
that should be high gives ``+inf`` (the true loss), on the other side exactly 0. fp16/bf16
logits are computed in float32.
"""

from __future__ import annotations

from dgraph.declare import Features, Scalar, loss

__all__ = ["gan_critic_loss", "gan_generator_loss"]


@loss
def gan_critic_loss(real: Features("B, 1", "critic logits on real samples"),
                    fake: Features("N, 1", "critic logits on generated samples"),
                    ) -> Scalar(None, "critic loss"):
    """``mean(softplus(-real)) + mean(softplus(fake))``: the critic's side of a GAN.

    Fake scores should come from generator samples the critic update does not train (the
    compiler then runs the generator without gradients: the samples are detached).
    """
    import torch

    # This runs every step: _divergence's at_least_float32 and mean_or_zero written out.
    if real.dtype.itemsize < 4 and real.is_floating_point():
        real = real.float()
    if fake.dtype.itemsize < 4 and fake.is_floating_point():
        fake = fake.float()
    softplus = torch.nn.functional.softplus
    return (softplus(-real).sum() / max(real.numel(), 1)
            + softplus(fake).sum() / max(fake.numel(), 1))


@loss
def gan_generator_loss(fake: Features("B, 1", "critic logits on generated samples"),
                       ) -> Scalar(None, "generator loss"):
    """``mean(softplus(-fake))``: the non-saturating generator loss."""
    import torch

    if fake.dtype.itemsize < 4 and fake.is_floating_point():  # at_least_float32
        fake = fake.float()
    return torch.nn.functional.softplus(-fake).sum() / max(fake.numel(), 1)  # mean_or_zero
