"""Score distillation: optimise samples (a learnable tensor of particles) against a frozen
diffusion teacher.

* ``sds_loss``: Score Distillation Sampling (Poole et al. 2022, DreamFusion). For samples
  ``x`` noised to ``x_t = alpha_t x + sigma_t eps`` the per-example gradient is
  ``g = w(t) (eps_real(x_t, t) - eps)`` with ``eps_real`` the teacher's epsilon at ``x_t``;
* ``vsd_loss``: Variational Score Distillation (Wang et al. 2023, ProlificDreamer): the
  injected ``eps`` is replaced by the epsilon of a fake-score network trained alongside on
  the (detached) samples with ``denoising_loss``: ``g = w(t) (eps_real - eps_fake)``.

Both apply ``g`` through the stop-gradient surrogate ``L = 0.5 * mean |x - sg(x - g)|^2``,
whose gradient with respect to ``x`` is ``g / numel(x)`` (the Jacobian of the denoiser is
skipped, as in both papers). ``w(t)`` is ``sigma_t^2 = 1 - abar_t`` (``weighting:
sigma_sq``, DreamFusion's choice) or 1 (``none``). Predictions of any type are read as
epsilon through the ``noise_scheduler`` node.

``particle_samples`` measures a learnable tensor of points against the held-out split of a
data node: ``energy_distance``, ``mode_coverage``, ``in_modes`` (as ``diffusion_samples``)
and ``spread``, the mean distance of a particle to its nearest mode's centre divided by that
of the held-out points (1: as spread as the data; near 0: collapsed onto the centres).
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.components._inputs import input_error

from dgraph.declare import Module, NodeRef, Scalar, Tensor, Timesteps, loss, metric, param
from dgraph.registry import BuildContext

__all__ = ["ParticleSamples", "SDSLoss", "VSDLoss", "score_gradient", "surrogate"]

Weighting = Literal["sigma_sq", "none"]


def surrogate(sample: Any, grad: Any) -> Any:
    """``0.5 * mean |x - sg(x - g)|^2``: its gradient with respect to ``x`` is
    ``g / numel``."""
    return 0.5 * (sample.float() - (sample - grad).detach().float()).square().mean()


def score_gradient(scheduler: Any, noisy: Any, real: Any, baseline: Any, timestep: Any,
                   weighting: str, baseline_is_prediction: bool) -> Any:
    """``w(t) (eps_real - eps_baseline)`` without gradients; ``real`` (and ``baseline`` when
    ``baseline_is_prediction``) are network outputs read through ``scheduler``."""
    import torch

    with torch.no_grad():
        _, eps_real = scheduler.to_x0_eps(noisy, real, timestep)
        if baseline_is_prediction:
            _, eps_base = scheduler.to_x0_eps(noisy, baseline, timestep)
        else:
            eps_base = baseline
        grad = eps_real - eps_base
        if weighting == "sigma_sq":
            _, sigma = scheduler.alpha_sigma(timestep, noisy)
            grad = grad * sigma.square()
        return torch.nan_to_num(grad.float()).to(noisy.dtype)


class _ScoreLoss(Module):
    def __init__(self, *, scheduler: NodeRef = param(doc="the noise_scheduler node that "
                                                     "reads the networks' predictions"),
                 weighting: Weighting = param("sigma_sq", doc="w(t): sigma_sq (1 - abar_t, "
                                              "DreamFusion) or none (1)"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import check_pair

        check_pair(context, None, scheduler)
        self.refs = (scheduler,)
        self.weighting = weighting


@loss("sds_loss")
class SDSLoss(_ScoreLoss):
    """Score Distillation Sampling: ``g = w(t) (eps_real(x_t) - eps)``, a surrogate loss.

    Applied through ``0.5 * mean |x - sg(x - g)|^2`` (see the module's documentation).
    """

    def forward(self, sample: Tensor("B, ...", "the samples x (with gradients)"),
                noisy: Tensor("B, ...", "x_t = alpha_t x + sigma_t eps (detached)"),
                real: Tensor("B, ...", "the frozen teacher's prediction at x_t"),
                noise: Tensor("B, ...", "the noise eps of x_t"),
                timestep: Timesteps("B", "t per example")) -> Scalar():
        (scheduler,) = self.refs
        grad = score_gradient(scheduler, noisy, real, noise, timestep, self.weighting, False)
        return surrogate(sample, grad)


@loss("vsd_loss")
class VSDLoss(_ScoreLoss):
    """Variational Score Distillation: ``g = w(t) (eps_real - eps_fake)``, a surrogate loss.

    Applied through ``0.5 * mean |x - sg(x - g)|^2`` at ``x_t``; the fake-score network is
    trained on the detached samples by a separate update (see the module's documentation).
    """

    def forward(self, sample: Tensor("B, ...", "the samples x (with gradients)"),
                noisy: Tensor("B, ...", "x_t = alpha_t x + sigma_t eps (detached)"),
                real: Tensor("B, ...", "the frozen teacher's prediction at x_t"),
                fake: Tensor("B, ...", "the fake-score network's prediction at x_t"),
                timestep: Timesteps("B", "t per example")) -> Scalar():
        (scheduler,) = self.refs
        grad = score_gradient(scheduler, noisy, real, fake, timestep, self.weighting, True)
        return surrogate(sample, grad)


@metric("particle_samples")
class ParticleSamples(Module):
    """A learnable tensor of points against the held-out split of ``data``.

    Values: ``energy_distance``, ``mode_coverage``, ``in_modes`` and ``spread`` (see the
    module's documentation).
    """

    def __init__(self, *, particles: NodeRef = param(doc="the learnable_tensor node of "
                                                     "points [N, D]"),
                 data: NodeRef = param(doc="the data node whose held-out split (all of it) is "
                                       "the reference"),
                 x: str = param("x", doc="the data port of samples"),
                 labels: str = param("mode", doc="the data port of mode labels"),
                 radius_factor: float = param(3.0, gt=0, allow_inf_nan=False,
                                              doc="a mode's radius, in RMS distances"),
                 min_share: float = param(0.1, gt=0, le=1, allow_inf_nan=False,
                                          doc="share of n / modes a covered mode receives"),
                 context: BuildContext) -> None:
        super().__init__()
        value = getattr(particles, "value", None)
        if value is None or getattr(value, "dim", lambda: 0)() != 2:
            raise input_error(context, "particles", "the node named is not a learnable tensor "
                              "of points [N, D]", code="bad-reference",
                              expected="a learnable_tensor node with shape [N, D]",
                              found=type(particles).__name__ if value is None
                              else f"shape {list(value.shape)}",
                              hint="name the spec's learnable_tensor of particles")
        held_out = getattr(data, "eval", None) or {}
        for name, port in (("x", x), ("labels", labels)):
            if held_out and port not in held_out:
                raise input_error(context, name, f"the data node has no port '{port}'",
                                  code="bad-param", expected=f"one of {sorted(held_out)}",
                                  found=port, hint="name a port of the data node")
        self.refs = (particles, data)
        self.x, self.labels = x, labels
        self.radius_factor, self.min_share = radius_factor, min_share

    def reset(self) -> None:
        pass

    def update(self) -> None:
        pass

    def compute(self) -> Scalar(None, "energy_distance, mode_coverage, in_modes, spread"):
        import torch
        from dgraph.components.diffusion.metrics import mode_coverage
        from dgraph.components.metrics.distribution import EnergyDistance

        particles, data = self.refs
        fake = particles.value.detach().float().cpu()
        real = data.eval[self.x].float().cpu()
        labels = data.eval[self.labels].cpu()
        energy = EnergyDistance.create(max_samples=max(fake.shape[0], real.shape[0], 2))
        energy.update(real=real.flatten(1), fake=fake.flatten(1))
        coverage, inside = mode_coverage(fake, real, labels, radius_factor=self.radius_factor,
                                         min_share=self.min_share)
        centres = torch.stack([real[labels == c].mean(0) for c in labels.unique()])
        near_fake = torch.cdist(fake.double(), centres.double()).min(1).values.mean()
        near_real = torch.cdist(real.double(), centres.double()).min(1).values.mean()
        return {"energy_distance": energy.compute()["value"], "mode_coverage": coverage,
                "in_modes": inside, "spread": float(near_fake / near_real)}
