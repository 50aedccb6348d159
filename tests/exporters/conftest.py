"""Real run directories for the export tests, each trained once per session (a few steps).

The transformer and the UNet are tiny configs; the transformer student is loaded with
``from_pretrained`` from a folder written by ``save_pretrained``. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from dgraph.api import train  # noqa: E402

GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 100,
        "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}
UNET = {"sample_size": 16, "block_out_channels": [16, 32], "layers_per_block": 1,
        "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
SEQ = 16


def _flow(value) -> str:
    import json

    return json.dumps(value)


CNN_SPEC = """
dgraph: 1
name: cnn_kd
nodes:
  data:
    kind: data
    type: digits
    params: {flatten: false, batch_size: 32}
  teacher:
    kind: teacher
    type: cnn
    params: {in_channels: 1, channels: [16, 32], num_classes: 10, image_size: 8}
    inputs: {x: data.x}
  student:
    kind: student
    type: cnn
    params: {in_channels: 1, channels: [8, 16], num_classes: 10, image_size: 8}
    inputs: {x: data.x}
  kd:
    kind: loss
    type: hinton_kd
    inputs: {student: student.logits, teacher: teacher.logits}
  ce:
    kind: loss
    type: cross_entropy
    inputs: {logits: student.logits, target: data.y}
updates:
  main:
    optimizer: {type: adam, lr: 0.01}
    params: [student]
    objective: {kd: 0.5, ce: 0.5}
train: {steps: 5, device: cpu, log_every: 5, eval: {every: 5}}
"""

LM_SPEC = """
dgraph: 1
name: tiny_lm_kd
description: Distil a tiny GPT-2 into one loaded with from_pretrained.
nodes:
  data:
    kind: data
    type: tensor_file
    params:
      path: tokens.safetensors
      batch_size: 8
      keys:
        input_ids: {{key: input_ids, type: Tokens, shape: "B, {seq}"}}
        attention_mask: {{key: attention_mask, type: Mask, shape: "B, {seq}"}}
  teacher:
    kind: teacher
    type: hf_causal_lm
    params: {{config: {gpt2}}}
    inputs: {{input_ids: data.input_ids, attention_mask: data.attention_mask}}
  student:
    kind: student
    type: hf_causal_lm
    params: {{path: "{pretrained}"}}
    inputs: {{input_ids: data.input_ids, attention_mask: data.attention_mask}}
  distill:
    kind: loss
    type: mse
    inputs: {{prediction: student.logits, target: teacher.logits}}
updates:
  main:
    optimizer: {{type: adam, lr: 0.001}}
    params: [student]
    objective: {{distill: 1.0}}
train: {{steps: 2, device: cpu, log_every: 1}}
"""

UNET_SPEC = """
dgraph: 1
name: tiny_unet
nodes:
  data:
    kind: data
    type: tensor_file
    params:
      path: noisy.safetensors
      batch_size: 8
      keys:
        sample: {{key: sample, type: Images, shape: "B, 3, 16, 16"}}
        timestep: {{key: timestep, type: Timesteps, shape: "B"}}
        noise: {{key: noise, type: Noise, shape: "B, 3, 16, 16"}}
  student:
    kind: student
    type: unet2d
    params: {{config: {unet}}}
    inputs: {{sample: data.sample, timestep: data.timestep}}
  denoise:
    kind: loss
    type: mse
    inputs: {{prediction: student.noise_pred, target: data.noise}}
updates:
  main:
    optimizer: {{type: adam, lr: 0.001}}
    params: [student]
    objective: {{denoise: 1.0}}
train: {{steps: 2, device: cpu, log_every: 1}}
"""


def write_lm_files(folder: Path) -> Path:
    """A saved tiny GPT-2 (``folder/pretrained``), a token file and the spec; returns it."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    settings = dict(GPT2)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "pretrained")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, GPT2["vocab_size"], (24, SEQ), generator=generator)
    lengths = torch.randint(SEQ // 2, SEQ + 1, (24,), generator=generator)
    mask = (torch.arange(SEQ) < lengths[:, None]).to(torch.int64)
    save_file({"input_ids": ids, "attention_mask": mask}, str(folder / "tokens.safetensors"))
    spec = folder / "lm.yaml"
    spec.write_text(LM_SPEC.format(seq=SEQ, gpt2=_flow(GPT2),
                                   pretrained=(folder / "pretrained").as_posix()))
    return spec


def write_unet_files(folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    save_file({"sample": torch.randn(16, 3, 16, 16, generator=generator),
               "timestep": torch.randint(0, 1000, (16,), generator=generator),
               "noise": torch.randn(16, 3, 16, 16, generator=generator)},
              str(folder / "noisy.safetensors"))
    spec = folder / "unet.yaml"
    spec.write_text(UNET_SPEC.format(unet=_flow(UNET)))
    return spec


def _train(spec, out: Path, *overrides: str) -> Path:
    train(spec, out=out, overrides=list(overrides), progress=False, log=lambda _m: None)
    return out


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory) -> Path:
    """``student_digits`` (the MLP student of the zoo) after 20 steps."""
    return _train("student_digits", tmp_path_factory.mktemp("mlp") / "run", "train.steps=20",
                  "train.device=cpu")


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory) -> Path:
    """A CNN student distilled from a (random, frozen) CNN teacher on 8x8 digit images."""
    folder = tmp_path_factory.mktemp("cnn")
    spec = folder / "cnn.yaml"
    spec.write_text(CNN_SPEC)
    return _train(spec, folder / "run")


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm")
    return _train(write_lm_files(folder), folder / "run")


@pytest.fixture(scope="session")
def unet_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unet")
    return _train(write_unet_files(folder), folder / "run")


@pytest.fixture
def gpt2_config() -> dict:
    return dict(GPT2)


@pytest.fixture
def unet_config() -> dict:
    return dict(UNET)


@pytest.fixture
def lm_files():
    """``lm_files(folder)``: write a saved tiny GPT-2, a token file and a spec; the spec."""
    return write_lm_files
