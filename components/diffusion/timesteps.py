"""Timestep samplers for diffusion training: uniform over a range, an index on a DDIM grid (as
LCM and progressive distillation draw them), or one fixed timestep.

Each draws from torch's global generator (seeded and checkpointed by the run), and names the
``noise_scheduler`` node whose range the timesteps must lie in: a range outside it is a
located error when the spec is validated.
"""

from __future__ import annotations

from typing import Any, Literal

from dgraph.components._inputs import input_error

from dgraph.declare import Module, NodeRef, Outputs, Tensor, Timesteps, param, sampler
from dgraph.registry import BuildContext

__all__ = ["DiffusionTimesteps", "ddim_grid"]


def ddim_grid(num_train_timesteps: int, steps: int) -> list[int]:
    """The ``steps`` timesteps of a trailing DDIM grid, ascending: ``(i + 1) * (T // N) - 1``
    for ``i = 0..N-1`` (LCM's ``lcm_origin_timesteps``; DDIM's ``trailing`` spacing)."""
    gap = num_train_timesteps // steps
    return [(i + 1) * gap - 1 for i in range(steps)]


def _check(p: Any) -> None:
    if p.mode == "uniform" and p.high is not None and p.low > p.high:
        raise ValueError(f"low ({p.low}) is above high ({p.high})")
    if p.mode == "fixed" and p.value is None:
        raise ValueError("mode fixed needs value: <timestep>")
    if p.mode != "fixed" and p.value is not None:
        raise ValueError(f"value is read only with mode: fixed (mode is {p.mode})")


@sampler("diffusion_timesteps", check=_check)
class DiffusionTimesteps(Module):
    """One timestep per example, and the timestep a solver step from it lands on.

    * ``uniform``: ``t ~ U{low..high}`` (``high`` defaults to the scheduler's last timestep);
      ``previous = t - skip``.
    * ``ddim_grid``: ``t`` uniform on the trailing DDIM grid of ``grid_steps`` steps
      (``(i + 1) * (T // N) - 1``), ``previous = t - skip * (T // N)``: ``skip`` grid steps
      down (consistency distillation's ``t_{n+k} -> t_n``; progressive distillation's
      student step). Below the grid ``previous`` is -1, the clean end (``alpha = 1``), or 0
      with ``clamp_previous`` (LCM's clamp, where the boundary condition makes ``f`` the
      identity).
    * ``fixed``: ``t = value`` for every example; ``previous = t - skip``.
    """

    def __init__(self, *, scheduler: NodeRef = param(doc="the noise_scheduler node whose "
                                                     "range the timesteps lie in"),
                 mode: Literal["uniform", "ddim_grid", "fixed"] = param(
                     "uniform", doc="uniform, ddim_grid or fixed"),
                 low: int = param(0, ge=0, doc="uniform: the smallest timestep"),
                 high: int | None = param(None, ge=0, doc="uniform: the largest timestep "
                                          "(default: the scheduler's last)"),
                 grid_steps: int = param(50, ge=1, doc="ddim_grid: steps of the DDIM grid "
                                         "(LCM's num_ddim_timesteps)"),
                 skip: int = param(1, ge=1, doc="how far 'previous' lies below the timestep: "
                                   "grid steps (ddim_grid) or timesteps (uniform, fixed)"),
                 value: int | None = param(None, ge=0, doc="fixed: the timestep"),
                 clamp_previous: bool = param(False, doc="previous below 0 becomes 0 (LCM), "
                                              "not -1 (the clean end)"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components.diffusion.schedulers import NoiseScheduler

        if not isinstance(scheduler, NoiseScheduler):
            raise input_error(context, "scheduler", "the node named is not a noise_scheduler",
                              code="bad-reference", expected="a node of type noise_scheduler",
                              found=type(scheduler).__name__,
                              hint="name the spec's noise_scheduler node")
        last = scheduler.max_timestep
        total = scheduler.num_train_timesteps
        range_hint = (f"the scheduler's timesteps are 0..{last} (num_train_timesteps "
                      f"{total})")

        def outside(name: str, found: int) -> Exception:
            return input_error(context, name, f"timestep {found} is outside the scheduler's "
                               "range", code="timestep-range", expected=f"0..{last}",
                               found=str(found), hint=range_hint)

        if mode == "uniform":
            high = last if high is None else high
            for name, v in (("low", low), ("high", high)):
                if v > last:
                    raise outside(name, v)
        elif mode == "fixed":
            assert value is not None
            if value > last:
                raise outside("value", value)
        elif grid_steps > total:
            raise input_error(context, "grid_steps", f"a grid of {grid_steps} steps needs "
                              f"more timesteps than the scheduler's {total}",
                              code="timestep-range", expected=f"at most {total}",
                              found=str(grid_steps), hint=range_hint)
        self.mode, self.low, self.high, self.value = mode, low, high, value
        self.skip, self.clamp = skip, clamp_previous
        self.gap = total // grid_steps if mode == "ddim_grid" else 1
        self.grid = ddim_grid(total, grid_steps) if mode == "ddim_grid" else []

    def forward(self, like: Tensor("B, ...", "any batch; only its size is used")) -> Outputs(
            timestep=Timesteps("B", "t per example (int64)"),
            previous=Timesteps("B", "the timestep one solver step below t (int64)")):
        import torch

        n, device = like.shape[0], like.device
        if self.mode == "uniform":
            t = torch.randint(self.low, int(self.high) + 1, (n,), device="cpu")
        elif self.mode == "fixed":
            t = torch.full((n,), int(self.value or 0), dtype=torch.long)
        else:
            index = torch.randint(0, len(self.grid), (n,), device="cpu")
            t = torch.tensor(self.grid, dtype=torch.long)[index]
        previous = t - self.skip * self.gap
        previous = previous.clamp_min(0 if self.clamp else -1)
        return {"timestep": t.to(device), "previous": previous.to(device)}
