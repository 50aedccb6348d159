"""`path:` takes a Hub model id resolved from the local Hugging Face cache (never downloaded),
and hf_causal_lm / hf_encoder take gradient checkpointing. Offline: the cache is a temporary
folder laid out as huggingface_hub lays it out, with a model written by save_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dgraph.components.models.hf import HFCausalLM
from dgraph.components.models.hf_encoder import HFEncoder

from dgraph.errors import ValidationError

GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 16, "n_head": 2, "vocab_size": 40,
        "n_positions": 32}
BERT = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 16,
        "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 50,
        "max_position_embeddings": 32}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache holding 'acme/tiny-gpt2' at its main revision."""
    from huggingface_hub import constants
    from transformers import GPT2Config, GPT2LMHeadModel

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-gpt2"
    torch.manual_seed(0)
    config = {k: v for k, v in GPT2.items() if k != "model_type"}
    GPT2LMHeadModel(GPT2Config(**config)).save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_id_loads_the_cached_snapshot(hub_cache, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no local folder called acme/tiny-gpt2
    model = HFCausalLM.create(path="acme/tiny-gpt2")
    snapshot = hub_cache / "models--acme--tiny-gpt2" / "snapshots" / COMMIT
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(snapshot), local_files_only=True)
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids)["logits"], reference(ids).logits)


def test_a_hub_id_that_is_not_cached_names_the_id_and_the_cache(hub_cache, monkeypatch,
                                                                tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError) as info:
        HFCausalLM.create(path="acme/missing-model")
    (problem,) = info.value.problems
    assert problem.message == ("params.path: 'acme/missing-model' is neither a local folder "
                               "nor a Hub model in the local Hugging Face cache")
    assert problem.expected == ("a folder written by save_pretrained (config.json and "
                                "weights), or the id of a Hub model already in the cache")
    assert problem.found == (f"nothing at {tmp_path / 'acme' / 'missing-model'}; "
                             f"'acme/missing-model' not in the cache {hub_cache} "
                             "(LocalEntryNotFoundError)")
    assert problem.suggestion == (
        "download it once where there is network (`hf download acme/missing-model`; "
        "HF_HUB_CACHE or HF_HOME choose the cache), or give a local folder: dgraph never "
        "downloads")


def test_a_local_folder_wins_over_a_hub_id_of_the_same_name(hub_cache, monkeypatch, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    config = {k: v for k, v in GPT2.items() if k != "model_type"}
    GPT2LMHeadModel(GPT2Config(**config)).save_pretrained(tmp_path / "acme" / "tiny-gpt2")
    local = HFCausalLM.create(path="acme/tiny-gpt2")
    cached = HFCausalLM.create(path=str(hub_cache / "models--acme--tiny-gpt2" / "snapshots"
                                        / COMMIT))
    weight = "model.transformer.wte.weight"
    assert not torch.equal(local.state_dict()[weight], cached.state_dict()[weight])


@pytest.mark.parametrize("build", [
    lambda flag: HFCausalLM.create(config=GPT2, gradient_checkpointing=flag),
    lambda flag: HFEncoder.create(config=BERT, gradient_checkpointing=flag),
], ids=["hf_causal_lm", "hf_encoder"])
def test_gradient_checkpointing_gives_the_same_gradients(build):
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = build(flag).train()
        for module in model.modules():  # dropout off: the two runs must see the same graph
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        assert model.model.is_activation_checkpointing is flag
        ids = torch.tensor([[1, 5, 7, 9, 3, 2]])
        out = model(ids)
        value = out["logits"] if "logits" in out else out["token_states"]
        value.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)
