"""text_lm / jsonl_pairs with a saved tokenizer of its own conventions (a GPT-2-style one: no
pad token, <|endoftext|> as its end): the tokenizer's own ids are used, padding falls back to
the end token with a warning, and nothing is cut silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dgraph.errors import ValidationError
from dgraph.registry import COMPONENTS, BuildContext, load_plugins

load_plugins()

PAIRS = [{"prompt": "ab", "response": "cd"}, {"prompt": "abc", "response": "abcd"}]


def make(type_name: str, **params):
    cls = COMPONENTS.get(type_name)
    return cls(cls.Params.model_validate(params), node="data")


def _tokenizer_folder(folder: Path, *, config: dict | None) -> Path:
    """A word-level tokenizer whose vocabulary puts the special tokens at the end, saved as
    tokenizers writes it (tokenizer.json), with an optional tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate("abcd")}
    vocab.update({"<|endoftext|>": 4, "<unk>": 5})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _pairs_file(folder: Path) -> Path:
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def test_a_tokenizer_without_pad_pads_with_its_end_token_and_says_so(tmp_path):
    folder = _tokenizer_folder(tmp_path / "tok", config={"eos_token": "<|endoftext|>"})
    comp = make("jsonl_pairs", path=str(_pairs_file(tmp_path)), max_len=8, max_prompt_len=4,
                eval_fraction=0.0, batch_size=1,
                tokenizer={"kind": "file", "path": str(folder), "vocab_size": 6})
    with pytest.warns(UserWarning) as caught:
        source = comp.build(BuildContext(node="data", run_dir=tmp_path))
    assert str(caught[0].message) == (
        f"node 'data': the tokenizer in {folder} has no pad token; its end token (id 4) pads "
        "sequences (padding is masked out of every loss)")
    assert source.info["pad_token_id"] == 4 and source.info["eos_token_id"] == 4
    train = source.train
    # "ab" + "cd" + <|endoftext|>: inputs a b c d, targets b c d <eos>, then padding (4)
    assert train["input_ids"][0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert train["targets"][0].tolist() == [1, 2, 3, 4, 4, 4, 4, 4]
    assert train["loss_mask"][0].tolist() == [False, True, True, True] + [False] * 4
    assert train["prompt_ids"][0].tolist() == [4, 4, 0, 1]  # left-padded


def test_the_spec_can_name_the_special_tokens(tmp_path):
    folder = _tokenizer_folder(tmp_path / "tok", config=None)
    comp = make("jsonl_pairs", path=str(_pairs_file(tmp_path)), max_len=8, max_prompt_len=4,
                eval_fraction=0.0, batch_size=1,
                tokenizer={"kind": "file", "path": str(folder), "vocab_size": 6,
                           "pad_token": "<unk>"})
    source = comp.build(BuildContext(node="data", run_dir=tmp_path))
    # the end token found by its usual name, the pad token as the spec says
    assert (source.info["pad_token_id"], source.info["eos_token_id"]) == (5, 4)
    assert source.train["input_ids"][0, -1].item() == 5


def test_a_special_token_the_tokenizer_lacks_is_a_located_error(tmp_path):
    folder = _tokenizer_folder(tmp_path / "tok", config={"eos_token": "</s>"})
    comp = make("text_lm", path=str(_pairs_file(tmp_path)), seq_len=4, prompt_len=2,
                tokenizer={"kind": "file", "path": str(folder), "vocab_size": 6})
    with pytest.raises(ValidationError) as info:
        comp.build(BuildContext(node="data", run_dir=tmp_path))
    (problem,) = info.value.problems
    assert problem.message == "params.tokenizer.eos_token: the tokenizer has no token '</s>'"
    assert problem.found == "'</s>' (named by tokenizer_config.json)"
    assert problem.suggestion == "set tokenizer.eos_token to one of its special tokens"


def test_byte_and_bpe_tokenizers_take_no_special_token_names():
    with pytest.raises(Exception) as info:
        make("text_lm", tokenizer={"kind": "byte", "eos_token": "</s>"})
    assert ("pad_token and eos_token choose among a saved tokenizer's tokens (kind: file); "
            "the byte tokenizer's are <pad> (id 0) and <eos> (id 1)") in str(info.value)


def test_pairs_that_do_not_fit_are_an_error_naming_the_line_unless_truncate(tmp_path):
    path = _pairs_file(tmp_path)
    common = {"path": str(path), "max_len": 6, "max_prompt_len": 2, "eval_fraction": 0.0,
              "batch_size": 1}
    with pytest.raises(ValidationError) as info:
        make("jsonl_pairs", **common).build(BuildContext(node="data", run_dir=tmp_path))
    (problem,) = info.value.problems
    assert (problem.location.file, problem.location.line) == (str(path), 2)
    assert problem.message == (f"params.max_len: 1 of 2 pairs in {path} do not fit without "
                               "cutting (the first: line 2)")
    assert problem.expected == ("prompt <= max_prompt_len (2) tokens and prompt + response + "
                                "<eos> <= max_len + 1 (7) tokens")
    assert problem.found == "line 2: a prompt of 3 tokens, 8 in all"
    assert problem.suggestion == ("raise max_len to 7 and max_prompt_len to 3, or set "
                                  "truncate: true to cut them (the prompt keeps its end, the "
                                  "response its start)")
    source = make("jsonl_pairs", **common, truncate=True).build(
        BuildContext(node="data", run_dir=tmp_path))
    from dgraph.components.data.text import EOS_ID, byte_tokenizer

    # "bc" (the prompt's end) + "abcd" + <eos>: 7 tokens, max_len + 1, so nothing more is cut
    full = byte_tokenizer().encode("bcabcd", add_special_tokens=False).ids + [EOS_ID]
    assert source.train["input_ids"][1].tolist() == full[:-1]
    assert source.train["targets"][1].tolist() == full[1:]
    assert torch.equal(source.train["prompt_ids"][1], torch.tensor(full[:2]))
