"""hf_causal_lm runs GPT-2's ``gelu_new`` as torch's fused tanh GELU (same formula, one kernel)."""

from __future__ import annotations

import math

import torch
from dgraph.components.models.hf import HFCausalLM, fuse_tanh_gelu

CONFIG = {"model_type": "gpt2", "vocab_size": 40, "n_positions": 16, "n_layer": 2, "n_embd": 16,
          "n_head": 2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def test_gelu_new_is_fused_and_matches_the_formula_and_transformers():
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.activations import NewGELUActivation

    torch.manual_seed(0)
    module = HFCausalLM.create(config=CONFIG)
    acts = [m for m in module.model.modules() if type(m).__name__ == "FusedTanhGELU"]
    assert len(acts) == 2  # one per block's MLP
    assert not any(isinstance(m, NewGELUActivation) for m in module.model.modules())
    assert module.model.config.activation_function == "gelu_new"  # the config is unchanged
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])
    by_hand = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert torch.allclose(acts[0](x), by_hand, atol=1e-6)

    settings = {k: v for k, v in CONFIG.items() if k != "model_type"}
    reference = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **settings))
    reference.load_state_dict(module.model.state_dict())
    assert any(isinstance(m, NewGELUActivation) for m in reference.modules())
    ids = torch.randint(0, 40, (3, 12))
    ours = module(input_ids=ids)["logits"]
    theirs = reference(input_ids=ids, use_cache=False).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    for (name, a), b in zip(module.model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), name
    assert fuse_tanh_gelu(reference) == 2
    assert fuse_tanh_gelu(reference) == 0  # nothing left to swap


def test_fused_gelu_false_keeps_transformers_module():
    from transformers.activations import NewGELUActivation

    module = HFCausalLM.create(config=CONFIG, fused_gelu=False)
    assert sum(isinstance(m, NewGELUActivation) for m in module.model.modules()) == 2
    assert not any(type(m).__name__ == "FusedTanhGELU" for m in module.model.modules())
