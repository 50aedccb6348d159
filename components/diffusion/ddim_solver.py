"""Learnable-sampler distillation of a DDPM/DDIM-trained teacher (epsilon, sample or
v_prediction): a K-step DDIM-style solver with continuous learnable timesteps and per-step
coefficients, trained so that from the same noise it lands where the teacher's many-step
solve lands (``sampler_match_loss``).

Continuous time. The teacher's scheduler tables ``abar_i`` (diffusers' ``alphas_cumprod``,
``i = 0..T-1``, and ``final_alpha_cumprod`` at the clean end ``t = -1``) are read from the
diffusers scheduler object; between table entries ``abar(t)`` is interpolated linearly in
the log-SNR ``lambda = log(abar / (1 - abar))``:

    lambda(t) = (1 - w) lambda_i + w lambda_{i+1},  i = floor(t), w = t - i  (0 <= t <= T-1),

and, on ``-1 <= t < 0``, linearly in ``abar`` between ``final_alpha_cumprod`` and ``abar_0``
(the log-SNR of the clean end is infinite). At integer ``t`` it is the table entry. The
teacher is called with the float timestep (diffusers' ``UNet2DModel`` and ``time_mlp`` embed
it with sinusoids, differentiably).

The solver for K steps has the grid ``tau_0 > tau_1 > ... > tau_K``:

* ``tau_K``: the end of diffusers' DDIM K-step chain (``-1``, the clean end, when its last
  step goes below 0), fixed;
* ``tau_0 = clamp((T - 1) start)`` in ``[tau_K + 1, T - 1]`` (a straight-through clamp: the
  value is clamped, the gradient passes), ``start`` learnable (a fraction of ``T - 1``, so
  that an optimizer step moves all the learnable numbers on one scale);
* ``tau_k = tau_0 - (tau_0 - tau_K) cumsum(softmax(logits))_k``: strictly decreasing whatever
  the ``logits`` [K] (learnable);

starting at diffusers' ``DDIMScheduler`` K-step grid (``set_timesteps(K)`` and its step
``t -> t - T // K``). Step ``k`` (``alpha, sigma`` from ``abar(tau)``; ``x0_k, eps_k`` the
teacher's prediction at ``(x_k, tau_k)`` as data and noise), with learnable ``a_k`` (``scale``,
ones) and ``b_k`` (``extrapolate``, zeros):

    D_k = x0_k - x0_{k-1}  (D_0 = 0),   d_k = x0_k + b_k D_k,
    e_k = eps_k - (alpha_k / sigma_k) b_k D_k    (the noise consistent with d_k at x_k),
    x_{k+1} = alpha_{k+1} a_k d_k + sigma_{k+1} e_k.

With the initial values every step is diffusers' deterministic DDIM step
(``x_{k+1} = alpha_{k+1} x0_k + sigma_{k+1} eps_k``), so the untrained solver reproduces
``DDIMScheduler``'s K-step samples; ``b_k`` learns a two-step (multistep, DPM-Solver++-like)
correction of the data prediction and ``a_k`` its scale. Only these 2K + 1 numbers per solver
train; the teacher is frozen.
"""

from __future__ import annotations

from typing import Annotated, Any

from dgraph.components._inputs import input_error
from pydantic import Field

from dgraph.declare import Labels, Module, NodeRef, Noise, Outputs, Tensor, component, param
from dgraph.registry import BuildContext

__all__ = ["LearnedDDIMSampler", "ddim_grid"]

Steps = list[Annotated[int, Field(ge=1, le=1000)]]
DISCRETE = ("ddpm", "ddim", "lcm", "euler")


def ddim_grid(scheduler: Any, steps: int) -> tuple[list[int], int]:
    """``(timesteps, end)`` of diffusers' ``DDIMScheduler`` K-step sampling for the
    ``noise_scheduler`` node's config: the timesteps the model is called at and the timestep
    the last step goes to (``-1``: the clean end, ``final_alpha_cumprod``).

    Raises ValueError when diffusers' chain is not one grid (a step goes to ``t - T // K``
    but the next call is at another timestep: ``linspace`` spacing, or ``trailing`` with K
    not dividing T)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.scheduler.config)
    ddim.set_timesteps(steps)
    times = [int(t) for t in ddim.timesteps]
    jump = scheduler.num_train_timesteps // steps
    targets = [t - jump for t in times]
    for k in range(len(times) - 1):
        if targets[k] != times[k + 1]:
            raise ValueError(
                f"diffusers' DDIM at {steps} steps ({ddim.config.timestep_spacing} spacing) "
                f"steps from {times[k]} to {targets[k]} but then calls the model at "
                f"{times[k + 1]}: not one grid")
    return times, max(targets[-1], -1)


def _straight_clamp(value: Any, low: float, high: float) -> Any:
    """``value`` clamped to ``[low, high]``; its gradient passes as if unclamped."""
    return value + (value.clamp(low, high) - value).detach()


@component("learned_ddim_sampler", roles=("tensor",), tappable=False)
class LearnedDDIMSampler(Module):
    """Learned K-step DDIM-style solvers of a frozen DDPM/DDIM ``denoiser``, one per K.

    Continuous learnable timesteps (monotone, in the scheduler's range, ``abar(t)``
    interpolated in log-SNR from diffusers' ``alphas_cumprod``) and per-step coefficients;
    untrained, each is diffusers' ``DDIMScheduler`` K-step sampler (see the module's
    documentation). With ``guidance`` w and ``class_labels``, the teacher's prediction is
    ``uncond + w (cond - uncond)``.

    ``samples`` stacks each solver's output from ``noise``: ``[len(steps), B, ...]``.
    """

    def __init__(self, *, denoiser: NodeRef = param(doc="the frozen teacher it solves with"),
                 scheduler: NodeRef = param(doc="the teacher's noise_scheduler node (ddpm, "
                                            "ddim, lcm or euler: a diffusers alphas_cumprod "
                                            "table)"),
                 steps: Steps = param([1, 2, 4, 8], min_length=1, doc="the step counts K, "
                                      "each with its own timesteps and coefficients"),
                 guidance: float = param(1.0, ge=0, allow_inf_nan=False,
                                         doc="classifier-free guidance scale (1: none)"),
                 context: BuildContext) -> None:
        super().__init__()
        import math

        import torch
        from dgraph.components.diffusion.schedulers import check_pair
        from dgraph.components.diffusion.solver import check_guidance

        check_pair(context, denoiser, scheduler)
        if scheduler.kind not in DISCRETE:
            raise input_error(context, "scheduler", f"the DDIM solver reads a diffusers "
                              f"alphas_cumprod table, and '{scheduler.kind}' has none",
                              code="bad-param", expected="a noise_scheduler of type "
                              f"{', '.join(DISCRETE)}", found=f"type {scheduler.kind}",
                              hint="for a flow-matching teacher use learned_sampler")
        if len(set(steps)) != len(steps):
            raise input_error(context, "steps", "a step count is given twice",
                              code="bad-param", expected="distinct step counts",
                              found=str(list(steps)), hint="list each K once")
        self.null_class = check_guidance(context, denoiser, guidance)
        self.guidance = guidance
        self.refs = (denoiser, scheduler)  # other nodes' modules, not submodules
        self.step_counts = list(steps)
        self.top = float(scheduler.max_timestep)
        # Not buffers: configuration rebuilt from the scheduler, not weights (on the CPU:
        # the graph may be built on the meta device).
        table = scheduler.scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
        final = getattr(scheduler.scheduler, "final_alpha_cumprod", 1.0)
        self._abar0 = float(table[0])
        self._final = float(final.item() if torch.is_tensor(final) else final)
        self._lam = (table.log() - (1 - table).log())
        self.ends: dict[str, float] = {}
        start, logits = {}, {}
        for k in steps:
            try:
                times, end = ddim_grid(scheduler, k)
            except ValueError as exc:
                raise input_error(context, "steps", str(exc), code="bad-param",
                                  expected="step counts whose DDIM chain is one grid",
                                  found=f"steps: {list(steps)}", hint="use timestep_spacing "
                                  "trailing with K dividing num_train_timesteps, or "
                                  "leading") from None
            gaps = [a - b for a, b in zip(times, [*times[1:], end], strict=True)]
            self.ends[str(k)] = float(end)
            start[str(k)] = torch.nn.Parameter(torch.tensor([times[0] / self.top]))
            # equal gaps give equal logits (zeros): softmax then splits the span exactly
            init = [0.0] * k if len(set(gaps)) == 1 else [math.log(g / sum(gaps)) for g in gaps]
            logits[str(k)] = torch.nn.Parameter(torch.tensor(init))
        self.start = torch.nn.ParameterDict(start)
        self.logits = torch.nn.ParameterDict(logits)
        self.scale = torch.nn.ParameterDict(
            {str(k): torch.nn.Parameter(torch.ones(k)) for k in steps})
        self.extrapolate = torch.nn.ParameterDict(
            {str(k): torch.nn.Parameter(torch.zeros(k)) for k in steps})

    # -- continuous time -------------------------------------------------------------------
    def abar(self, t: Any) -> Any:
        """``abar(t)`` (float64) for float timesteps ``-1 <= t <= T - 1``, interpolated in
        log-SNR between diffusers' table entries (see the module's documentation)."""
        import torch

        t = t.double()
        lam = self._lam.to(t.device)
        index = t.floor().clamp(0, lam.numel() - 2)
        w = (t - index).clamp(0, 1)
        i = index.long()
        inner = torch.sigmoid(lam[i] + w * (lam[i + 1] - lam[i]))
        near = self._final + (t.clamp(-1, 0) + 1) * (self._abar0 - self._final)
        return torch.where(t < 0, near, inner)

    def timesteps(self, steps: int) -> Any:
        """``tau_0 > tau_1 > ... > tau_K`` of the K-step solver (float, differentiable)."""
        import torch

        key = self._key(steps)
        end = self.ends[key]
        first = _straight_clamp(self.start[key] * self.top, end + 1.0, self.top)
        fractions = torch.cumsum(torch.softmax(self.logits[key], 0), 0)[:-1]
        inner = first - (first - end) * fractions
        return torch.cat([first, inner, torch.full_like(first, end)])

    def _key(self, steps: int) -> str:
        if str(steps) not in self.logits:
            raise ValueError(f"this learned sampler has solvers for {self.step_counts} steps, "
                             f"not {steps}")
        return str(steps)

    def solve(self, predict: Any, noise: Any, steps: int) -> Any:
        """The K-step solver's output from ``noise``; ``predict(x, t)`` is the teacher's
        prediction at float timesteps ``t`` ``[B]`` (differentiable in ``t``)."""
        from dgraph.components.diffusion.schedulers import x0_eps

        key = self._key(steps)
        (_, scheduler) = self.refs
        tau = self.timesteps(steps).to(noise.device)
        abar = self.abar(tau).to(noise.dtype)
        alphas, sigmas = abar.sqrt(), (1 - abar).clamp_min(0).sqrt()
        scale, extra = self.scale[key], self.extrapolate[key]
        x, previous = noise, None
        for k in range(steps):
            a, s = alphas[k], sigmas[k]
            x0, eps = x0_eps(scheduler.prediction_type, x,
                             predict(x, tau[k].expand(noise.shape[0])), a, s)
            if previous is None:
                d, e = x0, eps
            else:
                delta = extra[k] * (x0 - previous)
                d, e = x0 + delta, eps - (a / s) * delta
            x = alphas[k + 1] * (scale[k] * d) + sigmas[k + 1] * e
            previous = x0
        return x

    def sample(self, denoiser: Any, predict: Any, noise: Any, steps: int) -> Any:
        """``diffusion_samples``' sampler protocol: the K-step solver of ``denoiser``."""
        return self.solve(predict, noise, steps)

    def forward(self, noise: Noise("B, ...", "the noise every solver starts from"),
                class_labels: Labels("B", "classes, for guidance") = None) -> Outputs(
            samples=Tensor("S, B, ...", "each solver's output, in the order of steps")):
        import torch
        from dgraph.components.diffusion.solver import guided

        denoiser, _ = self.refs

        def predict(x: Any, t: Any) -> Any:
            return guided(denoiser, x, t, class_labels, self.guidance, self.null_class)

        return {"samples": torch.stack([self.solve(predict, noise, k)
                                        for k in self.step_counts])}
