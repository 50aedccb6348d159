"""The noise_scheduler node against the formulas, computed by hand from the betas."""

from __future__ import annotations

import pytest
import torch
from dgraph.components.diffusion.schedulers import NoiseScheduler, call_denoiser
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from dgraph.errors import DgraphError

T = 1000
LINEAR = {"num_train_timesteps": T, "beta_schedule": "linear", "beta_start": 0.0001,
          "beta_end": 0.02}


def sched(kind: str = "ddim", **config) -> NoiseScheduler:
    base = {} if kind == "flow_match_euler" else dict(LINEAR)
    return NoiseScheduler.create(type=kind, config={**base, **config})


def abar_by_hand(t: torch.Tensor) -> torch.Tensor:
    betas = torch.linspace(0.0001, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)[t].float()


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "euler", "lcm"])
def test_alpha_sigma_and_add_noise_follow_the_beta_table(kind):
    s = sched(kind, prediction_type="epsilon")
    t = torch.tensor([0, 1, 250, 999, -1])
    alpha, sigma = s.alpha_sigma(t)
    abar = torch.cat([abar_by_hand(t[:4]), torch.ones(1)])
    torch.testing.assert_close(alpha, abar.sqrt(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigma, (1 - abar).sqrt(), rtol=1e-4, atol=1e-6)
    x0, eps = torch.randn(5, 2), torch.randn(5, 2)
    noisy = s(sample=x0, noise=eps, timestep=t)
    expected = abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * eps
    torch.testing.assert_close(noisy["noisy"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(noisy["alpha"], abar.sqrt(), rtol=1e-5, atol=1e-6)
    if kind != "euler":  # diffusers' own add_noise, where it is in this convention
        own = s.scheduler.add_noise(x0[:4], eps[:4], t[:4])
        torch.testing.assert_close(noisy["noisy"][:4], own, rtol=1e-5, atol=1e-6)


def test_flow_matching_interpolates_linearly():
    s = sched("flow_match_euler")
    assert s.prediction_type == "flow" and s.max_timestep == T
    t = torch.tensor([0, 250, 1000, -1])
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    sigma = torch.tensor([0.0, 0.25, 1.0, 0.0])[:, None]
    torch.testing.assert_close(s(sample=x0, noise=eps, timestep=t)["noisy"],
                               (1 - sigma) * x0 + sigma * eps)


@pytest.mark.parametrize("kind,prediction", [("ddim", "epsilon"), ("ddim", "sample"),
                                             ("ddim", "v_prediction"),
                                             ("flow_match_euler", None)])
def test_conversions_between_prediction_types(kind, prediction):
    s = sched(kind, **({"prediction_type": prediction} if prediction else {}))
    t = torch.tensor([10, 500, 900])
    x0, eps = torch.randn(3, 2), torch.randn(3, 2)
    alpha, sigma = s.alpha_sigma(t, x0)
    x = alpha * x0 + sigma * eps
    by_hand = {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0,
               "flow": eps - x0}
    output = by_hand[s.prediction_type]
    torch.testing.assert_close(s.target(x0, eps, t), output)
    back_x0, back_eps = s.to_x0_eps(x, output, t)
    torch.testing.assert_close(back_x0, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(back_eps, eps, rtol=1e-4, atol=1e-4)
    for to, value in by_hand.items():
        torch.testing.assert_close(s.convert(x, output, t, to), value, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_step_is_diffusers_ddim_step(prediction):
    s = sched("ddim", prediction_type=prediction, timestep_spacing="trailing",
              clip_sample=False)
    reference = DDIMScheduler(**LINEAR, prediction_type=prediction, timestep_spacing="trailing",
                              clip_sample=False)
    reference.set_timesteps(4)
    x = torch.randn(6, 2)
    for t in reference.timesteps:  # 999, 749, 499, 249 -> previous t - 250 (-1: alpha 1)
        out = torch.randn(6, 2)
        expected = reference.step(out, t, x).prev_sample
        mine = s.ddim_step(x, out, t.repeat(6), (t - 250).repeat(6))
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5)


def test_flow_step_is_diffusers_flow_euler_step():
    s = sched("flow_match_euler")
    reference = FlowMatchEulerDiscreteScheduler()
    reference.set_timesteps(4)
    x = torch.randn(5, 2)
    sigmas = reference.sigmas
    for i, t in enumerate(reference.timesteps):
        out = torch.randn(5, 2)
        expected = reference.step(out, t, x).prev_sample
        mine = s.ddim_step(x, out, t.repeat(5), (sigmas[i + 1] * T).repeat(5))
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5)
        x = expected


def test_consistency_boundary_scalings():
    s = sched("ddim")
    t = torch.tensor([0.0, 1.0, 20.0, 999.0])
    c_skip, c_out = s.boundary(t)
    scaled = 10 * t
    torch.testing.assert_close(c_skip, 0.25 / (scaled ** 2 + 0.25))
    torch.testing.assert_close(c_out, scaled / (scaled ** 2 + 0.25).sqrt())
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0  # f(x, 0) = x


@pytest.mark.parametrize("kind,steps", [("ddim", 1), ("ddim", 3), ("ddpm", 2), ("euler", 2),
                                        ("lcm", 1), ("lcm", 4), ("flow_match_euler", 3)])
def test_sampling_loop_reaches_the_point_an_oracle_predicts(kind, steps):
    """Data = one point x*: the exact prediction is known, and every sampler ends at x*."""
    config = {} if kind == "flow_match_euler" else {"prediction_type": "sample",
                                                   "timestep_spacing": "trailing"}
    if kind in ("ddim", "ddpm"):
        config["clip_sample"] = False
    s = sched(kind, **config)
    target = torch.tensor([1.5, -0.5])

    def oracle(x, t):
        if kind == "flow_match_euler":  # u = eps - x*, eps = (x - (1 - s) x*) / s
            sigma = t.float()[:, None] / T
            return (x - (1 - sigma) * target) / sigma - target
        return target.expand_as(x)

    out = s.sample(oracle, torch.randn(16, 2), steps)
    torch.testing.assert_close(out, target.expand(16, 2), rtol=1e-3, atol=2e-3)


def test_call_denoiser_reads_prediction_or_noise_pred():
    def module(**kwargs):
        return {"noise_pred": kwargs["sample"] * 2}

    assert torch.equal(call_denoiser(module, torch.ones(2), torch.zeros(2)), torch.full((2,), 2.))


def test_a_config_the_diffusers_class_refuses_is_a_located_error():
    with pytest.raises(DgraphError) as info:
        NoiseScheduler.create(type="ddim", config={"beta_schedule": "nonsense"})
    text = str(info.value)
    assert "params.config: diffusers' DDIMScheduler rejected the config" in text
    assert "nonsense" in text


def test_flow_matching_takes_no_prediction_type():
    with pytest.raises(ValueError) as info:
        NoiseScheduler.create(type="flow_match_euler", config={"prediction_type": "epsilon"})
    assert ("flow_match_euler has no prediction_type: its network predicts the velocity "
            "eps - x0 ('flow'); remove config.prediction_type") in str(info.value)
