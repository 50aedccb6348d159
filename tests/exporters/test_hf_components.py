"""The ``hf_causal_lm`` and ``unet2d`` components: declarations, building, dry run, weights."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from dgraph.compiler.dryrun import dry_run
from dgraph.graph import validate
from dgraph.ports import parse_shape
from dgraph.registry import COMPONENTS, BuildContext, load_plugins
from dgraph.spec import load_spec

load_plugins()


def make(type_name: str, **params):
    cls = COMPONENTS.get(type_name)
    return cls(cls.Params.model_validate(params), node="test")


def test_hf_params_need_exactly_one_source(gpt2_config):
    with pytest.raises(ValidationError, match="exactly one"):
        make("hf_causal_lm")
    with pytest.raises(ValidationError, match="exactly one"):
        make("hf_causal_lm", path="x", config=gpt2_config)
    with pytest.raises(ValidationError, match="model_type"):
        make("hf_causal_lm", config={"n_layer": 2})


def test_hf_logits_shape_from_config_or_config_json(tmp_path, gpt2_config):
    comp = make("hf_causal_lm", config=gpt2_config)
    dims = parse_shape(comp.outputs["logits"].shape, comp.port_params())
    assert [str(d) for d in dims] == ["B", "T", "100"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 77}))
    comp = make("hf_causal_lm", path=str(tmp_path))
    assert comp.port_params()["vocab_size"] == 77
    assert make("hf_causal_lm", path=str(tmp_path / "none")).port_params()["vocab_size"] is None


def test_hf_from_pretrained_and_tied_weights_save(tmp_path, lm_files, gpt2_config):
    spec_path = lm_files(tmp_path)
    comp = make("hf_causal_lm", path="pretrained")
    module = comp.build(BuildContext(node="lm", spec_dir=spec_path.parent)).eval()
    ids = torch.randint(0, 100, (2, 6))
    out = module(input_ids=ids, attention_mask=torch.ones(2, 6, dtype=torch.bool))
    assert out["logits"].shape == (2, 6, 100)
    state = module.state_dict()
    save_file(state, str(tmp_path / "w.safetensors"))  # tied embedding/head: no shared memory
    again = make("hf_causal_lm", config=gpt2_config).build(BuildContext(node="lm")).eval()
    again.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    torch.testing.assert_close(again(input_ids=ids)["logits"], module(input_ids=ids)["logits"])
    assert again.model.lm_head.weight is again.model.transformer.wte.weight  # still tied


def test_hf_passes_the_meta_dry_run(tmp_path, lm_files):
    spec_path = lm_files(tmp_path)
    text = spec_path.read_text().replace(
        "inputs: {input_ids: data.input_ids, attention_mask: data.attention_mask}\n"
        "  student:", "inputs: {input_ids: data.input_ids}\n  student:")
    spec_path.write_text(text)  # the teacher without a mask, the student with one
    graph, _ = validate(load_spec(spec_path))
    dry_run(graph)
    assert graph.shapes[("student", "logits")] == graph.shapes[("teacher", "logits")]
    assert tuple(d.size for d in graph.shapes[("student", "logits")]) == (8, 16, 100)


def test_unet_params_and_ports(unet_config):
    with pytest.raises(ValidationError, match="sample_size"):
        make("unet2d", config={"in_channels": 3})
    comp = make("unet2d", config={**unet_config, "in_channels": 1})
    params = comp.port_params()
    assert (params["in_channels"], params["out_channels"], params["sample_size"]) == (1, 1, 16)
    module = comp.build(BuildContext(node="unet"))
    out = module(sample=torch.randn(2, 1, 16, 16), timestep=torch.tensor([1, 500]))
    assert out["noise_pred"].shape == (2, 1, 16, 16)
    assert "model.down_blocks.0" in dict(module.named_modules())
