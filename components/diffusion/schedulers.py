"""Noise schedulers as nodes: a diffusers scheduler class and its config, plus the formulas
that distillation needs around it.

``noise_scheduler`` builds one of diffusers' ``DDPMScheduler``, ``DDIMScheduler``,
``EulerDiscreteScheduler``, ``LCMScheduler`` or ``FlowMatchEulerDiscreteScheduler`` from a
config (never ``from_pretrained``). As a node it adds noise (``forward``); other nodes name it
with a :class:`~dgraph.declare.NodeRef` (``scheduler: sched``) and use its methods:

* ``alpha_sigma(t)``: ``x_t = alpha_t x_0 + sigma_t eps``. DDPM, DDIM, Euler and LCM share
  diffusers' ``alphas_cumprod`` table: ``alpha_t = sqrt(abar_t)``, ``sigma_t =
  sqrt(1 - abar_t)`` (Euler's variance-exploding ``x + s eps`` is the same point scaled by
  ``sqrt(1 + s^2)``, which its ``scale_model_input`` undoes). Flow matching has
  ``sigma_t = t / T``, ``alpha_t = 1 - sigma_t``. ``t = -1`` is the clean end
  (``alpha = 1``, ``sigma = 0``), as DDIM's ``set_alpha_to_one``.
* ``to_x0_eps(x_t, prediction, t)`` and ``convert(...)`` between the prediction types
  (``epsilon``, ``sample``, ``v_prediction`` with ``v = alpha eps - sigma x_0``, and ``flow``
  with ``u = eps - x_0``);
* ``ddim_step(x_t, prediction, t, s)``: one deterministic DDIM step to ``s`` per example
  (``x_s = alpha_s x0_hat + sigma_s eps_hat``; for flow matching this is the Euler step);
* ``boundary(t)``: the consistency-model scalings ``c_skip``, ``c_out`` of diffusers'
  ``LCMScheduler.get_scalings_for_boundary_condition_discrete``;
* ``sample(predict, noise, steps)``: the diffusers sampling loop (``set_timesteps``,
  ``scale_model_input``, ``step``) on a copy of the scheduler.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from dgraph.components._inputs import check_config_dict, input_error
from pydantic import AfterValidator

from dgraph.declare import Module, Outputs, Tensor, Timesteps, TypeOf, op, param
from dgraph.registry import BuildContext

__all__ = ["PREDICTION_TYPES", "SCHEDULER_CLASSES", "NoiseScheduler", "call_denoiser",
           "check_pair", "x0_eps"]

# The scheduler types a spec names, and the diffusers classes they build.
SCHEDULER_CLASSES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "lcm": "LCMScheduler",
    "flow_match_euler": "FlowMatchEulerDiscreteScheduler",
}
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")
SchedulerConfig = Annotated[dict[str, Any], AfterValidator(lambda v: _config(v))]
SchedulerType = Literal["ddpm", "ddim", "euler", "lcm", "flow_match_euler"]


def _config(value: dict[str, Any]) -> dict[str, Any]:
    check_config_dict(value, "config")
    return value


def _check(p: Any) -> None:
    if p.type == "flow_match_euler" and "prediction_type" in p.config:
        raise ValueError("flow_match_euler has no prediction_type: its network predicts the "
                         "velocity eps - x0 ('flow'); remove config.prediction_type")


@op("noise_scheduler", check=_check)
class NoiseScheduler(Module):
    """A diffusers noise scheduler (``type`` + ``config``); as a node, ``add_noise``.

    ``noisy = alpha_t * sample + sigma_t * noise`` (diffusers' ``add_noise`` for DDPM, DDIM
    and LCM), and ``alpha``, ``sigma`` per example. Other nodes name this node in their
    ``scheduler`` parameter for conversions between prediction types, solver steps, boundary
    scalings and sampling loops (see the module's documentation). Inputs are optional so that
    a node used only by reference needs no wiring.
    """

    def __init__(self, *, type: SchedulerType = param(doc="ddpm, ddim, euler, lcm or "
                                                      "flow_match_euler (the diffusers class)"),
                 config: SchedulerConfig = param(
                     {}, doc="keyword arguments of the diffusers scheduler class, e.g. "
                     "{num_train_timesteps: 1000, beta_schedule: linear, prediction_type: "
                     "v_prediction, timestep_spacing: trailing}"),
                 context: BuildContext) -> None:
        super().__init__()
        import diffusers
        import torch

        cls = getattr(diffusers, SCHEDULER_CLASSES[type])
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        try:
            with torch.device("cpu"):
                scheduler = cls(**kwargs)
        except (TypeError, ValueError, NotImplementedError) as exc:
            raise input_error(context, "config", f"diffusers' {cls.__name__} rejected the "
                              "config", code="bad-param", expected=f"keyword arguments of "
                              f"diffusers.{cls.__name__}", found=f"{type_name(exc)}: {exc}",
                              hint=f"see the {cls.__name__} documentation of the installed "
                              "diffusers for the accepted keys") from None
        self.kind = type
        self.scheduler = scheduler
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = ("flow" if type == "flow_match_euler"
                                else str(scheduler.config.prediction_type))
        if self.prediction_type not in PREDICTION_TYPES:
            raise input_error(context, "config", "prediction_type "
                              f"'{self.prediction_type}' is not supported", code="bad-param",
                              expected=", ".join(PREDICTION_TYPES[:3]),
                              found=self.prediction_type, hint="use epsilon, sample or "
                              "v_prediction")
        if type != "flow_match_euler":
            table = scheduler.alphas_cumprod.detach().to("cpu", torch.float32).clone()
        else:
            table = torch.empty(0)
        # Not a buffer: the table is configuration, rebuilt from the config, not a weight.
        self._abar = table

    # -- the range of timesteps -----------------------------------------------------------
    @property
    def max_timestep(self) -> int:
        """The largest timestep: ``T - 1`` (discrete tables), ``T`` (flow matching)."""
        return self.num_train_timesteps - (0 if self.kind == "flow_match_euler" else 1)

    # -- coefficients ---------------------------------------------------------------------
    def alpha_sigma(self, t: Any, like: Any = None) -> tuple[Any, Any]:
        """``(alpha_t, sigma_t)`` per example, shaped to broadcast against ``like``."""
        import torch

        t = torch.as_tensor(t)
        device = like.device if like is not None else t.device
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
        if self.kind == "flow_match_euler":
            sigma = (t.to(device, torch.float32) / self.num_train_timesteps).clamp(0, 1)
            alpha = 1 - sigma
        else:
            table = self._abar.to(device)
            index = t.to(device).long()
            if device.type != "meta" and bool((index > self.max_timestep).any()):
                raise ValueError(f"timestep {int(index.max())} is outside the scheduler's "
                                 f"range -1..{self.max_timestep}")
            abar = torch.where(index < 0, torch.ones((), device=device),
                               table[index.clamp_min(0)])
            alpha, sigma = abar.sqrt(), (1 - abar).clamp_min(0).sqrt()
        if like is not None:
            shape = (-1,) + (1,) * (like.dim() - 1)
            alpha, sigma = alpha.reshape(shape), sigma.reshape(shape)
        return alpha.to(dtype), sigma.to(dtype)

    def to_x0_eps(self, x: Any, prediction: Any, t: Any) -> tuple[Any, Any]:
        """``(x0_hat, eps_hat)`` from the network's ``prediction`` at ``x_t``."""
        alpha, sigma = self.alpha_sigma(t, x)
        return x0_eps(self.prediction_type, x, prediction, alpha, sigma)

    def convert(self, x: Any, prediction: Any, t: Any, to: str) -> Any:
        """The prediction expressed as ``to`` (epsilon, sample, v_prediction or flow)."""
        x0, eps = self.to_x0_eps(x, prediction, t)
        return self.target(x0, eps, t, to)

    def target(self, x0: Any, eps: Any, t: Any, kind: str | None = None) -> Any:
        """What a network of prediction type ``kind`` (default: this scheduler's) should
        output at ``x_t = alpha_t x0 + sigma_t eps``."""
        kind = kind or self.prediction_type
        if kind == "epsilon":
            return eps
        if kind == "sample":
            return x0
        if kind == "flow":
            return eps - x0
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * eps - sigma * x0

    def ddim_step(self, x: Any, prediction: Any, t: Any, s: Any) -> Any:
        """One deterministic DDIM step from ``t`` to ``s`` (per example)."""
        x0, eps = self.to_x0_eps(x, prediction, t)
        alpha_s, sigma_s = self.alpha_sigma(s, x)
        return alpha_s * x0 + sigma_s * eps

    def boundary(self, t: Any, like: Any = None) -> tuple[Any, Any]:
        """``(c_skip, c_out)`` of a consistency model at ``t`` (LCM's discrete scalings)."""
        import torch
        from diffusers import LCMScheduler

        lcm = self.scheduler if isinstance(self.scheduler, LCMScheduler) else _lcm_helper()
        c_skip, c_out = lcm.get_scalings_for_boundary_condition_discrete(
            torch.as_tensor(t).float())
        if like is not None:
            shape = (-1,) + (1,) * (like.dim() - 1)
            c_skip, c_out = (c.reshape(shape).to(like.device, like.dtype)
                             for c in (c_skip, c_out))
        return c_skip, c_out

    def add_noise(self, x0: Any, eps: Any, t: Any) -> Any:
        """``alpha_t x0 + sigma_t eps``; diffusers' own ``add_noise`` where it has one in
        this convention (DDPM, DDIM, LCM)."""
        import copy

        if self.kind in ("ddpm", "ddim", "lcm") and x0.device.type != "meta" and \
                bool((t >= 0).all()):
            # diffusers moves its table to the samples' device: use a copy, keep ours.
            scheduler = copy.copy(self.scheduler)
            return scheduler.add_noise(x0, eps, t.long())
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * eps

    # -- sampling -------------------------------------------------------------------------
    def sample(self, predict: Any, noise: Any, steps: int) -> Any:
        """``steps`` steps of the diffusers sampler from ``noise`` (standard normal).

        ``predict(x, t)`` returns the network's output for the batch ``x`` at the timesteps
        ``t`` ``[B]``. Runs on a copy of the scheduler (``set_timesteps`` changes its state).
        """
        import copy

        import torch

        scheduler = copy.deepcopy(self.scheduler)
        if self.kind == "flow_match_euler":
            # As diffusers' flow pipelines (SD3, Flux): sigmas 1, 1 - 1/K, ..., 1/K (then 0).
            # The class's own default, linspace(1, 1/T, K), wastes a step at sigma 1/T.
            scheduler.set_timesteps(sigmas=[1.0 - i / steps for i in range(steps)],
                                    device=noise.device)
        else:
            scheduler.set_timesteps(steps, device=noise.device)
        x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(x, t) if hasattr(
                scheduler, "scale_model_input") else x
            out = predict(model_in, t.expand(x.shape[0]).to(noise.device))
            x = scheduler.step(out, t, x, return_dict=True).prev_sample
        return x.to(noise.dtype) if torch.is_tensor(x) else x

    def forward(self, sample: Tensor("B, ...", "clean samples x_0") = None,
                noise: Tensor("B, ...", "standard normal noise, shaped like sample") = None,
                timestep: Timesteps("B", "one timestep per example") = None,
                ) -> Outputs(noisy=TypeOf("sample")("B, ...", "x_t = alpha_t x_0 + sigma_t eps"),
                             alpha=Tensor("B", "alpha_t per example"),
                             sigma=Tensor("B", "sigma_t per example")):
        if sample is None and noise is None and timestep is None:
            return {}  # a node used only by reference
        if sample is None or noise is None or timestep is None:
            raise ValueError("add_noise needs sample, noise and timestep wired in")
        if noise.shape != sample.shape:
            raise ValueError(f"noise has shape {list(noise.shape)}, sample "
                             f"{list(sample.shape)}: they must be the same")
        alpha, sigma = self.alpha_sigma(timestep)
        return {"noisy": self.add_noise(sample, noise, timestep), "alpha": alpha.to(sample),
                "sigma": sigma.to(sample)}


def x0_eps(kind: str, x: Any, prediction: Any, alpha: Any, sigma: Any) -> tuple[Any, Any]:
    """``(x0_hat, eps_hat)`` from a ``kind`` network's ``prediction`` at
    ``x = alpha x0 + sigma eps`` (``alpha``, ``sigma`` broadcast against ``x``)."""
    if kind == "epsilon":
        return (x - sigma * prediction) / alpha, prediction
    if kind == "sample":
        return prediction, (x - alpha * prediction) / sigma
    if kind == "v_prediction":
        return alpha * x - sigma * prediction, sigma * x + alpha * prediction
    # flow: x = (1 - s) x0 + s eps, u = eps - x0
    return x - sigma * prediction, x + alpha * prediction


def type_name(exc: BaseException) -> str:
    return type(exc).__name__


_LCM: list[Any] = []


def _lcm_helper() -> Any:
    """An LCMScheduler with the default ``timestep_scaling`` (10), for its scalings only."""
    if not _LCM:
        import torch
        from diffusers import LCMScheduler

        with torch.device("cpu"):
            _LCM.append(LCMScheduler())
    return _LCM[0]


def call_denoiser(denoiser: Any, x: Any, t: Any, class_labels: Any = None) -> Any:
    """The prediction of a denoiser node's module (``time_mlp``'s ``prediction``,
    ``unet2d``'s ``noise_pred``, or its only output) for ``x`` at ``t``."""
    kwargs = {"sample": x, "timestep": t}
    if class_labels is not None:
        kwargs["class_labels"] = class_labels
    out = denoiser(**kwargs)
    if not isinstance(out, dict):
        return out
    for key in ("prediction", "noise_pred"):
        if key in out:
            return out[key]
    if len(out) != 1:
        raise ValueError(f"the denoiser outputs {sorted(out)}; expected 'prediction' or one "
                         "output")
    return next(iter(out.values()))


def check_pair(context: BuildContext, denoiser: Any, scheduler: Any,
               denoiser_param: str = "denoiser") -> None:
    """A located error when ``denoiser`` was trained for another prediction type than
    ``scheduler`` converts from, or ``scheduler`` is not a ``noise_scheduler`` node."""
    if not isinstance(scheduler, NoiseScheduler):
        raise input_error(context, "scheduler", "the node named is not a noise_scheduler",
                          code="bad-reference", expected="a node of type noise_scheduler",
                          found=type(scheduler).__name__,
                          hint="name the spec's noise_scheduler node")
    declared = getattr(denoiser, "prediction_type", None)
    if declared is not None and declared != scheduler.prediction_type:
        raise input_error(context, denoiser_param, "the denoiser predicts "
                          f"'{declared}' but the scheduler reads its output as "
                          f"'{scheduler.prediction_type}'", code="prediction-type-mismatch",
                          expected=f"a denoiser with prediction_type "
                          f"'{scheduler.prediction_type}'", found=f"prediction_type '{declared}'",
                          hint="set the same prediction_type on the denoiser and in the "
                          "scheduler's config")


