"""Zoo spec embed_kd: sentence-embedding distillation, with the default teacher built from a
config (offline) and with a local BERT folder (weights + tokenizer, written with
save_pretrained) given through --set nodes.teacher.params.path=FOLDER."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from helpers import QUIET

from dgraph.api import train
from dgraph.graph import validate
from dgraph.spec import load_spec, zoo_names

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "embed_kd.py"
FEW = ["train.steps=4", "train.eval.every=4", "train.checkpoint_every=4",
       "nodes.data.params.eval_fraction=0.02", "nodes.data.params.max_examples=16",
       "nodes.data.params.batch_size=8"]


def _benchmark():
    spec = importlib.util.spec_from_file_location("embed_kd_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_embed_kd_is_in_the_zoo_and_trains_a_few_steps(tmp_path):
    assert "embed_kd" in zoo_names()
    summary = train("embed_kd", out=tmp_path / "run", overrides=FEW, **QUIET)
    assert set(summary) >= {"embedding/cosine", "loss/cos"}
    assert -1.0 <= summary["embedding/cosine"] <= 1.0
    # The reported loss is 1 - the mean cosine of the same held-out rows.
    assert summary["loss/cos"] == pytest.approx(1.0 - summary["embedding/cosine"], abs=1e-5)
    assert (tmp_path / "run" / "final" / "student.safetensors").is_file()


def test_embed_kd_runs_on_a_local_bert_folder_with_its_tokenizer(tmp_path):
    folder = _benchmark().make_bert_folder(tmp_path / "bert", layers=2, hidden=32)
    overrides = [*FEW, f"nodes.teacher.params.path={folder}"]
    graph, _ = validate(load_spec("embed_kd", overrides))
    assert graph.nodes["teacher"].spec.params["path"] == str(folder)
    summary = train("embed_kd", out=tmp_path / "run", overrides=overrides, **QUIET)
    assert -1.0 <= summary["embedding/cosine"] <= 1.0
    resolved = (tmp_path / "run" / "spec.resolved.yaml").read_text()
    assert str(folder) in resolved
    # The student copied the folder's config (its WordPiece vocabulary, width 32), 1 layer.
    from dgraph.runtime.checkpoint import load_weights

    weights = load_weights(tmp_path / "run" / "final" / "student.safetensors")
    vocab = len((folder / "vocab.txt").read_text().split())
    assert weights["model.embeddings.word_embeddings.weight"].shape == (vocab, 32)
    assert not any(".layer.1." in key for key in weights)


@pytest.mark.slow
def test_distilled_student_matches_the_teacher_better_than_without_it(tmp_path):
    result = _benchmark().run(tmp_path, 150, log=lambda _m: None)
    for label in ("config", "folder"):
        assert result[f"{label}_kd_cosine"] > 0.9
        assert result[f"{label}_kd_cosine"] > result[f"{label}_no_teacher_cosine"] + 0.1


def test_the_student_exports_and_is_checked_on_the_data_sources_sentences(tmp_path):
    from dgraph.exporters import export_run

    train("embed_kd", out=tmp_path / "run", overrides=["train.steps=2"], **QUIET)
    result = export_run(tmp_path / "run", tmp_path / "student.onnx", log=lambda _m: None)
    report = result.verification
    assert report is not None and report.passed
    # The data node reads its tokenizer through the teacher node it names: built for the check.
    assert report.skipped == []
    assert {case.inputs for case in report.cases} == {"random", "real"}
    assert {"sentence_embedding", "token_states"} <= set(report.cases[0].per_output)
