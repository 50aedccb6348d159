"""lora: peft adapters on a frozen copy of an HF model node. Only the adapters train, and the
merged model is the base with W + (alpha / r) B A written into its weights."""

from __future__ import annotations

import pytest
import torch
import yaml
from dgraph.components.models.hf_encoder import HFEncoder
from dgraph.components.models.lora import LoRA
from helpers import QUIET

from dgraph.graph import validate
from dgraph.registry import BuildContext
from dgraph.runtime.train import Trainer
from dgraph.spec import load_spec

BERT = {"model_type": "bert", "num_hidden_layers": 1, "hidden_size": 16,
        "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 258,
        "max_position_embeddings": 80, "pad_token_id": 0}


def _adapted(r: int = 2, alpha: float = 4.0):
    torch.manual_seed(0)
    base = HFEncoder.create(config=BERT).eval()
    lora = LoRA.create(BuildContext(node="student", references={"base": base}), base="base",
                       r=r, alpha=alpha).eval()
    return base, lora


def test_the_adapted_copy_starts_as_the_base_and_leaves_it_untouched():
    base, lora = _adapted()
    ids = torch.randint(2, 258, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(lora(input_ids=ids)["sentence_embedding"],
                                   base(input_ids=ids)["sentence_embedding"])  # B = 0 at the start
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert len(trainable) == 4  # A and B on query and value of the one layer
    assert all(p.requires_grad for p in base.parameters())  # the base node is not changed
    assert not any("lora" in n for n, _ in base.named_parameters())


def test_merged_equals_base_plus_scaled_low_rank_product():
    base, lora = _adapted(r=2, alpha=4.0)
    layer = lora.base.model.base_model.model.encoder.layer[0].attention.self.query
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    a = layer.lora_A["default"].weight          # [r, in]
    b = layer.lora_B["default"].weight          # [out, r]
    w = base.model.encoder.layer[0].attention.self.query.weight
    merged = lora.merged()
    expected = w + (4.0 / 2) * b @ a
    torch.testing.assert_close(merged.model.encoder.layer[0].attention.self.query.weight,
                               expected)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.randint(2, 258, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids)["sentence_embedding"],
                                   lora(input_ids=ids)["sentence_embedding"], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(merged(input_ids=ids)["sentence_embedding"],
                                  base(input_ids=ids)["sentence_embedding"])


SPEC = {
    "dgraph": 1, "name": "lora_test",
    "nodes": {
        "data": {"kind": "data", "type": "text_sentences",
                 "params": {"max_length": 72, "batch_size": 8, "max_examples": 32,
                            "eval_fraction": 0.01}},
        "base": {"kind": "teacher", "type": "hf_encoder", "params": {"config": BERT},
                 "inputs": {"input_ids": "data.input_ids",
                            "attention_mask": "data.attention_mask"}},
        "target": {"kind": "teacher", "type": "hf_encoder",
                   "params": {"config": {**BERT, "num_hidden_layers": 2}},
                   "inputs": {"input_ids": "data.input_ids",
                              "attention_mask": "data.attention_mask"}},
        "student": {"kind": "student", "type": "lora",
                    "params": {"base": "base", "r": 4, "alpha": 8},
                    "inputs": {"input_ids": "data.input_ids",
                               "attention_mask": "data.attention_mask"}},
        "cos": {"kind": "loss", "type": "cosine_feature",
                "inputs": {"student": "student.sentence_embedding",
                           "teacher": "target.sentence_embedding"}},
    },
    "updates": {"main": {"optimizer": {"type": "adamw", "lr": 0.01}, "params": ["student"],
                         "objective": {"cos": 1.0}}},
    "train": {"steps": 3, "seed": 0, "eval": {"every": 3}, "checkpoint_every": 3},
}


def test_training_changes_only_the_adapters(tmp_path):
    torch.set_num_threads(1)
    path = tmp_path / "lora_test.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    graph, _ = validate(load_spec(str(path)))
    (tmp_path / "run").mkdir()
    trainer = Trainer(graph, tmp_path / "run", **QUIET)
    student = trainer.instances.modules["student"]
    before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    trainer.run()
    after = student.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all("lora_A" in k or "lora_B" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # B left zero: the adapters took effect
    base = trainer.instances.modules["base"]
    torch.testing.assert_close(
        base.model.encoder.layer[0].attention.self.query.weight,
        student.base.model.base_model.model.encoder.layer[0].attention.self.query
        .base_layer.weight)

    # Exported to ONNX with the adapters merged: onnxruntime gives the adapted model's output.
    import onnx
    import onnxruntime as ort
    from dgraph.exporters.api import export_run

    from dgraph.api import train

    # The same spec trained by `dgraph train` (deterministic: the weights of `student`).
    train(path, out=tmp_path / "shipped", **QUIET)
    export_run(tmp_path / "shipped", tmp_path / "student.onnx")
    names = {i.name for i in onnx.load(str(tmp_path / "student.onnx")).graph.initializer}
    assert not any("lora" in n for n in names)
    session = ort.InferenceSession(str(tmp_path / "student.onnx"),
                                   providers=["CPUExecutionProvider"])
    ids = torch.randint(2, 258, (3, 72), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    values = {"input_ids": ids, "attention_mask": mask}
    feeds = {i.name: values[i.name].numpy().astype(bool if i.type == "tensor(bool)" else
                                                    "int64") for i in session.get_inputs()}
    (found,) = session.run(["sentence_embedding"], feeds)
    with torch.no_grad():
        expected = student.eval()(input_ids=ids, attention_mask=mask)["sentence_embedding"]
    torch.testing.assert_close(torch.from_numpy(found), expected, atol=1e-4, rtol=1e-4)


def test_a_base_that_is_not_an_hf_model_is_refused():
    from dgraph.errors import DgraphError

    with pytest.raises(DgraphError, match="node 'student': base must name a Hugging Face "
                       "model node"):
        LoRA.create(BuildContext(node="student", references={"base": torch.nn.Linear(2, 2)}),
                    base="base")


def test_built_for_export_the_adapters_are_merged_once_the_weights_load():
    base, lora = _adapted(r=2, alpha=4.0)
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                p.normal_()
    export = LoRA.create(BuildContext(node="student", weights=False,
                                      references={"base": base}), base="base", r=2, alpha=4.0)
    export.load_state_dict(lora.state_dict())
    assert not any("lora" in n for n, _ in export.named_parameters())
    ids = torch.randint(2, 258, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(export.eval()(input_ids=ids)["sentence_embedding"],
                                   lora(input_ids=ids)["sentence_embedding"], atol=1e-5,
                                   rtol=1e-5)
