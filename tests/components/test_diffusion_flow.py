"""Flow matching, flow maps and the learned sampler, against hand-computed values.

The flow scheduler's interpolation and Euler steps, the flow-map student's jump and two-time
network, its timestep pairs and K-jump sampler, and the learned solver (whose initial step is
diffusers' Euler step), with their located errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from dgraph.components.diffusion.denoisers import TimeMLP
from dgraph.components.diffusion.flow import FlowMapJump, FlowMapMLP, FlowMapTimes, jump_grid
from dgraph.components.diffusion.learned_sampler import LearnedSampler, sampler_match_loss
from dgraph.components.diffusion.losses import DenoisingLoss
from dgraph.components.diffusion.metrics import DiffusionSamples
from dgraph.components.diffusion.schedulers import NoiseScheduler

from dgraph.errors import DgraphError
from dgraph.registry import BuildContext

T = 1000


def flow() -> NoiseScheduler:
    return NoiseScheduler.create(type="flow_match_euler", config={"num_train_timesteps": T})


def with_refs(cls, refs, **params):
    """Build ``cls`` with NodeRef parameters filled by modules, as the graph does."""
    p = cls.component.Params.model_validate({**{k: k for k in refs}, **params})
    return cls.component(p, "node").build(BuildContext(node="node", references=dict(refs)))


class Velocity(torch.nn.Module):
    """A flow 'teacher' with a constant velocity u: every Euler path is x - sigma u."""

    prediction_type = "flow"

    def __init__(self, u) -> None:
        super().__init__()
        self.u = torch.nn.Parameter(torch.tensor(u))
        self.seen: list[torch.Tensor] = []

    def forward(self, sample, timestep, to_timestep=None):
        self.seen.append(timestep.detach().clone())
        return {"prediction": self.u.expand_as(sample)}


class Linear(torch.nn.Module):
    """u(x, t) = x * t / T: Euler steps differ from the exact flow, and depend on t."""

    prediction_type = "flow"

    def forward(self, sample, timestep):
        return {"prediction": sample * timestep.float()[:, None] / T}


def test_flow_interpolation_and_velocity_target():
    s = flow()
    x0, eps = torch.tensor([[1.0, 2.0]]), torch.tensor([[-1.0, 0.5]])
    out = s(sample=x0, noise=eps, timestep=torch.tensor([250]))
    # sigma = 250 / 1000: x_t = 0.75 x0 + 0.25 eps
    torch.testing.assert_close(out["noisy"], torch.tensor([[0.5, 1.625]]))
    torch.testing.assert_close(out["alpha"], torch.tensor([0.75]))
    loss = with_refs(DenoisingLoss, {"scheduler": s})
    # target eps - x0 = [-2, -1.5]; prediction 0 -> mean square (4 + 2.25) / 2
    value = loss(prediction=torch.zeros(1, 2), sample=x0, noise=eps,
                 timestep=torch.tensor([250]))["loss"]
    torch.testing.assert_close(value, torch.tensor(3.125))


def test_flow_sampling_takes_the_pipelines_uniform_sigmas():
    """K Euler steps on sigma = 1, 1 - 1/K, ..., 1/K, 0 (diffusers' flow pipelines)."""
    s, teacher = flow(), Velocity([2.0, -4.0])
    noise = torch.randn(5, 2)

    def predict(x, t):
        return teacher(x, t)["prediction"]

    out = s.sample(predict, noise, 2)
    assert [float(t[0]) for t in teacher.seen] == [1000.0, 500.0]
    torch.testing.assert_close(out, noise - torch.tensor([2.0, -4.0]))
    teacher.seen.clear()
    s.sample(predict, noise, 4)
    assert [float(t[0]) for t in teacher.seen] == [1000.0, 750.0, 500.0, 250.0]


def test_flow_map_jump_and_sampler():
    s = flow()
    jump = with_refs(FlowMapJump, {"scheduler": s})
    x, u = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, -4.0]])
    # X = x + (sigma_s - sigma_t) u = x + (0.3 - 0.8) u
    out = jump(sample=x, prediction=u, timestep=torch.tensor([800]),
               to_timestep=torch.tensor([300]))
    torch.testing.assert_close(out["sample"], torch.tensor([[0.0, 3.0]]))
    assert jump_grid(T, 4) == [1000, 750, 500, 250, 0]
    assert jump_grid(T, 3) == [1000, 666, 333, 0]
    student = Velocity([2.0, -4.0])
    noise = torch.randn(3, 2)
    samples = jump.sample(student, None, noise, 4)
    torch.testing.assert_close(samples, noise - torch.tensor([2.0, -4.0]))
    assert [int(t[0]) for t in student.seen] == [1000, 750, 500, 250]


def test_flow_map_mlp_starts_as_the_teacher_it_loads():
    torch.manual_seed(0)
    params = {"in_features": 2, "hidden": [16, 16], "time_dim": 8}
    teacher = TimeMLP.component(TimeMLP.component.Params.model_validate(
        {**params, "prediction_type": "flow"}), "t").build(BuildContext(node="t"))
    student = FlowMapMLP.component(FlowMapMLP.component.Params.model_validate(params),
                                   "s").build(BuildContext(node="s"))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == [
        "time_to.0.bias", "time_to.0.weight", "time_to.2.bias", "time_to.2.weight"]
    x, t = torch.randn(6, 2), torch.tensor([1000, 900, 500, 300, 10, 0])
    expected = teacher(sample=x, timestep=t)["prediction"]
    for s in (torch.zeros(6, dtype=torch.long), t // 2):
        torch.testing.assert_close(student(sample=x, timestep=t, to_timestep=s)["prediction"],
                                   expected)
    # the second time matters once its embedding has trained
    torch.nn.init.normal_(student.time_to[2].weight)
    a = student(sample=x, timestep=t, to_timestep=t // 2)["prediction"]
    b = student(sample=x, timestep=t, to_timestep=t // 4)["prediction"]
    assert not torch.allclose(a, b)


def test_flow_map_times_draw_grid_jumps_and_uniform_pairs():
    s = flow()
    like = torch.zeros(4000, 2)
    grid = with_refs(FlowMapTimes, {"scheduler": s}, steps=[1, 2, 4], uniform=0.0)(like=like)
    pairs = set(zip(grid["timestep"].tolist(), grid["to_timestep"].tolist(), strict=True))
    assert pairs == {(1000, 0), (1000, 500), (500, 0), (1000, 750), (750, 500), (500, 250),
                     (250, 0)}
    assert grid["timestep"].dtype == torch.long
    uniform = with_refs(FlowMapTimes, {"scheduler": s}, uniform=1.0)(like=like)
    t, s_ = uniform["timestep"], uniform["to_timestep"]
    assert int(t.min()) >= 1 and int(t.max()) == 1000 and bool((s_ < t).all())
    assert int(s_.min()) == 0
    short = NoiseScheduler.create(type="flow_match_euler", config={"num_train_timesteps": 100})
    with pytest.raises(DgraphError) as info:
        with_refs(FlowMapTimes, {"scheduler": short}, steps=[2, 200])
    text = str(info.value)
    assert ("params.steps: a grid of 200 steps needs more timesteps than the scheduler's "
            "100") in text and "hint: the scheduler's timesteps are 0..100" in text
    with pytest.raises(DgraphError) as info:
        with_refs(FlowMapTimes, {"scheduler": object()})
    assert "params.scheduler: the node named is not a noise_scheduler" in str(info.value)


def test_learned_solver_starts_as_the_euler_sampler():
    s, teacher = flow(), Linear()
    solver = with_refs(LearnedSampler, {"denoiser": teacher, "scheduler": s}, steps=[1, 2, 4])
    torch.testing.assert_close(solver.sigmas(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    noise = torch.randn(5, 2)

    def predict(x, t):
        return teacher(x, t)["prediction"]

    for k in (1, 2, 4):
        # the plain diffusers Euler sampler, and a loop of the scheduler's ddim_step
        expected = s.sample(predict, noise, k)
        torch.testing.assert_close(solver.solve(predict, noise, k), expected)
    x, grid = noise, [1000, 500, 0]
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        ta, tb = torch.full((5,), a), torch.full((5,), b)
        x = s.ddim_step(x, predict(x, ta), ta, tb)
    torch.testing.assert_close(solver.solve(predict, noise, 2), x)
    # u = x t / T: the first Euler step from sigma 1 to 0.5 is x - 0.5 x = 0.5 x, the
    # second 0.5 x - 0.5 (0.5 x * 0.5) = 0.375 x
    torch.testing.assert_close(solver.solve(predict, noise, 2), 0.375 * noise)


def test_learned_solver_step_with_set_coefficients_by_hand():
    s, teacher = flow(), Linear()
    solver = with_refs(LearnedSampler, {"denoiser": teacher, "scheduler": s}, steps=[2])
    with torch.no_grad():
        solver.logits["2"].copy_(torch.log(torch.tensor([0.8, 0.2])))  # sigma 1, 0.2, 0
        solver.scale["2"].copy_(torch.tensor([0.5, 2.0]))
        solver.extrapolate["2"].copy_(torch.tensor([7.0, 0.25]))  # b_0 is never used
    torch.testing.assert_close(solver.sigmas(2), torch.tensor([1.0, 0.2, 0.0]))
    x = torch.tensor([[1.0, -2.0]])

    def predict(x, t):
        return teacher(x, t)["prediction"]

    # step 0: u0 = x * 1 = x; x1 = x + (0.2 - 1) 0.5 x = 0.6 x
    # step 1: u1 = 0.6 x * 0.2 = 0.12 x; d = u1 + 0.25 (u1 - u0) = 0.12x - 0.22x = -0.1 x
    #         x2 = 0.6 x + (0 - 0.2) 2 (-0.1 x) = 0.64 x
    torch.testing.assert_close(solver.solve(predict, x, 2), 0.64 * x)


def test_learned_solver_keeps_timesteps_monotone_and_learns_them():
    torch.manual_seed(0)
    s, teacher = flow(), Linear()
    solver = with_refs(LearnedSampler, {"denoiser": teacher, "scheduler": s}, steps=[3])
    with torch.no_grad():
        solver.logits["3"].copy_(torch.tensor([5.0, -3.0, 0.4]))
    sigma = solver.sigmas(3).detach()
    assert float(sigma[0]) == 1.0 and float(sigma[-1]) == 0.0
    assert bool((sigma[1:] < sigma[:-1]).all())
    noise = torch.randn(64, 2)
    out = solver(noise=noise)["samples"]
    assert out.shape == (1, 64, 2)
    target = noise * 0.3
    value = sampler_match_loss(samples=out, target=target)
    torch.testing.assert_close(value, (out[0] - target).square().mean())
    value.backward()
    for group in (solver.logits, solver.scale, solver.extrapolate):
        assert group["3"].grad is not None and bool(group["3"].grad.abs().sum() > 0)
    with pytest.raises(ValueError) as info:
        sampler_match_loss(samples=out, target=torch.zeros(64, 3))
    assert str(info.value) == ("samples [1, 64, 2] are not a stack of targets shaped [64, 3]")
    with pytest.raises(ValueError) as info:
        solver.solve(lambda x, t: x, noise, 2)
    assert str(info.value) == "this learned sampler has solvers for [3] steps, not 2"


def test_learned_solver_errors_are_located():
    ddim = NoiseScheduler.create(type="ddim", config={"prediction_type": "v_prediction"})

    class V(Linear):
        prediction_type = "v_prediction"

    with pytest.raises(DgraphError) as info:
        with_refs(LearnedSampler, {"denoiser": V(), "scheduler": ddim})
    text = str(info.value)
    assert ("params.scheduler: learned timesteps need a continuous-time scheduler, and 'ddim' "
            "reads a discrete table") in text
    assert "hint: for a DDPM/DDIM teacher use learned_ddim_sampler" in text
    with pytest.raises(DgraphError) as info:
        with_refs(LearnedSampler, {"denoiser": V(), "scheduler": flow()})
    assert ("params.denoiser: the denoiser predicts 'v_prediction' but the scheduler reads its "
            "output as 'flow'") in str(info.value)
    with pytest.raises(DgraphError) as info:
        with_refs(LearnedSampler, {"denoiser": Linear(), "scheduler": flow()}, steps=[2, 2])
    assert "params.steps: a step count is given twice" in str(info.value)


def test_the_sample_metric_runs_the_named_sampler():
    """diffusion_samples with sampler: the learned solver, and a step count it lacks."""
    s, teacher = flow(), Velocity([0.0, 0.0])
    solver = with_refs(LearnedSampler, {"denoiser": teacher, "scheduler": s}, steps=[1, 2])
    real = torch.randn(200, 2)
    data = SimpleNamespace(eval={"x": real, "mode": torch.zeros(200, dtype=torch.long)})
    metric = with_refs(DiffusionSamples, {"denoiser": teacher, "scheduler": s, "data": data,
                                          "sampler": solver}, steps=[1, 2], num_samples=100)
    teacher.seen.clear()
    metric.samples(2)
    assert [float(t[0]) for t in teacher.seen] == [1000.0, 500.0]
    out = metric.compute()
    assert set(out) == {f"{m}@{k}" for m in ("energy_distance", "mode_coverage", "in_modes")
                        for k in (1, 2)}
    with pytest.raises(DgraphError) as info:
        with_refs(DiffusionSamples, {"denoiser": teacher, "scheduler": s, "data": data,
                                     "sampler": solver}, steps=[1, 2, 8])
    text = str(info.value)
    assert "params.steps: the sampler node takes [1, 2] steps, not [8]" in text
    assert "hint: evaluate the step counts the sampler was built for" in text
