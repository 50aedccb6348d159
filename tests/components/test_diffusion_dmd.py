"""Score distillation losses (SDS, VSD) and the particle metric, against hand-computed values;
a real SDS optimisation against an analytic Gaussian teacher."""

from __future__ import annotations

import math

import pytest
import torch
from dgraph.components.diffusion.schedulers import NoiseScheduler
from dgraph.components.diffusion.score_distillation import ParticleSamples, SDSLoss, VSDLoss

from dgraph.errors import DgraphError
from dgraph.registry import BuildContext

CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001,
          "beta_end": 0.02, "clip_sample": False, "timestep_spacing": "trailing"}


def sched(prediction: str = "v_prediction") -> NoiseScheduler:
    return NoiseScheduler.create(type="ddim", config={**CONFIG, "prediction_type": prediction})


def with_refs(cls, refs, **params):
    """Build ``cls`` with NodeRef parameters filled by modules, as the graph does."""
    declared = cls.component
    p = declared.Params.model_validate({**{k: k for k in refs}, **params})
    return declared(p, "node").build(BuildContext(node="node", references=dict(refs)))


def _batch(s):
    torch.manual_seed(0)
    x = torch.randn(4, 2, requires_grad=True)
    t = torch.tensor([20, 300, 600, 980])
    eps = torch.randn(4, 2)
    noisy = s(sample=x.detach(), noise=eps, timestep=t)["noisy"]
    return x, t, eps, noisy


@pytest.mark.parametrize("weighting", ["sigma_sq", "none"])
def test_sds_gradient_is_the_weighted_teacher_minus_injected_noise(weighting):
    s = sched()
    loss = with_refs(SDSLoss, {"scheduler": s}, weighting=weighting)
    x, t, eps, noisy = _batch(s)
    v = torch.randn(4, 2)
    value = loss(sample=x, noisy=noisy, real=v, noise=eps, timestep=t)["loss"]
    value.backward()
    abar = s.scheduler.alphas_cumprod[t].float()[:, None]
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    eps_real = sigma * noisy + alpha * v  # v-prediction: eps = sigma x_t + alpha v
    w = (1 - abar) if weighting == "sigma_sq" else torch.ones_like(abar)
    g = w * (eps_real - eps)
    torch.testing.assert_close(x.grad, g / x.numel())  # d/dx 0.5 mean |x - sg(x - g)|^2
    torch.testing.assert_close(value, 0.5 * g.square().mean())


def test_vsd_gradient_is_the_weighted_teacher_minus_fake_epsilon():
    s = sched("epsilon")
    loss = with_refs(VSDLoss, {"scheduler": s})
    x, t, _, noisy = _batch(s)
    real, fake = torch.randn(4, 2), torch.randn(4, 2)
    loss(sample=x, noisy=noisy, real=real, fake=fake, timestep=t)["loss"].backward()
    sigma_sq = 1 - s.scheduler.alphas_cumprod[t].float()[:, None]
    torch.testing.assert_close(x.grad, sigma_sq * (real - fake) / x.numel())
    x.grad = None  # a fake score equal to the real one: no gradient at all
    loss(sample=x, noisy=noisy, real=real, fake=real, timestep=t)["loss"].backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_sds_moves_particles_to_the_mean_of_an_analytic_gaussian_teacher():
    """Data N(mu, s^2 I): x_t ~ N(alpha mu, (alpha^2 s^2 + sigma^2) I), whose exact epsilon
    prediction is sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2). SDS is mode seeking:
    the particles go to mu and collapse there (their spread shrinks far below s)."""
    s = sched("epsilon")
    loss = with_refs(SDSLoss, {"scheduler": s}, weighting="none")
    mu, std = torch.tensor([1.0, -1.0]), 0.5
    torch.manual_seed(0)
    particles = torch.nn.Parameter(torch.randn(256, 2) * 0.1)
    opt = torch.optim.Adam([particles], lr=0.05)
    for _ in range(300):
        t = torch.randint(20, 981, (256,))
        eps = torch.randn(256, 2)
        noisy = s(sample=particles.detach(), noise=eps, timestep=t)["noisy"]
        alpha, sigma = s.alpha_sigma(t, noisy)
        eps_hat = sigma * (noisy - alpha * mu) / (alpha.square() * std ** 2 + sigma.square())
        opt.zero_grad()
        loss(sample=particles, noisy=noisy, real=eps_hat, noise=eps, timestep=t)["loss"].backward()
        opt.step()
    final = particles.detach()
    assert (final.mean(0) - mu).norm() < 0.1, final.mean(0)
    assert final.std(0).max() < 0.5 * std, final.std(0)


class _Ring:
    """A data node's held-out split: 4 modes at radius 2, 25 points each."""

    def __init__(self) -> None:
        torch.manual_seed(1)
        labels = torch.arange(4).repeat_interleave(25)
        angle = labels.float() * math.pi / 2
        centres = torch.stack([2 * angle.cos(), 2 * angle.sin()], 1)
        self.eval = {"x": centres + 0.05 * torch.randn(100, 2), "mode": labels}


def test_particle_metric_by_hand():
    data = _Ring()
    particles = torch.nn.Module()
    # 8 particles exactly on the centres of modes 0 and 1, none on 2 and 3
    particles.value = torch.nn.Parameter(torch.tensor([[2.0, 0.0]] * 4 + [[0.0, 2.0]] * 4))
    metric = with_refs(ParticleSamples, {"particles": particles, "data": data})
    out = metric.compute()
    assert out["mode_coverage"] == 0.5 and out["in_modes"] == 1.0
    real = data.eval["x"]
    centres = torch.stack([real[data.eval["mode"] == c].mean(0) for c in range(4)])
    expected = (torch.cdist(particles.value.detach().double(), centres.double()).min(1).values
                .mean() / torch.cdist(real.double(), centres.double()).min(1).values.mean())
    assert out["spread"] == pytest.approx(float(expected))
    assert out["spread"] < 0.3  # collapsed onto the centres
    assert out["energy_distance"] > 0.5


def test_particle_metric_refuses_a_node_that_is_not_a_tensor_of_points():
    particles = torch.nn.Module()
    particles.value = torch.nn.Parameter(torch.zeros(2, 1, 8, 8))
    with pytest.raises(DgraphError) as info:
        with_refs(ParticleSamples, {"particles": particles, "data": _Ring()})
    text = str(info.value)
    assert "params.particles: the node named is not a learnable tensor of points [N, D]" in text
    assert "expected: a learnable_tensor node with shape [N, D]" in text
    assert "found:    shape [2, 1, 8, 8]" in text
    with pytest.raises(DgraphError) as info:
        with_refs(ParticleSamples, {"particles": particles.__class__(), "data": _Ring()})
    assert "found:    Module" in str(info.value)


def test_score_losses_refuse_a_scheduler_that_is_not_a_noise_scheduler():
    with pytest.raises(DgraphError) as info:
        with_refs(SDSLoss, {"scheduler": torch.nn.Linear(2, 2)})
    text = str(info.value)
    assert "params.scheduler: the node named is not a noise_scheduler" in text
    assert "found:    Linear" in text
