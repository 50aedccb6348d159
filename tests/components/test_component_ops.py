"""The declared ops and samplers: l2_normalize, gaussian_noise and lm_sampler's contract."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from dgraph.registry import BuildContext

CTX = BuildContext(node="test")


def test_l2_normalize_matches_hand_values(build):
    module = build("l2_normalize")
    y = module(x=torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]]))["y"]
    assert y.tolist() == [[0.6000000238418579, 0.800000011920929], [0.0, 0.0], [-1.0, 0.0]]


def test_gaussian_noise_is_std_times_standard_normal(build, make):
    assert make("gaussian_noise", dim=3).resolved_outputs({})["noise"].shape == "B, {dim}"
    module = build("gaussian_noise", dim=3, std=0.5)
    torch.manual_seed(7)
    noise = module(like=torch.zeros(4, 9, 9))["noise"]
    torch.manual_seed(7)
    assert torch.equal(noise, torch.randn(4, 3) * 0.5)


def test_lm_sampler_source_is_a_node_reference(make):
    sampler = make("lm_sampler", source="teacher")
    assert sampler.references() == {"source": "teacher"}
    with pytest.raises(ValidationError, match="should match pattern"):
        make("lm_sampler", source="teacher.logits")
    with pytest.raises(ValidationError) as info:
        make("lm_sampler", source="teacher", do_sample=False, top_k=5)
    assert info.value.errors()[0]["msg"] == (
        "Value error, top_k / top_p only apply when do_sample is true")


def test_lm_sampler_shapes_on_meta_and_pass_through(make):
    module = make("lm_sampler", source="teacher", max_new_tokens=5).build(
        BuildContext(node="s", references={"source": torch.nn.Identity()}))
    prompts = torch.empty(3, 4, dtype=torch.long, device="meta")
    out = module(prompt_ids=prompts)
    assert {k: (tuple(v.shape), v.dtype) for k, v in out.items()} == {
        "input_ids": ((3, 8), torch.long), "targets": ((3, 8), torch.long),
        "attention_mask": ((3, 8), torch.bool), "loss_mask": ((3, 8), torch.bool)}
    with pytest.raises(ValueError, match="on_policy < 1 needs the data's input_ids"):
        make("lm_sampler", source="teacher", on_policy=0.5).build(
            BuildContext(node="s", references={"source": torch.nn.Identity()}))(
            prompt_ids=torch.ones(1, 2, dtype=torch.long))


def test_sequences_from_generation_masks_prompt_and_after_eos():
    from dgraph.components.ops.lm_sampler import sequences_from_generation

    # Prompt [pad, 5] then generated 6, <eos>=1, 7: only 6 and <eos> are predicted targets.
    full = torch.tensor([[0, 5, 6, 1, 7]])
    out = sequences_from_generation(full, torch.tensor([[False, True]]), eos_token_id=1)
    assert out["input_ids"].tolist() == [[0, 5, 6, 1]]
    assert out["targets"].tolist() == [[5, 6, 1, 7]]
    assert out["attention_mask"].tolist() == [[False, True, True, True]]
    assert out["loss_mask"].tolist() == [[False, True, True, False]]
