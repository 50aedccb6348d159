"""Learnable-sampler distillation: a K-step solver whose timesteps and coefficients are learned
so that, from the same noise, it lands where the frozen teacher's many-step solve lands.

For a flow-matching teacher (``x_sigma = (1 - sigma) x_0 + sigma eps``, velocity ``u``), the
K-step solver of ``learned_sampler`` has, per step count K, three learnable tensors:

* ``logits`` [K]: the timesteps ``sigma_k = 1 - cumsum(softmax(logits))_k``, ``k = 0..K``
  (``sigma_0 = 1``, ``sigma_K = 0``, strictly decreasing whatever the logits: the
  parametrisation keeps them monotone); zeros give the uniform Euler grid ``1 - k/K``;
* ``scale`` [K] (``a_k``, ones at the start) and ``extrapolate`` [K] (``b_k``, zeros): step
  ``k`` is

      u_k = u(x_k, T sigma_k),  d_k = u_k + b_k (u_k - u_{k-1})  (d_0 = u_0),
      x_{k+1} = x_k + (sigma_{k+1} - sigma_k) a_k d_k,

  so with the initial values each step is the teacher's Euler step (diffusers'
  ``FlowMatchEulerDiscreteScheduler.step``), and ``b_k`` learns a two-step (Adams-Bashforth
  like) correction. Gradients reach the timesteps through the scheduler's ``sigma = t / T``
  and the teacher's time embedding; the teacher's weights are never trained.

``sampler_match_loss`` is the mean over the step counts of ``|x_K - x_teacher|^2``.
``diffusion_samples`` names the node as its ``sampler`` to evaluate the teacher with it.
"""

from __future__ import annotations

from typing import Annotated, Any

from dgraph.components._inputs import input_error
from pydantic import Field

from dgraph.declare import Module, NodeRef, Noise, Outputs, Scalar, Tensor, component, loss, param
from dgraph.registry import BuildContext

__all__ = ["LearnedSampler", "sampler_match_loss"]

Steps = list[Annotated[int, Field(ge=1, le=100)]]


@component("learned_sampler", roles=("tensor",), tappable=False)
class LearnedSampler(Module):
    """Learned K-step solvers of a frozen flow-matching ``denoiser``, one per K in ``steps``.

    Each has learnable timesteps and per-step coefficients (see the module's documentation).

    ``samples`` stacks each solver's output from ``noise``: ``[len(steps), B, ...]``.
    """

    def __init__(self, *, denoiser: NodeRef = param(doc="the frozen teacher it solves with"),
                 scheduler: NodeRef = param(doc="the teacher's noise_scheduler node "
                                            "(flow_match_euler)"),
                 steps: Steps = param([1, 2, 4, 8], min_length=1, doc="the step counts K, "
                                      "each with its own timesteps and coefficients"),
                 context: BuildContext) -> None:
        super().__init__()
        import torch
        from dgraph.components.diffusion.schedulers import check_pair

        check_pair(context, denoiser, scheduler)
        if scheduler.kind != "flow_match_euler":
            raise input_error(context, "scheduler", f"learned timesteps need a continuous-time "
                              f"scheduler, and '{scheduler.kind}' reads a discrete table",
                              code="bad-param", expected="a noise_scheduler of type "
                              "flow_match_euler", found=f"type {scheduler.kind}",
                              hint="for a DDPM/DDIM teacher use learned_ddim_sampler")
        if len(set(steps)) != len(steps):
            raise input_error(context, "steps", "a step count is given twice",
                              code="bad-param", expected="distinct step counts",
                              found=str(list(steps)), hint="list each K once")
        self.refs = (denoiser, scheduler)  # other nodes' modules, not submodules
        self.step_counts = list(steps)
        self.logits = torch.nn.ParameterDict(
            {str(k): torch.nn.Parameter(torch.zeros(k)) for k in steps})
        self.scale = torch.nn.ParameterDict(
            {str(k): torch.nn.Parameter(torch.ones(k)) for k in steps})
        self.extrapolate = torch.nn.ParameterDict(
            {str(k): torch.nn.Parameter(torch.zeros(k)) for k in steps})

    def sigmas(self, steps: int) -> Any:
        """``sigma_0 = 1 > sigma_1 > ... > sigma_K = 0`` of the K-step solver."""
        import torch

        increments = torch.softmax(self.logits[str(steps)], 0)
        inner = 1 - torch.cumsum(increments, 0)[:-1]
        one = torch.ones(1, device=inner.device)
        return torch.cat([one, inner, torch.zeros(1, device=inner.device)])

    def solve(self, predict: Any, noise: Any, steps: int) -> Any:
        """The K-step solver's output from ``noise``; ``predict(x, t)`` is the teacher's
        velocity at timesteps ``t = T sigma`` ``[B]`` (float, differentiable)."""
        if str(steps) not in self.logits:
            raise ValueError(f"this learned sampler has solvers for {self.step_counts} steps, "
                             f"not {steps}")
        (_, scheduler) = self.refs
        sigma = self.sigmas(steps).to(noise.device)
        scale = self.scale[str(steps)]
        extra = self.extrapolate[str(steps)]
        total = scheduler.num_train_timesteps
        x, previous = noise, None
        for k in range(steps):
            t = (sigma[k] * total).expand(noise.shape[0])
            u = predict(x, t)
            d = u if previous is None else u + extra[k] * (u - previous)
            x = x + (sigma[k + 1] - sigma[k]) * scale[k] * d
            previous = u
        return x

    def sample(self, denoiser: Any, predict: Any, noise: Any, steps: int) -> Any:
        """``diffusion_samples``' sampler protocol: the K-step solver of ``denoiser``."""
        return self.solve(predict, noise, steps)

    def forward(self, noise: Noise("B, ...", "the noise every solver starts from")) -> Outputs(
            samples=Tensor("S, B, ...", "each solver's output, in the order of steps")):
        import torch
        from dgraph.components.diffusion.schedulers import call_denoiser

        denoiser, _ = self.refs
        return {"samples": torch.stack([
            self.solve(lambda x, t: call_denoiser(denoiser, x, t), noise, k)
            for k in self.step_counts])}


@loss("sampler_match_loss")
def sampler_match_loss(samples: Tensor("S, B, ...", "each learned solver's output"),
                       target: Tensor("B, ...", "the teacher's many-step output from the same "
                                      "noise; detached")) -> Scalar():
    """``mean_K mean |x_K - sg(target)|^2``: every K-step solver against the teacher's solve."""
    if samples.shape[1:] != target.shape:
        raise ValueError(f"samples {list(samples.shape)} are not a stack of targets shaped "
                         f"{list(target.shape)}")
    return (samples.float() - target.detach().float()[None]).square().mean()
