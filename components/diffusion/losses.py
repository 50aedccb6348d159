"""Losses of diffusion training and distillation.

* ``denoising_loss``: the network's output against what its prediction type should be
  (``eps``, ``x0``, ``v = alpha eps - sigma x0`` or ``eps - x0``), MSE or pseudo-Huber;
* ``progressive_loss``: Salimans & Ho (2022): the student's one step ``t -> t''`` must land
  where two teacher steps landed, i.e. its ``x0_hat`` must equal
  ``(x_t'' - (sigma_t''/sigma_t) x_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)``, weighted by
  ``max(SNR(t), 1)`` (truncated SNR weighting);
* ``consistency_loss``: ``d(f_theta(x_{t_{n+k}}), f_target(x_hat_{t_n}))`` with the target
  side detached (an EMA or stop-gradient copy), MSE or pseudo-Huber
  ``sqrt((a - b)^2 + c^2) - c`` (elementwise, as in LCM's training script).
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.declare import Module, NodeRef, Scalar, Tensor, Timesteps, loss, param
from dgraph.registry import BuildContext

__all__ = ["DenoisingLoss", "ProgressiveLoss", "consistency_loss", "distance"]

Distance = Literal["mse", "pseudo_huber"]


def distance(a: Any, b: Any, kind: str, c: float) -> Any:
    """Per-example mean of the elementwise squared error or pseudo-Huber distance."""
    diff = (a.float() - b.float()).flatten(1)
    if kind == "mse":
        return diff.square().mean(1)
    return ((diff.square() + c * c).sqrt() - c).mean(1)


@loss("denoising_loss")
class DenoisingLoss(Module):
    """The denoising loss: the network's output against its prediction type's target.

    ``mean d(prediction, target)`` at ``x_t = alpha_t sample + sigma_t noise``, the target
    being ``noise`` (epsilon), ``sample`` (x0), ``alpha_t noise - sigma_t sample``
    (v_prediction) or ``noise - sample`` (flow), as the scheduler's prediction type says.
    """

    def __init__(self, *, scheduler: NodeRef = param(doc="the noise_scheduler node"),
                 distance: Distance = param("mse", doc="mse or pseudo_huber"),
                 huber_c: float = param(0.001, gt=0, allow_inf_nan=False,
                                        doc="pseudo-Huber's c"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import check_pair

        check_pair(context, None, scheduler)
        self.refs = (scheduler,)
        self.distance, self.c = distance, huber_c

    def forward(self, prediction: Tensor("B, ...", "the network's output at x_t"),
                sample: Tensor("B, ...", "the clean samples x0"),
                noise: Tensor("B, ...", "the noise eps of x_t"),
                timestep: Timesteps("B", "t per example")) -> Scalar():
        (scheduler,) = self.refs
        target = scheduler.target(sample, noise, timestep)
        return distance(prediction, target, self.distance, self.c).mean()


@loss("progressive_loss")
class ProgressiveLoss(Module):
    """Progressive distillation's loss on the student's ``x0_hat`` at ``x_t``.

    ``target`` is where two teacher DDIM steps from ``t`` landed (``x_t''`` at ``previous``);
    the student's one DDIM step lands there exactly when its ``x0_hat`` equals
    ``x0~ = (x_t'' - r x_t) / (alpha_t'' - r alpha_t)``, ``r = sigma_t'' / sigma_t``. The loss
    is ``mean w(t) |x0_hat - x0~|^2`` with ``w = max(alpha_t^2 / sigma_t^2, 1)``
    (``weighting: snr_trunc``) or ``w = 1`` (``none``).
    """

    def __init__(self, *, scheduler: NodeRef = param(doc="the noise_scheduler node"),
                 weighting: Literal["snr_trunc", "none"] = param(
                     "snr_trunc", doc="snr_trunc: max(SNR, 1) (Salimans & Ho); none"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import check_pair

        check_pair(context, None, scheduler)
        self.refs = (scheduler,)
        self.weighting = weighting

    def forward(self, prediction: Tensor("B, ...", "the student's output at x_t"),
                sample: Tensor("B, ...", "x_t"),
                target: Tensor("B, ...", "x_t'' from the teacher's two steps"),
                timestep: Timesteps("B", "t per example"),
                previous: Timesteps("B", "t'' per example (-1: the clean end)")) -> Scalar():
        (scheduler,) = self.refs
        x0_hat, _ = scheduler.to_x0_eps(sample, prediction, timestep)
        alpha, sigma = scheduler.alpha_sigma(timestep, sample)
        alpha_p, sigma_p = scheduler.alpha_sigma(previous, sample)
        ratio = sigma_p / sigma
        x0_target = (target - ratio * sample) / (alpha_p - ratio * alpha)
        per_example = (x0_hat.float() - x0_target.detach().float()).flatten(1).square().mean(1)
        if self.weighting == "snr_trunc":
            snr = (alpha / sigma).square().flatten()
            per_example = per_example * snr.clamp_min(1.0)
        return per_example.mean()


@loss("consistency_loss")
def consistency_loss(prediction: Tensor("B, ...", "f_theta at x_{t_{n+k}} (the student)"),
                     target: Tensor("B, ...", "f at the solver's x_{t_n} (EMA or stop-grad "
                                    "copy); detached"),
                     *, distance: Distance = param("pseudo_huber", doc="mse or pseudo_huber"),
                     huber_c: float = param(0.001, gt=0, allow_inf_nan=False,
                                            doc="pseudo-Huber's c")) -> Scalar():
    """``mean d(prediction, sg(target))``: the consistency distillation loss."""
    return _distance(prediction, target.detach(), distance, huber_c).mean()


_distance = distance
