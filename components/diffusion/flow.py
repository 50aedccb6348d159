"""Flow maps: a student that jumps along a flow-matching teacher's ODE from ``t`` to ``s``.

A flow-matching teacher (``noise_scheduler`` of type ``flow_match_euler``: ``x_t = (1 -
sigma_t) x_0 + sigma_t eps``, ``sigma_t = t / T``) predicts the velocity ``u = eps - x_0``; its
probability-flow ODE is ``dx / dsigma = u(x, sigma)``. A flow map ``X(x_t, t, s)`` is the
solution of that ODE at ``s`` (flow map matching, Boffi, Albergo & Vanden-Eijnden 2024;
MeanFlow's average velocity). It is parametrised by an average velocity ``u_theta(x_t, t, s)``:

    X_theta(x_t, t, s) = x_t + (sigma_s - sigma_t) u_theta(x_t, t, s)

which for ``s`` one Euler step below ``t`` is the teacher's Euler step when ``u_theta`` is the
teacher's velocity: a student initialised from the teacher starts as its one-step Euler
sampler. The jump is the scheduler's ``ddim_step`` (for flow matching, exactly the Euler step).

* ``flow_map_mlp``: ``time_mlp`` with a second time input ``to_timestep``, embedded like the
  first and added to every layer; the second embedding's last layer starts at zero, so the
  student loads the teacher's weights (``init: {..., strict: false}``) and starts as it.
* ``flow_map_times``: pairs ``t > s``: on the K-step uniform grids of ``steps`` (the jumps
  the few-step sampler takes) or uniform pairs.
* ``flow_map_jump``: ``X = x_t + (sigma_s - sigma_t) u`` as an op, and the K-jump sampler
  (``diffusion_samples``' ``sampler``): ``t_k = T (1 - k / K)``, K student calls.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from dgraph.components._inputs import input_error
from dgraph.components.diffusion.denoisers import TimeMLP, Widths
from pydantic import Field

from dgraph.declare import (
    Features,
    Module,
    NodeRef,
    Outputs,
    Tensor,
    Timesteps,
    TypeOf,
    model,
    op,
    param,
    sampler,
)
from dgraph.registry import BuildContext

__all__ = ["FlowMapJump", "FlowMapMLP", "FlowMapTimes", "jump_grid"]


def jump_grid(num_train_timesteps: int, steps: int) -> list[int]:
    """The ``steps + 1`` timesteps of the K-jump sampler, descending: ``T (1 - k / K)``,
    rounded down, ``k = 0..K`` (``T`` is pure noise, 0 the data)."""
    return [num_train_timesteps * (steps - k) // steps for k in range(steps + 1)]


def _flow_scheduler(context: BuildContext, scheduler: Any) -> None:
    from dgraph.components.diffusion.schedulers import NoiseScheduler

    if not isinstance(scheduler, NoiseScheduler):
        raise input_error(context, "scheduler", "the node named is not a noise_scheduler",
                          code="bad-reference", expected="a node of type noise_scheduler",
                          found=type(scheduler).__name__,
                          hint="name the spec's noise_scheduler node")


@model("flow_map_mlp", roles=("teacher", "student", "model"))
class FlowMapMLP(TimeMLP):
    """``time_mlp`` with a second time: ``(x_t, t, s) -> u``, the average velocity from t to s.

    ``s`` (``to_timestep``) is embedded like ``t`` by its own MLP whose last layer starts at
    zero, and added to the conditioning: at initialisation the network is the ``time_mlp``
    whose weights it loads (a flow-matching teacher), whatever ``s``.
    """

    def __init__(self, *, in_features: int = param(2, gt=0, doc="data width"),
                 hidden: Widths = param([128, 128, 128], doc="hidden widths"),
                 time_dim: int = param(64, ge=2, doc="sinusoidal embedding width (even)"),
                 num_train_timesteps: int = param(1000, gt=0, doc="T: timesteps are divided "
                                                  "by it before the embedding"),
                 prediction_type: Literal["flow"] = param(
                     "flow", doc="flow: the output is a velocity (eps - x0 units)")) -> None:
        super().__init__(in_features=in_features, hidden=hidden, time_dim=time_dim,
                         num_train_timesteps=num_train_timesteps, num_classes=None,
                         label_dropout=0.0, prediction_type=prediction_type)
        import torch
        from torch import nn

        width = hidden[0]
        self.time_to = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(),
                                     nn.Linear(width, width))
        with torch.no_grad():
            self.time_to[2].weight.zero_()
            self.time_to[2].bias.zero_()

    def forward(self, sample: Features("B, {in_features}", "x_t"),  # type: ignore[override]
                timestep: Timesteps("B", "t, the time jumped from"),
                to_timestep: Timesteps("B", "s, the time jumped to (s < t)"),
                ) -> Outputs(prediction=Features("B, {in_features}",
                                                 "u: X(x_t, t, s) = x_t + (sigma_s - sigma_t) u")):
        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        if to_timestep.dim() == 0:
            to_timestep = to_timestep.expand(sample.shape[0])
        cond = self.time(self.embed(timestep)) + self.time_to(self.embed(to_timestep))
        h = self.act(self.inp(sample) + cond)
        for layer, proj in zip(self.layers, self.cond, strict=True):
            h = self.act(layer(h) + proj(cond))
        return {"prediction": self.out(h)}


Steps = list[Annotated[int, Field(ge=1, le=1000)]]


@sampler("flow_map_times")
class FlowMapTimes(Module):
    """Pairs of timesteps ``t > s`` for flow-map distillation.

    With probability ``1 - uniform`` a pair is one jump of a K-step sampler: ``K`` uniform
    from ``steps``, ``k`` uniform in ``0..K-1``, ``t = T (1 - k/K)``, ``s = T (1 - (k+1)/K)``
    (rounded down); otherwise ``t ~ U{1..T}``, ``s ~ U{0..t-1}``.
    """

    def __init__(self, *, scheduler: NodeRef = param(doc="the noise_scheduler node whose "
                                                     "range the timesteps lie in"),
                 steps: Steps = param([1, 2, 4], min_length=1, doc="the K-step grids whose "
                                      "jumps are drawn"),
                 uniform: float = param(0.5, ge=0, le=1, allow_inf_nan=False,
                                        doc="the share of uniform pairs"),
                 context: BuildContext) -> None:
        super().__init__()
        _flow_scheduler(context, scheduler)
        total = scheduler.max_timestep
        too_many = [k for k in steps if k > total]
        if too_many:
            raise input_error(context, "steps", f"a grid of {too_many[0]} steps needs more "
                              f"timesteps than the scheduler's {total}",
                              code="timestep-range", expected=f"at most {total}",
                              found=str(too_many[0]), hint=f"the scheduler's timesteps are "
                              f"0..{total}")
        self.total, self.steps, self.uniform = total, list(steps), uniform

    def forward(self, like: Tensor("B, ...", "any batch; only its size is used")) -> Outputs(
            timestep=Timesteps("B", "t per example (int64)"),
            to_timestep=Timesteps("B", "s < t per example (int64)")):
        import torch

        n, total = like.shape[0], self.total
        counts = torch.tensor(self.steps)[torch.randint(0, len(self.steps), (n,))]
        k = (torch.rand(n) * counts).long()
        t_grid = torch.div(total * (counts - k), counts, rounding_mode="floor")
        s_grid = torch.div(total * (counts - k - 1), counts, rounding_mode="floor")
        t_uni = torch.randint(1, total + 1, (n,))
        s_uni = (torch.rand(n) * t_uni).long()
        pick = torch.rand(n) < self.uniform
        t = torch.where(pick, t_uni, t_grid)
        s = torch.where(pick, s_uni, s_grid)
        return {"timestep": t.to(like.device), "to_timestep": s.to(like.device)}


@op("flow_map_jump")
class FlowMapJump(Module):
    """``X(x_t, t, s) = x_t + (sigma_s - sigma_t) u``: the jump of a flow-map student.

    The scheduler's ``ddim_step`` from ``t`` to ``s`` with the student's output read as its
    prediction type (for flow matching the Euler step above). Named as ``diffusion_samples``'
    ``sampler``, it samples with K student calls on ``t_k = T (1 - k/K)``.
    """

    def __init__(self, *, scheduler: NodeRef = param(doc="the noise_scheduler node"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import check_pair

        check_pair(context, None, scheduler)
        self.refs = (scheduler,)

    def sample(self, denoiser: Any, predict: Any, noise: Any, steps: int) -> Any:
        """``steps`` jumps of ``denoiser`` (a two-time network) from ``noise`` at ``T``."""
        import torch

        (scheduler,) = self.refs
        grid = jump_grid(scheduler.num_train_timesteps, steps)
        x = noise
        n = noise.shape[0]
        for t, s in zip(grid[:-1], grid[1:], strict=True):
            t_b = torch.full((n,), t, dtype=torch.long, device=noise.device)
            s_b = torch.full((n,), s, dtype=torch.long, device=noise.device)
            u = denoiser(sample=x, timestep=t_b, to_timestep=s_b)["prediction"]
            x = scheduler.ddim_step(x, u, t_b, s_b)
        return x

    def forward(self, sample: Tensor("B, ...", "x_t"),
                prediction: Tensor("B, ...", "the student's output u(x_t, t, s)"),
                timestep: Timesteps("B", "t per example"),
                to_timestep: Timesteps("B", "s per example"),
                ) -> Outputs(sample=TypeOf("sample")("B, ...", "X(x_t, t, s)")):
        (scheduler,) = self.refs
        return {"sample": scheduler.ddim_step(sample, prediction, timestep, to_timestep)}
