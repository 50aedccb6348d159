"""The learned DDIM solver (learned_ddim_sampler) against diffusers and hand-computed values.

Untrained, it is diffusers' DDIMScheduler K-step sampler (every prediction type, trailing and
leading spacing, a class-conditional UNet with guidance at float timesteps); its alpha_bar is
the scheduler's table at integer timesteps and the log-SNR interpolation between them; a step
with set coefficients matches the formulas by hand; its timesteps stay monotone and in range
while gradients reach every learnable tensor; a few Adam steps bring it closer to the
teacher's 50-step solve; its errors are located.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from dgraph.components.diffusion.ddim_solver import LearnedDDIMSampler
from dgraph.components.diffusion.denoisers import TimeMLP
from dgraph.components.diffusion.learned_sampler import sampler_match_loss
from dgraph.components.diffusion.metrics import DiffusionSamples
from dgraph.components.diffusion.schedulers import NoiseScheduler, call_denoiser
from dgraph.components.diffusion.solver import guided
from dgraph.components.diffusion.unet import UNetDenoiser

from dgraph.errors import DgraphError
from dgraph.registry import BuildContext


def ddim(prediction_type: str = "v_prediction", spacing: str = "trailing",
         alpha_to_one: bool = True) -> NoiseScheduler:
    return NoiseScheduler.create(type="ddim", config={
        "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001,
        "beta_end": 0.02, "prediction_type": prediction_type, "timestep_spacing": spacing,
        "set_alpha_to_one": alpha_to_one, "clip_sample": False})


def with_refs(cls, refs, **params):
    """Build ``cls`` with NodeRef parameters filled by modules, as the graph does."""
    p = cls.component.Params.model_validate({**{k: k for k in refs}, **params})
    return cls.component(p, "node").build(BuildContext(node="node", references=dict(refs)))


def mlp(prediction_type: str) -> TimeMLP:
    torch.manual_seed(0)
    return TimeMLP.create(in_features=2, hidden=[32, 32], prediction_type=prediction_type).eval()


class Fraction(torch.nn.Module):
    """A 'sample' (x0) teacher predicting x0 = 0.5 x at every t; it records the timesteps."""

    prediction_type = "sample"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the metric reads its device

    def forward(self, sample, timestep):
        self.seen.append(timestep.detach().clone())
        return {"prediction": 0.5 * sample}


@pytest.mark.parametrize(("kind", "spacing", "alpha_to_one"), [
    ("v_prediction", "trailing", True), ("epsilon", "trailing", True),
    ("sample", "trailing", True), ("epsilon", "leading", False)])
def test_untrained_solver_is_diffusers_ddim(kind, spacing, alpha_to_one):
    s, net = ddim(kind, spacing, alpha_to_one), mlp(kind)
    solver = with_refs(LearnedDDIMSampler, {"denoiser": net, "scheduler": s},
                       steps=[1, 2, 4, 8])
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))

    def predict(x, t):
        return call_denoiser(net, x, t)

    with torch.no_grad():
        for k in (1, 2, 4, 8):
            # s.sample is diffusers' loop: DDIMScheduler.set_timesteps(k), .step(...)
            torch.testing.assert_close(solver.solve(predict, noise, k),
                                       s.sample(predict, noise, k), rtol=1e-5, atol=1e-5)
    if spacing == "trailing":
        assert solver.timesteps(4).tolist() == [999.0, 749.0, 499.0, 249.0, -1.0]
    else:  # leading: 750, 500, 250, 0, then 0 - 250 < 0, the final alpha
        torch.testing.assert_close(solver.timesteps(4).detach(),
                                   torch.tensor([750.0, 500.0, 250.0, 0.0, -1.0]),
                                   rtol=0, atol=1e-4)  # unequal gaps: softmax rounding


def test_untrained_guided_unet_solver_is_diffusers_ddim_at_float_timesteps():
    torch.manual_seed(0)
    unet = UNetDenoiser.create(BuildContext(node="u"), config={
        "sample_size": 8, "in_channels": 1, "block_out_channels": [8, 16],
        "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"]},
        num_classes=3, prediction_type="v_prediction").eval()
    x = torch.randn(4, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    # the UNet takes float timesteps: the same output at 749.0 as at 749, a gradient in t
    t = torch.full((4,), 749.0, requires_grad=True)
    out = unet(sample=x, timestep=t, class_labels=labels)["prediction"]
    torch.testing.assert_close(out, unet(sample=x, timestep=torch.full((4,), 749),
                                         class_labels=labels)["prediction"])
    out.square().sum().backward()
    assert t.grad is not None and bool(t.grad.abs().sum() > 0)
    s = ddim()
    solver = with_refs(LearnedDDIMSampler, {"denoiser": unet, "scheduler": s}, steps=[2],
                       guidance=2.0)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        found = solver(noise=x, class_labels=labels)["samples"]
        expected = s.sample(lambda y, t: guided(unet, y, t, labels, 2.0, 3), x, 2)
    assert found.shape == (1, 4, 1, 8, 8)
    torch.testing.assert_close(found[0], expected, rtol=1e-5, atol=1e-5)


def test_alpha_bar_is_the_table_and_log_snr_interpolation_between():
    s = ddim()
    solver = with_refs(LearnedDDIMSampler, {"denoiser": mlp("v_prediction"), "scheduler": s},
                       steps=[2])
    table = s.scheduler.alphas_cumprod.double()
    t = torch.tensor([0.0, 1.0, 749.0, 999.0, -1.0])
    torch.testing.assert_close(solver.abar(t), torch.cat([table[[0, 1, 749, 999]],
                                                          torch.ones(1, dtype=torch.float64)]))
    lam = [math.log(float(table[i]) / (1 - float(table[i]))) for i in (749, 750)]
    mid = torch.tensor([749.25], requires_grad=True)
    value = solver.abar(mid)
    expected = 1 / (1 + math.exp(-(0.75 * lam[0] + 0.25 * lam[1])))
    assert value.item() == pytest.approx(expected, rel=1e-12)
    value.backward()  # d abar / dt = abar (1 - abar) (lambda_750 - lambda_749)
    assert mid.grad.item() == pytest.approx(expected * (1 - expected) * (lam[1] - lam[0]),
                                            rel=1e-6)
    # below 0: linear in abar from the final alpha (1 here) at -1 to abar_0 at 0
    half = (1 + float(table[0])) / 2
    assert solver.abar(torch.tensor([-0.5])).item() == pytest.approx(half, rel=1e-12)
    no_one = with_refs(LearnedDDIMSampler, {"denoiser": mlp("v_prediction"),
                                            "scheduler": ddim(alpha_to_one=False)}, steps=[2])
    assert no_one.abar(torch.tensor([-1.0])).item() == pytest.approx(float(table[0]))


def test_step_with_set_coefficients_by_hand():
    s, teacher = ddim("sample"), Fraction()
    solver = with_refs(LearnedDDIMSampler, {"denoiser": teacher, "scheduler": s}, steps=[2])
    with torch.no_grad():
        solver.start["2"].fill_(899 / 999)  # a fraction of T - 1
        solver.logits["2"].copy_(torch.log(torch.tensor([0.75, 0.25])))  # 899 -> 224 -> -1
        solver.scale["2"].copy_(torch.tensor([0.5, 2.0]))
        solver.extrapolate["2"].copy_(torch.tensor([7.0, 0.25]))  # b_0 is never used
    torch.testing.assert_close(solver.timesteps(2).detach(), torch.tensor([899.0, 224.0, -1.0]))
    table = s.scheduler.alphas_cumprod
    a0, s0 = math.sqrt(table[899]), math.sqrt(1 - table[899])
    a1, s1 = math.sqrt(table[224]), math.sqrt(1 - table[224])
    x = torch.tensor([[1.0, -2.0]])
    # step 0: x0 = 0.5 x, eps = (x - a0 x0) / s0, x1 = a1 * 0.5 * x0 + s1 eps
    x0 = 0.5 * x
    x1 = a1 * 0.5 * x0 + s1 * (x - a0 * x0) / s0
    # step 1: x0' = 0.5 x1, d = x0' + 0.25 (x0' - x0); the clean end: x2 = 2 d
    d = 0.5 * x1 + 0.25 * (0.5 * x1 - x0)
    teacher.seen.clear()
    torch.testing.assert_close(solver.solve(lambda y, t: teacher(y, t)["prediction"], x, 2),
                               2.0 * d)
    assert [float(t[0]) for t in teacher.seen] == pytest.approx([899.0, 224.0])


def test_timesteps_stay_monotone_in_range_and_gradients_reach_every_tensor():
    s, net = ddim(), mlp("v_prediction")
    for p in net.parameters():
        p.requires_grad_(False)
    solver = with_refs(LearnedDDIMSampler, {"denoiser": net, "scheduler": s}, steps=[4])
    with torch.no_grad():
        solver.start["4"].fill_(5.0)  # 4995: beyond the table, clamped to 999
        solver.logits["4"].copy_(torch.tensor([4.0, -3.0, 0.5, 1.0]))
    tau = solver.timesteps(4).detach()
    assert float(tau[0]) == 999.0 and float(tau[-1]) == -1.0
    assert bool((tau[1:] < tau[:-1]).all())
    noise = torch.randn(32, 2)
    out = solver(noise=noise)["samples"]
    value = sampler_match_loss(samples=out, target=noise * 0.3)
    value.backward()
    for group in (solver.start, solver.logits, solver.scale, solver.extrapolate):
        assert group["4"].grad is not None and bool(group["4"].grad.abs().sum() > 0)
    with pytest.raises(ValueError) as info:
        solver.solve(lambda y, t: y, noise, 2)
    assert str(info.value) == "this learned sampler has solvers for [4] steps, not 2"


def test_a_few_adam_steps_move_the_solver_toward_the_fifty_step_solve():
    torch.manual_seed(0)
    s, net = ddim(), mlp("v_prediction")
    for p in net.parameters():
        p.requires_grad_(False)
    solver = with_refs(LearnedDDIMSampler, {"denoiser": net, "scheduler": s}, steps=[2])
    noise = torch.randn(256, 2)

    def predict(x, t):
        return call_denoiser(net, x, t)

    with torch.no_grad():
        target = s.sample(predict, noise, 50)
    opt = torch.optim.Adam(solver.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        loss = sampler_match_loss(samples=solver(noise=noise)["samples"], target=target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert not torch.equal(solver.logits["2"].detach(), torch.zeros(2))


def test_the_sample_metric_runs_the_learned_solver():
    s, teacher = ddim("sample"), Fraction()
    solver = with_refs(LearnedDDIMSampler, {"denoiser": teacher, "scheduler": s}, steps=[1, 2])
    real = torch.randn(100, 2)
    data = SimpleNamespace(eval={"x": real, "mode": torch.zeros(100, dtype=torch.long)})
    metric = with_refs(DiffusionSamples, {"denoiser": teacher, "scheduler": s, "data": data,
                                          "sampler": solver}, steps=[1, 2], num_samples=50)
    teacher.seen.clear()
    metric.samples(2)
    assert [float(t[0]) for t in teacher.seen] == [999.0, 499.0]
    assert set(metric.compute()) == {f"{m}@{k}" for m in ("energy_distance", "mode_coverage",
                                                          "in_modes") for k in (1, 2)}


def test_errors_are_located():
    flow = NoiseScheduler.create(type="flow_match_euler", config={"num_train_timesteps": 1000})
    with pytest.raises(DgraphError) as info:
        with_refs(LearnedDDIMSampler, {"denoiser": mlp("flow"), "scheduler": flow})
    text = str(info.value)
    assert ("params.scheduler: the DDIM solver reads a diffusers alphas_cumprod table, and "
            "'flow_match_euler' has none") in text
    assert "hint: for a flow-matching teacher use learned_sampler" in text
    with pytest.raises(DgraphError) as info:
        with_refs(LearnedDDIMSampler, {"denoiser": mlp("epsilon"), "scheduler": ddim()})
    assert ("params.denoiser: the denoiser predicts 'epsilon' but the scheduler reads its "
            "output as 'v_prediction'") in str(info.value)
    with pytest.raises(DgraphError) as info:
        with_refs(LearnedDDIMSampler, {"denoiser": mlp("v_prediction"), "scheduler": ddim()},
                  steps=[2, 2])
    assert "params.steps: a step count is given twice" in str(info.value)
    with pytest.raises(DgraphError) as info:
        with_refs(LearnedDDIMSampler, {"denoiser": mlp("v_prediction"),
                                       "scheduler": ddim(spacing="linspace")}, steps=[4])
    text = str(info.value)
    assert ("params.steps: diffusers' DDIM at 4 steps (linspace spacing) steps from 999 to 749 "
            "but then calls the model at 666: not one grid") in text
    assert "hint: use timestep_spacing trailing with K dividing num_train_timesteps" in text
    with pytest.raises(DgraphError) as info:
        with_refs(LearnedDDIMSampler, {"denoiser": mlp("v_prediction"), "scheduler": ddim()},
                  guidance=2.0)
    assert ("params.guidance: guidance 2.0 needs a class-conditional denoiser, and this one "
            "is unconditional") in str(info.value)
