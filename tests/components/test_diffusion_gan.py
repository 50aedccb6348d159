"""gan_head (DMD2's GAN head): a realism logit from the fake-score network's bottleneck or from
its own trunk; the non-saturating losses on its logits, checked by hand; and the head on the
ring's DMD2 (``dmd2_toy`` with the GAN terms added), trained a few steps."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
import yaml
from dgraph.components.diffusion.denoisers import TimeMLP
from dgraph.components.diffusion.gan import GANHead, bottleneck
from dgraph.components.diffusion.unet import UNetDenoiser
from dgraph.components.losses.adversarial import gan_critic_loss, gan_generator_loss
from helpers import QUIET

from dgraph.api import train
from dgraph.registry import BuildContext

UNET = {"sample_size": 8, "in_channels": 1, "block_out_channels": [16, 32],
        "layers_per_block": 1, "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"]}


def _head(network, **params):
    return GANHead.create(BuildContext(node="disc", references={"network": network}),
                          network="fake_score", **params)


def test_the_head_on_an_mlp_denoiser_reads_its_last_hidden_layer_by_hand():
    torch.manual_seed(0)
    net = TimeMLP.create(in_features=2, hidden=[16, 12], num_classes=3)
    head = _head(net, hidden=5)
    x, t, y = torch.randn(4, 2), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 2, 3])
    # the MLP by hand up to its output layer: h = SiLU(W2 SiLU(W1 x + cond) + P cond)
    cond = net.time(net.embed(t)) + net.classes(y)
    h = F.silu(net.layers[0](F.silu(net.inp(x) + cond)) + net.cond[0](cond))
    expected = head.logit(F.silu(head.head[0](h)))
    torch.testing.assert_close(head(sample=x, timestep=t, class_labels=y)["logits"], expected)
    # the head's own weights only: the network stays the fake-score node's
    assert sorted(n for n, _ in head.named_parameters()) == [
        "head.0.bias", "head.0.weight", "logit.bias", "logit.weight"]


def test_the_head_on_a_unet_reads_the_mid_block_and_skips_the_up_blocks():
    torch.manual_seed(0)
    net = UNetDenoiser.create(config=UNET, num_classes=10, prediction_type="v_prediction")
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([5, 400, 990]), torch.tensor([1, 7, 10])
    seen = {}
    net.model.mid_block.register_forward_hook(lambda _m, _i, out: seen.setdefault("mid", out))
    ups = []
    net.model.up_blocks[0].register_forward_hook(lambda *_a: ups.append(1))
    net(sample=x, timestep=t, class_labels=y)
    assert len(ups) == 1
    features = bottleneck(net, x, t, y)
    assert len(ups) == 1  # stopped at the bottleneck: no up block ran
    assert features.shape == (3, 32, 4, 4)
    torch.testing.assert_close(features, seen["mid"])
    head = _head(net, hidden=8)
    conv, norm = head.head[0], head.head[1]
    by_hand = head.logit(F.silu(norm(conv(features))).mean(dim=(2, 3)))
    torch.testing.assert_close(head(sample=x, timestep=t, class_labels=y)["logits"], by_hand)


def test_without_a_network_the_head_has_its_own_trunk_on_flattened_samples():
    torch.manual_seed(0)
    head = GANHead.create(in_features=64, trunk=[32, 16], hidden=8, num_classes=10)
    x, t = torch.randn(5, 1, 8, 8), torch.full((5,), 300)
    y = torch.arange(5)
    logits = head(sample=x, timestep=t, class_labels=y)["logits"]
    trunk = head.trunk
    cond = trunk.time(trunk.embed(t)) + trunk.classes(y)
    h = F.silu(trunk.layers[0](F.silu(trunk.inp(x.flatten(1)) + cond)) + trunk.cond[0](cond))
    torch.testing.assert_close(logits, head.logit(F.silu(head.head[0](h))))
    assert logits.shape == (5, 1)


def test_non_saturating_losses_on_the_head_logits_by_hand():
    """d_real = [0, 2], d_fake = [-1, 1]:
    discriminator = (ln 2 + ln(1 + e^-2)) / 2 + (ln(1 + e^-1) + ln(1 + e)) / 2,
    generator = (ln(1 + e) + ln(1 + e^-1)) / 2; the generator's gradient on each fake logit
    is -sigmoid(-d) / n."""
    real = torch.tensor([[0.0], [2.0]])
    fake = torch.tensor([[-1.0], [1.0]], requires_grad=True)
    disc = (math.log(2) + math.log1p(math.exp(-2))) / 2 \
        + (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    gen = (math.log1p(math.exp(1)) + math.log1p(math.exp(-1))) / 2
    assert math.isclose(float(gan_critic_loss(real, fake.detach())), disc, rel_tol=1e-6)
    loss = gan_generator_loss(fake)
    assert math.isclose(float(loss.detach()), gen, rel_tol=1e-6)
    loss.backward()
    expected = [-1 / (1 + math.exp(-1)) / 2, -1 / (1 + math.exp(1)) / 2]
    torch.testing.assert_close(fake.grad.flatten(), torch.tensor(expected))


def test_the_generator_gradient_reaches_the_samples_through_head_and_network():
    torch.manual_seed(0)
    net = UNetDenoiser.create(config=UNET, num_classes=10, prediction_type="v_prediction")
    net.requires_grad_(False)  # the generator's update trains neither network nor head
    head = _head(net, hidden=8).requires_grad_(False)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    gan_generator_loss(head(sample=x, timestep=torch.tensor([100, 900]),
                            class_labels=torch.tensor([3, 4]))["logits"]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


GAN_NODES = {  # DMD2's GAN head added to dmd2_toy: on the fake score's last hidden layer
    "real_t": {"shares": "sched",
               "inputs": {"sample": "data.x", "noise": "eps.noise", "timestep": "t.timestep"}},
    "gen_t": {"shares": "sched",
              "inputs": {"sample": "fake_x.y", "noise": "eps.noise", "timestep": "t.timestep"}},
    "disc": {"kind": "model", "type": "gan_head", "params": {"network": "fake_score"},
             "inputs": {"sample": "real_t.noisy", "timestep": "t.timestep"}},
    "disc_fake": {"shares": "disc", "inputs": {"sample": "noisy.noisy",
                                               "timestep": "t.timestep"}},
    "disc_gen": {"shares": "disc", "inputs": {"sample": "gen_t.noisy",
                                              "timestep": "t.timestep"}},
    "gan_d": {"kind": "loss", "type": "gan_critic_loss",
              "inputs": {"real": "disc.logits", "fake": "disc_fake.logits"}},
    "gan_g": {"kind": "loss", "type": "gan_generator_loss",
              "inputs": {"fake": "disc_gen.logits"}},
}


def test_the_gan_head_on_the_ring_dmd2(tmp_path):
    torch.set_num_threads(1)
    train("diffusion_teacher_toy", out=tmp_path / "diffusion_teacher_toy",
          overrides=["train.steps=3", "train.eval.every=3", "nodes.samples.params.steps=[1]",
                     "nodes.samples.params.num_samples=32"], **QUIET)
    spec = {"dgraph": 1, "name": "dmd2_gan_toy", "extends": "dmd2_toy", "nodes": GAN_NODES,
            "updates": {"fake_score": {"params": ["fake_score", "disc"],
                                       "objective": {"fake_loss": 1.0, "gan_d": 0.01}},
                        "generator": {"objective": {"dmd": 1.0, "gan_g": 0.003},
                                      "every": 2}},
            "train": {"steps": 3, "log_every": 1, "eval": {"every": 3}}}
    path = tmp_path / "dmd2_gan_toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = tmp_path / "dmd2_gan_toy"
    summary = train(str(path), out=run, overrides=["nodes.samples.params.num_samples=32"],
                    **QUIET)
    assert math.isfinite(summary["samples/energy_distance@1"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows if "loss/gan_d" in r} == {1, 2, 3}
    assert {r["step"] for r in rows if "loss/gan_g" in r} == {1, 3}
    first = next(r for r in rows if "loss/gan_d" in r)
    # at the start both sides are near chance: 2 ln 2 and ln 2
    assert abs(first["loss/gan_d"] - 2 * math.log(2)) < 0.3
    assert abs(first["loss/gan_g"] - math.log(2)) < 0.3
