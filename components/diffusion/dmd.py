"""Distribution matching distillation (Yin et al. 2024, DMD; DMD2): the generator's loss.

The one-step generator's samples ``x`` are noised to ``x_t``; the frozen teacher (the "real"
score) and a fake-score network trained alongside on the generator's detached samples (with
``denoising_loss``) each predict ``x0`` there. The gradient of the KL between the generated
and the real distribution is approximated, per example, by

    g = (x0_fake - x0_real) / mean_{dims} |x - x0_real|

and applied through the stop-gradient surrogate ``L = 0.5 * mean |x - sg(x - g)|^2`` (its
gradient with respect to ``x`` is ``g / numel``), as in DMD2's distribution matching loss.
The spec ``dmd2_toy`` wires it: a one-step generator (``diffusion_convert`` of the teacher's
network at ``t = 999``, initialised from the teacher), ``x_t`` from the *detached* samples,
the fake score trained by ``denoising_loss`` on them in its own update every step, and the
generator's update every ``every`` steps (DMD2's two time-scale rule, 5 by default).
"""

from __future__ import annotations

from dgraph.declare import Module, NodeRef, Scalar, Tensor, Timesteps, loss, param
from dgraph.registry import BuildContext

__all__ = ["DMDLoss"]


@loss("dmd_loss")
class DMDLoss(Module):
    """DMD's distribution-matching surrogate on generated samples (see the module docs)."""

    def __init__(self, *, scheduler: NodeRef = param(doc="the noise_scheduler node that "
                                                     "reads both networks' predictions"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import check_pair

        check_pair(context, None, scheduler)
        self.refs = (scheduler,)

    def forward(self, sample: Tensor("B, ...", "the generator's samples x (with gradients)"),
                noisy: Tensor("B, ...", "x_t: the samples noised at t (detached)"),
                real: Tensor("B, ...", "the teacher's prediction at x_t (guided or not)"),
                fake: Tensor("B, ...", "the fake-score network's prediction at x_t"),
                timestep: Timesteps("B", "t per example")) -> Scalar():
        import torch

        (scheduler,) = self.refs
        with torch.no_grad():
            x0_real, _ = scheduler.to_x0_eps(noisy, real, timestep)
            x0_fake, _ = scheduler.to_x0_eps(noisy, fake, timestep)
            dims = tuple(range(1, sample.dim()))
            scale = (sample - x0_real).abs().mean(dim=dims, keepdim=True)
            grad = torch.nan_to_num((x0_fake - x0_real) / scale)
        return 0.5 * (sample.float() - (sample - grad).detach().float()).square().mean()
