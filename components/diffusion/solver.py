"""Solver and conversion ops around a denoiser and a ``noise_scheduler``.

* ``diffusion_solve``: ``steps`` deterministic DDIM steps of a (frozen) denoiser from ``t`` to
  ``s`` per example, without gradients, with classifier-free guidance: the targets of
  progressive distillation (two teacher steps) and consistency distillation (one teacher step
  ``t_{n+k} -> t_n``).
* ``consistency_output``: ``f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t)``, the
  consistency model's parametrisation (LCM's boundary scalings, ``f(x, 0) = x``).
* ``diffusion_convert``: a network's prediction as another prediction type.
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.components._inputs import input_error

from dgraph.declare import (
    Labels,
    Module,
    NodeRef,
    Outputs,
    Tensor,
    Timesteps,
    TypeOf,
    op,
    param,
)
from dgraph.registry import BuildContext

__all__ = ["ConsistencyOutput", "DiffusionConvert", "DiffusionSolve", "guided"]


def guided(denoiser: Any, x: Any, t: Any, labels: Any, guidance: float,
           null_class: int | None) -> Any:
    """The denoiser's prediction; with ``guidance != 1``, classifier-free guidance
    ``uncond + w (cond - uncond)`` (the unconditional pass uses the null class)."""
    import torch
    from dgraph.components.diffusion.schedulers import call_denoiser

    if guidance == 1.0 or labels is None:
        return call_denoiser(denoiser, x, t, labels)
    null = torch.full_like(labels, int(null_class or 0))
    both = call_denoiser(denoiser, torch.cat([x, x]), torch.cat([t, t]),
                         torch.cat([labels, null]))
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


def check_guidance(context: BuildContext, denoiser: Any, guidance: float) -> int | None:
    """The null class index of a class-conditional denoiser; a located error for a guidance
    scale on an unconditional one."""
    classes = getattr(denoiser, "num_classes", None)
    if guidance != 1.0 and not classes:
        raise input_error(context, "guidance", f"guidance {guidance} needs a class-conditional "
                          "denoiser, and this one is unconditional", code="bad-param",
                          expected="guidance: 1.0 (no guidance) for an unconditional denoiser",
                          found=f"guidance: {guidance}", hint="set num_classes on the denoiser "
                          "(and wire class_labels), or remove guidance")
    return classes


@op("diffusion_solve")
class DiffusionSolve(Module):
    """``x_s`` from ``x_t``: ``steps`` DDIM steps of ``denoiser`` (no gradients).

    The interval ``t -> s`` of each example is cut into ``steps`` equal parts (rounded to
    timesteps); each part is ``x <- alpha_u x0_hat + sigma_u eps_hat``. ``s = -1`` is the
    clean end. With ``guidance`` w and ``class_labels``, the prediction is
    ``uncond + w (cond - uncond)``.
    """

    def __init__(self, *, denoiser: NodeRef = param(doc="the network that solves (a frozen "
                                                    "teacher)"),
                 scheduler: NodeRef = param(doc="the noise_scheduler node"),
                 steps: int = param(1, ge=1, le=1000, doc="solver steps from t to s"),
                 guidance: float = param(1.0, ge=0, allow_inf_nan=False,
                                         doc="classifier-free guidance scale (1: none)"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import check_pair

        check_pair(context, denoiser, scheduler)
        self.null_class = check_guidance(context, denoiser, guidance)
        self.refs = (denoiser, scheduler)  # other nodes' modules, not submodules
        self.steps, self.guidance = steps, guidance

    def forward(self, sample: Tensor("B, ...", "x_t"),
                timestep: Timesteps("B", "t per example"),
                to_timestep: Timesteps("B", "s per example (-1: the clean end)"),
                class_labels: Labels("B", "classes, for guidance") = None,
                ) -> Outputs(sample=TypeOf("sample")("B, ...", "x_s")):
        import torch

        denoiser, scheduler = self.refs
        x = sample
        t0, t1 = timestep.long(), to_timestep.long()
        with torch.no_grad():
            for i in range(self.steps):
                a = t0 + torch.div((t1 - t0) * i, self.steps, rounding_mode="trunc")
                b = t0 + torch.div((t1 - t0) * (i + 1), self.steps, rounding_mode="trunc")
                pred = guided(denoiser, x, a, class_labels, self.guidance, self.null_class)
                x = scheduler.ddim_step(x, pred, a, b)
        return {"sample": x.detach()}


@op("consistency_output")
class ConsistencyOutput(Module):
    """The consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0_hat``.

    ``x0_hat`` comes from the network's prediction through the scheduler; LCM's boundary
    scalings are ``c_skip = s^2 / ((10 t)^2 + s^2)``, ``c_out = 10 t / sqrt((10 t)^2 + s^2)``,
    ``s = 0.5``, so ``f(x, 0) = x``.
    """

    def __init__(self, *, scheduler: NodeRef = param(doc="the noise_scheduler node"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import check_pair

        check_pair(context, None, scheduler)
        self.refs = (scheduler,)

    def forward(self, sample: Tensor("B, ...", "x_t"),
                prediction: Tensor("B, ...", "the network's output at x_t"),
                timestep: Timesteps("B", "t per example"),
                ) -> Outputs(denoised=TypeOf("sample")("B, ...", "f(x_t, t)")):
        (scheduler,) = self.refs
        x0, _ = scheduler.to_x0_eps(sample, prediction, timestep)
        c_skip, c_out = scheduler.boundary(timestep.clamp_min(0), sample)
        return {"denoised": c_skip * sample + c_out * x0}


@op("diffusion_convert")
class DiffusionConvert(Module):
    """A network's prediction at ``x_t`` expressed as another prediction type.

    ``to`` is ``sample`` (x0), ``epsilon``, ``v_prediction`` (``alpha eps - sigma x0``) or
    ``flow`` (``eps - x0``).
    """

    def __init__(self, *, scheduler: NodeRef = param(doc="the noise_scheduler node (its "
                                                     "prediction_type is the input's)"),
                 to: Literal["sample", "epsilon", "v_prediction", "flow"] = param(
                     "sample", doc="the prediction type wanted"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import check_pair

        check_pair(context, None, scheduler)
        self.refs = (scheduler,)
        self.to_type = to  # not self.to: that is nn.Module.to

    def forward(self, sample: Tensor("B, ...", "x_t"),
                prediction: Tensor("B, ...", "the network's output at x_t"),
                timestep: Timesteps("B", "t per example"),
                ) -> Outputs(y=TypeOf("sample")("B, ...", "the prediction as 'to'")):
        (scheduler,) = self.refs
        return {"y": scheduler.convert(sample, prediction, timestep, self.to_type)}
