"""Timestep samplers, the time MLP, the solver, the losses and the sample metric of the
diffusion family, against hand-computed values; real training where it learns."""

from __future__ import annotations

import pytest
import torch
from dgraph.components.diffusion.denoisers import TimeMLP
from dgraph.components.diffusion.losses import DenoisingLoss, ProgressiveLoss, consistency_loss
from dgraph.components.diffusion.metrics import mode_coverage
from dgraph.components.diffusion.schedulers import NoiseScheduler
from dgraph.components.diffusion.solver import ConsistencyOutput, DiffusionSolve
from dgraph.components.diffusion.timesteps import DiffusionTimesteps, ddim_grid

from dgraph.errors import DgraphError
from dgraph.registry import BuildContext

T = 1000
CONFIG = {"num_train_timesteps": T, "beta_schedule": "linear", "beta_start": 0.0001,
          "beta_end": 0.02, "clip_sample": False, "timestep_spacing": "trailing"}


def sched(prediction: str = "v_prediction") -> NoiseScheduler:
    return NoiseScheduler.create(type="ddim", config={**CONFIG, "prediction_type": prediction})


def with_refs(cls, refs, **params):
    """Build ``cls`` with NodeRef parameters filled by modules, as the graph does."""
    declared = cls.component
    names = {k: v for k, v in refs.items()}
    p = declared.Params.model_validate({**{k: k for k in names}, **params})
    return declared(p, "node").build(BuildContext(node="node", references=names))


def test_ddim_grid_is_lcm_and_trailing_ddim():
    assert ddim_grid(T, 4) == [249, 499, 749, 999]
    assert ddim_grid(T, 50)[:2] == [19, 39]


def test_timestep_sampler_modes():
    s = sched()
    like = torch.zeros(4000, 2)
    uniform = with_refs(DiffusionTimesteps, {"scheduler": s}, mode="uniform", low=10, high=20)(
        like=like)
    assert uniform["timestep"].dtype == torch.long
    assert set(uniform["timestep"].tolist()) == set(range(10, 21))
    assert torch.equal(uniform["previous"], uniform["timestep"] - 1)
    grid = with_refs(DiffusionTimesteps, {"scheduler": s}, mode="ddim_grid", grid_steps=4)(
        like=like)
    assert set(grid["timestep"].tolist()) == {249, 499, 749, 999}
    # one grid step (T / N = 250) down; below the grid, -1 is the clean end
    torch.testing.assert_close(grid["previous"], grid["timestep"] - 250)
    clamped = with_refs(DiffusionTimesteps, {"scheduler": s}, mode="ddim_grid", grid_steps=50,
                        skip=2, clamp_previous=True)(like=like)
    assert clamped["previous"].min() == 0
    torch.testing.assert_close(clamped["previous"], (clamped["timestep"] - 40).clamp_min(0))
    fixed = with_refs(DiffusionTimesteps, {"scheduler": s}, mode="fixed", value=7)(like=like)
    assert set(fixed["timestep"].tolist()) == {7}


def test_timestep_outside_the_scheduler_range_is_a_located_error():
    with pytest.raises(DgraphError) as info:
        with_refs(DiffusionTimesteps, {"scheduler": sched()}, mode="uniform", high=1000)
    text = str(info.value)
    assert "params.high: timestep 1000 is outside the scheduler's range" in text
    assert "the scheduler's timesteps are 0..999 (num_train_timesteps 1000)" in text


def test_time_mlp_shapes_and_class_conditioning():
    net = TimeMLP.create(in_features=2, hidden=[32, 16], num_classes=3)
    x, t = torch.randn(5, 2), torch.randint(0, T, (5,))
    assert net(sample=x, timestep=t)["prediction"].shape == (5, 2)
    labels = torch.tensor([0, 1, 2, 0, 1])
    net.eval()
    a = net(sample=x, timestep=t, class_labels=labels)["prediction"]
    b = net(sample=x, timestep=t)["prediction"]  # the null class
    assert not torch.allclose(a, b)


def test_denoising_loss_trains_a_time_mlp_toward_the_v_target():
    s = sched()
    net = TimeMLP.create(in_features=2, hidden=[64, 64], prediction_type="v_prediction")
    loss = with_refs(DenoisingLoss, {"scheduler": s})
    x0 = torch.tensor([[1.0, -1.0]]).expand(256, 2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        eps, t = torch.randn(256, 2), torch.randint(0, T, (256,))
        x = s(sample=x0, noise=eps, timestep=t)["noisy"]
        value = loss(prediction=net(sample=x, timestep=t)["prediction"], sample=x0, noise=eps,
                     timestep=t)["loss"]
        first = first if first is not None else float(value.detach())
        opt.zero_grad()
        value.backward()
        opt.step()
    assert float(value.detach()) < 0.2 * first
    # and by hand: the mean squared error to alpha eps - sigma x0
    eps, t = torch.randn(4, 2), torch.tensor([0, 100, 500, 999])
    pred = torch.randn(4, 2)
    alpha, sigma = s.alpha_sigma(t, pred)
    expected = (pred - (alpha * eps - sigma * x0[:4])).square().mean()
    torch.testing.assert_close(loss(prediction=pred, sample=x0[:4], noise=eps, timestep=t)["loss"],
                               expected)
    huber = with_refs(DenoisingLoss, {"scheduler": s}, distance="pseudo_huber", huber_c=0.5)
    diff = pred - (alpha * eps - sigma * x0[:4])
    torch.testing.assert_close(huber(prediction=pred, sample=x0[:4], noise=eps, timestep=t)[
        "loss"], ((diff.square() + 0.25).sqrt() - 0.5).mean())


class Linear(torch.nn.Module):
    """A denoiser whose v-prediction is a fixed linear function of x and t."""

    prediction_type = "v_prediction"
    num_classes = None

    def forward(self, sample, timestep):
        return {"prediction": 0.3 * sample + timestep.float()[:, None] / 1000}


def test_solver_takes_equal_ddim_substeps():
    s = sched()
    solve = with_refs(DiffusionSolve, {"denoiser": Linear(), "scheduler": s}, steps=2)
    x = torch.randn(3, 2)
    t, to = torch.tensor([999, 499, 249]), torch.tensor([499, -1, 124])
    out = solve(sample=x, timestep=t, to_timestep=to)["sample"]
    mid = torch.tensor([749, 249, 187])  # t + (to - t) // 2, truncated toward t
    net = Linear()
    by_hand = s.ddim_step(x, net(x, t)["prediction"], t, mid)
    by_hand = s.ddim_step(by_hand, net(by_hand, mid)["prediction"], mid, to)
    torch.testing.assert_close(out, by_hand)


def test_progressive_loss_is_zero_when_one_student_step_lands_on_the_target():
    s = sched()
    loss = with_refs(ProgressiveLoss, {"scheduler": s}, weighting="none")
    x, pred = torch.randn(4, 2), torch.randn(4, 2)
    t, prev = torch.tensor([999, 749, 499, 249]), torch.tensor([499, 249, -1, 124])
    landed = s.ddim_step(x, pred, t, prev)  # the student's own one step
    assert float(loss(prediction=pred, sample=x, target=landed, timestep=t, previous=prev)[
        "loss"]) < 1e-8
    # x0~ by hand for another target; weighted by max(SNR, 1)
    target = torch.randn(4, 2)
    a, sg = s.alpha_sigma(t, x)
    ap, sp = s.alpha_sigma(prev, x)
    x0_tilde = (target - sp / sg * x) / (ap - sp / sg * a)
    x0_hat = a * x - sg * pred
    weighted = with_refs(ProgressiveLoss, {"scheduler": s})
    w = (a / sg).square().flatten().clamp_min(1)
    torch.testing.assert_close(
        weighted(prediction=pred, sample=x, target=target, timestep=t, previous=prev)["loss"],
        ((x0_hat - x0_tilde).square().mean(1) * w).mean())


def test_consistency_output_and_loss():
    s = sched()
    f = with_refs(ConsistencyOutput, {"scheduler": s})
    x, pred = torch.randn(3, 2), torch.randn(3, 2)
    t = torch.tensor([0, 19, 999])
    out = f(sample=x, prediction=pred, timestep=t)["denoised"]
    a, sg = s.alpha_sigma(t, x)
    scaled = 10 * t.float()[:, None]
    expected = (0.25 / (scaled ** 2 + 0.25)) * x + scaled / (scaled ** 2 + 0.25).sqrt() * (
        a * x - sg * pred)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[0], x[0])  # the boundary: f(x, 0) = x
    a, b = torch.randn(3, 2, requires_grad=True), torch.randn(3, 2, requires_grad=True)
    value = consistency_loss(a, b, distance="pseudo_huber", huber_c=0.1)
    torch.testing.assert_close(value, (((a - b).square() + 0.01).sqrt() - 0.1).mean())
    value.backward()
    assert b.grad is None and a.grad is not None  # the target side is a stop-gradient


def test_mode_coverage_by_hand():
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    labels = torch.arange(4).repeat_interleave(100)
    real = centres[labels] + 0.05 * torch.randn(400, 2)
    fake = torch.cat([centres[0] + 0.01 * torch.randn(60, 2),     # mode 0: 60 inside
                      centres[1] + 0.01 * torch.randn(30, 2),     # mode 1: 30 inside
                      centres[2] + 0.01 * torch.randn(5, 2),      # mode 2: 5 inside
                      torch.zeros(5, 2)])                         # in no mode
    coverage, inside = mode_coverage(fake, real, labels, min_share=0.3)
    # fair share 100 / 4 = 25; 0.3 * 25 = 7.5: modes 0 and 1 only
    assert coverage == 0.5
    assert inside == 0.95


def test_a_prediction_type_mismatch_is_a_located_error():
    class Eps(Linear):
        prediction_type = "epsilon"

    with pytest.raises(DgraphError) as info:
        with_refs(DiffusionSolve, {"denoiser": Eps(), "scheduler": sched()})
    text = str(info.value)
    assert ("params.denoiser: the denoiser predicts 'epsilon' but the scheduler reads its "
            "output as 'v_prediction'") in text
    assert "set the same prediction_type on the denoiser and in the scheduler's config" in text


def test_guidance_on_an_unconditional_denoiser_is_a_located_error():
    with pytest.raises(DgraphError) as info:
        with_refs(DiffusionSolve, {"denoiser": Linear(), "scheduler": sched()}, guidance=3.0)
    assert ("params.guidance: guidance 3.0 needs a class-conditional denoiser, and this one "
            "is unconditional") in str(info.value)


UNET = {"sample_size": 8, "in_channels": 1, "block_out_channels": [8, 16],
        "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"]}


def test_unet_denoiser_is_class_conditional_with_a_null_class():
    from dgraph.components.diffusion.unet import UNetDenoiser

    net = UNetDenoiser.create(config=UNET, num_classes=3, prediction_type="v_prediction")
    assert net.model.config.num_class_embeds == 4 and net.prediction_type == "v_prediction"
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    net.eval()
    with torch.no_grad():
        cond = net(sample=x, timestep=t, class_labels=torch.tensor([0, 2]))["prediction"]
        null = net(sample=x, timestep=t)["prediction"]
        explicit = net(sample=x, timestep=t, class_labels=torch.tensor([3, 3]))["prediction"]
    assert cond.shape == (2, 1, 8, 8) and not torch.allclose(cond, null)
    torch.testing.assert_close(null, explicit)


def test_unet_image_size_that_cannot_be_halved_is_a_located_error():
    from dgraph.components.diffusion.unet import UNetDenoiser

    config = {**UNET, "sample_size": 6, "block_out_channels": [8, 8, 8],
              "down_block_types": ["DownBlock2D"] * 3, "up_block_types": ["UpBlock2D"] * 3}
    with pytest.raises(DgraphError) as info:
        UNetDenoiser.create(config=config)
    text = str(info.value)
    assert "params.config: sample_size 6 cannot be halved by 2 of the UNet's 3 down blocks" \
        in text
    assert "use fewer down_block_types (and up_block_types) or a larger image" in text


def test_sample_metric_with_a_classifier_and_guidance():
    """An oracle x0 denoiser predicts the constant image c / 10 for class c and 0 for the
    null class, so guidance w = 3 gives 3 c / 10: the data; a classifier that reads the
    constant classifies every guided class-conditional sample as its label."""
    from types import SimpleNamespace

    from dgraph.components.diffusion.metrics import DiffusionSamples

    s = NoiseScheduler.create(type="ddim", config={**CONFIG, "prediction_type": "sample"})

    class Oracle(torch.nn.Module):
        prediction_type, num_classes = "sample", 10

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, sample, timestep, class_labels=None):
            value = torch.where(class_labels < 10, class_labels.float() / 10, 0.0)
            return {"prediction": value[:, None, None, None].expand_as(sample) + self.w}

    class Judge(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            level = x.flatten(1).mean(1, keepdim=True) * 10 / 3
            return {"logits": -(level - torch.arange(10.0)).square(), "features": x.flatten(1)}

    labels = torch.arange(200) % 10
    real = (labels.float() * 3 / 10)[:, None, None, None].expand(200, 1, 2, 2).clone()
    data = SimpleNamespace(eval={"x": real, "y": labels})
    metric = with_refs(DiffusionSamples, {"denoiser": Oracle(), "scheduler": s, "data": data,
                                          "classifier": Judge()},
                       steps=[1, 2], num_samples=200, labels=None, num_classes=10,
                       guidance=3.0)
    out = metric.compute()
    assert out["class_accuracy@1"] == out["class_accuracy@2"] == 1.0
    assert out["class_coverage@2"] == 1.0
    assert abs(out["frechet@1"]) < 1e-6
    assert abs(out["energy_distance@2"]) < 0.05  # unbiased: duplicates make it slightly < 0
    with pytest.raises(DgraphError) as info:
        with_refs(DiffusionSamples, {"denoiser": Linear(), "scheduler": sched(), "data": data},
                  num_classes=10)
    assert ("params.num_classes: class-conditional sampling needs a class-conditional "
            "denoiser, and this one is unconditional") in str(info.value)


def test_dmd_loss_gradient_is_the_normalised_fake_minus_real_x0():
    from dgraph.components.diffusion.dmd import DMDLoss

    s = sched()
    loss = with_refs(DMDLoss, {"scheduler": s})
    x = torch.randn(3, 2, requires_grad=True)
    t = torch.tensor([100, 500, 900])
    eps = torch.randn(3, 2)
    noisy = s(sample=x.detach(), noise=eps, timestep=t)["noisy"]
    real, fake = torch.randn(3, 2), torch.randn(3, 2)
    value = loss(sample=x, noisy=noisy, real=real, fake=fake, timestep=t)["loss"]
    value.backward()
    a, sg = s.alpha_sigma(t, noisy)
    x0_real, x0_fake = a * noisy - sg * real, a * noisy - sg * fake
    g = (x0_fake - x0_real) / (x.detach() - x0_real).abs().mean(1, keepdim=True)
    torch.testing.assert_close(x.grad, g / x.numel())  # d/dx 0.5 mean |x - sg(x - g)|^2
    torch.testing.assert_close(value, 0.5 * g.square().mean())
