"""hf_encoder (transformers AutoModel + pooling), text_sentences with a pretrained tokenizer
from a folder, embedding_cosine, and the meta dry run of BERT-family models. Offline: every
model and tokenizer is written to a temporary folder with save_pretrained first."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
from dgraph.components.metrics.embedding import EmbeddingCosine
from dgraph.components.models.hf import HFCausalLM
from dgraph.components.models.hf_encoder import HFEncoder, pool
from helpers import QUIET

from dgraph.api import train
from dgraph.errors import ComponentRuntimeError, ValidationError
from dgraph.registry import BuildContext

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "embed_kd.py"
BERT = {"model_type": "bert", "num_hidden_layers": 1, "hidden_size": 16,
        "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 50,
        "max_position_embeddings": 32}
FAST = ["train.steps=2", "train.eval.every=2", "train.checkpoint_every=2",
        "nodes.data.params.max_examples=8", "nodes.data.params.batch_size=4",
        "nodes.data.params.eval_fraction=0.01"]


def make_bert_folder(folder: Path, **kwargs) -> Path:
    spec = importlib.util.spec_from_file_location("embed_kd_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.make_bert_folder(folder, **kwargs)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    return make_bert_folder(tmp_path_factory.mktemp("bert") / "model", layers=1, hidden=16)


def test_pooling_follows_the_formulas():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(states, mask, "masked_mean").tolist() == [[2.0, 3.0]]  # (1+3)/2, (2+4)/2
    assert pool(states, mask, "mean").tolist() == [[3.0, 4.0]]         # over all 3 positions
    assert pool(states, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool(states, torch.zeros(1, 3), "masked_mean").tolist() == [[0.0, 0.0]]


def test_encoder_from_a_folder_equals_transformers_and_pools_real_tokens(bert_folder):
    from transformers import AutoModel, AutoTokenizer

    encoder = HFEncoder.create(path=str(bert_folder)).eval()
    assert encoder.folder == bert_folder
    tok = AutoTokenizer.from_pretrained(str(bert_folder), local_files_only=True)
    batch = tok(["to be or not to be", "the end"], padding=True, return_tensors="pt")
    reference = AutoModel.from_pretrained(str(bert_folder), local_files_only=True).eval()
    with torch.no_grad():
        out = encoder(batch["input_ids"], batch["attention_mask"])
        expected = reference(**batch).last_hidden_state
    torch.testing.assert_close(out["token_states"], expected)
    n = int(batch["attention_mask"][1].sum())  # the short sentence: n real tokens, then pads
    torch.testing.assert_close(out["sentence_embedding"][1], expected[1, :n].mean(dim=0))
    assert out["sentence_embedding"].shape == (2, 16)


def test_derive_from_copies_the_config_with_fewer_layers():
    teacher = HFEncoder.create(config={**BERT, "num_hidden_layers": 3})
    student = HFEncoder.create(BuildContext(node="student", references={
        "derive_from": teacher}), derive_from="teacher", num_layers=1)
    assert student.model.config.num_hidden_layers == 1
    assert student.model.config.vocab_size == 50 and student.model.config.hidden_size == 16
    assert len(student.model.encoder.layer) == 1


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_the_meta_dry_run_takes_a_mask_for_bert_family_models(model_type):
    """validate used to fail with "Tensor.item() cannot be called on meta tensors"."""
    config = dict(BERT, model_type=model_type)
    if model_type == "distilbert":
        config = {"model_type": "distilbert", "n_layers": 1, "dim": 16, "n_heads": 2,
                  "hidden_dim": 32, "vocab_size": 50, "max_position_embeddings": 32}
    ids = torch.zeros(2, 8, dtype=torch.long, device="meta")
    mask = torch.ones(2, 8, dtype=torch.bool, device="meta")
    with torch.device("meta"):
        encoder = HFEncoder.create(BuildContext(node="enc", device="meta"), config=config)
        out = encoder(ids, mask)
    assert out["sentence_embedding"].shape == (2, 16) and out["token_states"].shape == (2, 8, 16)
    if model_type == "bert":  # a BERT config through hf_causal_lm (BertLMHeadModel)
        with torch.device("meta"):
            lm = HFCausalLM.create(BuildContext(node="lm", device="meta"),
                                   config={**BERT, "is_decoder": True})
            assert lm(ids, mask)["logits"].shape == (2, 8, 50)


def test_embedding_cosine_is_the_mean_over_rows():
    metric = EmbeddingCosine.create()
    metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]))      # cos 1
    metric.update(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 3.0]]))      # cos 1/sqrt(2)
    assert metric.compute()["cosine"] == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    metric.reset()
    with pytest.raises(ValueError, match="saw no rows"):
        metric.compute()


def test_long_sentences_are_a_located_error_not_a_silent_cut(bert_folder, tmp_path):
    with pytest.raises(ValidationError) as info:
        train("embed_kd", out=tmp_path / "run", overrides=[
            *FAST, f"nodes.teacher.params.path={bert_folder}",
            "nodes.data.params.max_length=16"], **QUIET)
    text = str(info.value)
    assert "node 'data': params.max_length: line " in text
    assert "shakespeare.txt is " in text and "tokens with the tokenizer " + str(bert_folder) in text
    assert "longer than max_length 16" in text and "nothing is truncated silently" in text
    assert "or truncate: true to cut them" in text
    # The explicit opt-in cuts them.
    summary = train("embed_kd", out=tmp_path / "cut", overrides=[
        *FAST, f"nodes.teacher.params.path={bert_folder}", "nodes.data.params.max_length=16",
        "nodes.data.params.truncate=true"], **QUIET)
    assert -1.0 <= summary["embedding/cosine"] <= 1.0


def _tokenizer_without_pad(folder: Path, vocab_from: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = (vocab_from / "vocab.txt").read_text().split()
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                      eos_token="[SEP]")
    assert wrapped.pad_token is None
    wrapped.save_pretrained(str(folder))
    return folder


def test_a_tokenizer_without_pad_pads_with_its_eos_and_warns(bert_folder, tmp_path):
    folder = _tokenizer_without_pad(tmp_path / "tok", bert_folder)
    with pytest.warns(UserWarning) as record:
        summary = train("embed_kd", out=tmp_path / "run", overrides=[
            *FAST, f"nodes.teacher.params.path={bert_folder}",
            f"nodes.data.params.tokenizer_path={folder}"], **QUIET)
    messages = [str(w.message) for w in record]
    assert (f"node 'data': the tokenizer in {folder} has no pad token; padding with its "
            "eos_token '[SEP]' (id 3), masked out by attention_mask") in messages
    assert -1.0 <= summary["embedding/cosine"] <= 1.0


def test_an_unreadable_tokenizer_folder_names_the_node_and_the_folder(tmp_path, bert_folder):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{not json")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(ValidationError) as info:
        train("embed_kd", out=tmp_path / "run", overrides=[
            *FAST, f"nodes.teacher.params.path={bert_folder}",
            f"nodes.data.params.tokenizer_path={folder}"], **QUIET)
    text = str(info.value)
    assert f"node 'data': params.tokenizer_path: no tokenizer can be read from {folder}" \
        in text


def test_an_encoder_folder_without_weights_is_a_located_error(tmp_path):
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(BERT))
    with pytest.raises(ValidationError) as info:
        train("embed_kd", out=tmp_path / "run",
              overrides=[*FAST, f"nodes.teacher.params.path={folder}"], **QUIET)
    assert (f"node 'teacher': params.path: transformers cannot load the encoder in {folder}"
            in str(info.value))


def test_sequences_longer_than_the_positions_are_an_error_at_the_node(tmp_path, capsys):
    from dgraph.cli import main

    message = ("200 tokens per sequence, but the model has 128 positions "
               "(max_position_embeddings); lower the data's max_length to at most 128")
    assert main(["validate", "embed_kd", "--set", "nodes.data.params.max_length=200"]) == 1
    err = capsys.readouterr().err
    assert "error[dry-run-failed]: node 'student': the meta-device dry run failed" in err
    assert message in err
    with pytest.raises(ComponentRuntimeError,
                       match=r"while executing node 'student' .*" + re.escape(message)):
        train("embed_kd", out=tmp_path / "run", overrides=[
            *FAST, "nodes.data.params.max_length=200"], **QUIET)
