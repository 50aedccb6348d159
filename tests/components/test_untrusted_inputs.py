"""What a spec names outside itself cannot run code, escape where the user pointed, or end
in a traceback: model folders with custom code, spec-relative paths, parameter bounds and
tensor files, each a located error with the full message asserted.

Model folders are real ``save_pretrained`` output plus an ``auto_map`` and a Python file that
would create a marker file if transformers ever imported it; stdin answers "y" to any prompt,
so a prompt that slipped through would run the code and the marker would exist.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dgraph.cli import main
from dgraph.errors import ValidationError
from dgraph.registry import COMPONENTS, BuildContext, load_plugins

load_plugins()

TINY = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 258,
        "n_positions": 32, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}

REMOTE_HINT = (
    "    hint: dgraph never runs code from model folders (trust_remote_code is always off): "
    "use a model type that transformers ships (remove 'auto_map' if the folder's model_type "
    "is one), or register a dgraph component plug-in for this architecture\n")

LM_SPEC = """\
dgraph: 1
nodes:
  data:
    kind: data
    type: text_lm
    params: {{seq_len: 8, prompt_len: 2, batch_size: 2, max_examples: 4}}
  teacher:
    kind: teacher
    type: hf_causal_lm
    params: {{{teacher}}}
    inputs: {{input_ids: data.input_ids}}
  student:
    kind: student
    type: hf_causal_lm
    params:
      config: {{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, vocab_size: 258,
               n_positions: 32, bos_token_id: 1, eos_token_id: 1}}
    inputs: {{input_ids: data.input_ids}}
  kd:
    kind: loss
    type: token_kl
    inputs: {{student: student.logits, teacher: teacher.logits, mask: data.loss_mask}}
updates:
  main: {{optimizer: {{type: adamw, lr: 0.001}}, params: [student], objective: {{kd: 1.0}}}}
train: {{steps: 1}}
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what fixtures printed (save_pretrained's progress bar)
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _stdin_says_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any [y/N] prompt reads 'y' (and would run the folder's code)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))


def _remote_code_folder(folder: Path, marker: Path, *, in_tokenizer: bool = False) -> Path:
    """A real GPT-2 folder from save_pretrained whose config names custom code."""
    from transformers import AutoConfig, GPT2LMHeadModel

    torch.manual_seed(0)
    settings = dict(TINY)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    (folder / "modeling_x.py").write_text(
        f"open({str(marker)!r}, 'w').write('the folder code ran')\n"
        "from transformers import GPT2Config, GPT2LMHeadModel\n"
        "class XConfig(GPT2Config):\n    model_type = 'x_custom'\n"
        "class XModel(GPT2LMHeadModel):\n    config_class = XConfig\n")
    auto_map = {"AutoConfig": "modeling_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"}
    if in_tokenizer:
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}))
    else:
        data = json.loads((folder / "config.json").read_text())
        data.update(model_type="x_custom", auto_map=auto_map)
        (folder / "config.json").write_text(json.dumps(data))
    return folder


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """(spec file whose teacher is a custom-code folder 'model', marker file)."""
    marker = tmp_path / "MARKER"
    _remote_code_folder(tmp_path / "model", marker)
    spec = tmp_path / "spec.yaml"
    spec.write_text(LM_SPEC.format(teacher="path: model"))
    return spec, marker


def _remote_message(spec: Path, folder: Path, *, line: int = 10, column: int = 20,
                    param: str = "path", holder: str = "config.json",
                    files: str = "modeling_x.py", node: str = "teacher") -> str:
    return (
        f"{spec}:{line}:{column}: error[remote-code]: node '{node}': params.{param}: the "
        f"model folder {folder} names custom code, which dgraph never runs\n"
        "    expected: a folder written by save_pretrained (config.json and weights) for a "
        "model type that transformers ships\n"
        f"    found:    'auto_map' in {holder} naming custom code in {files}\n"
        + REMOTE_HINT)


# -- model folders with custom code ----------------------------------------------------------
def test_validate_refuses_a_custom_code_folder_without_asking(remote, capsys):
    spec, marker = remote
    code, out, err = run_cli(capsys, "validate", str(spec))
    assert (code, out) == (1, "")
    assert err == _remote_message(spec, spec.parent / "model") + \
        "1 error: the spec is not valid\n"
    assert not marker.exists()


def test_validate_json_reports_the_custom_code_folder(remote, capsys):
    spec, marker = remote
    code, out, _ = run_cli(capsys, "validate", "--json", str(spec))
    assert code == 1
    (problem,) = json.loads(out)["problems"]
    assert (problem["code"], problem["node"], problem["location"]) == (
        "remote-code", "teacher", {"file": str(spec), "line": 10, "column": 20})
    assert not marker.exists()


def test_train_refuses_a_custom_code_folder(remote, capsys, tmp_path):
    spec, marker = remote
    code, _, err = run_cli(capsys, "train", str(spec), "--out", str(tmp_path / "run"))
    assert code == 1
    assert err.endswith(_remote_message(spec, spec.parent / "model")
                        + "1 error: the spec is not valid\n")
    assert not marker.exists()


def test_derive_from_and_tokenizer_folders_are_checked_too(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    _remote_code_folder(tmp_path / "model", marker, in_tokenizer=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(LM_SPEC.format(teacher="derive_from: model, num_layers: 1"))
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert code == 1
    assert err == _remote_message(
        spec, tmp_path / "model", param="derive_from", column=27,
        holder="tokenizer_config.json", files="tokenization_x.py"
    ) + "1 error: the spec is not valid\n"
    text = LM_SPEC.format(teacher="config: {model_type: gpt2, n_layer: 1, n_embd: 16, "
                          "n_head: 2, vocab_size: 258, n_positions: 32, bos_token_id: 1, "
                          "eos_token_id: 1}")
    spec.write_text(text.replace("max_examples: 4}", "max_examples: 4, tokenizer: "
                                 "{kind: file, path: model, vocab_size: 258}}"))
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert err == (
        f"{spec}:6:103: error[remote-code]: node 'data': params.tokenizer.path: the model "
        f"folder {tmp_path / 'model'} names custom code, which dgraph never runs\n"
        "    expected: a tokenizer folder whose tokenizer_config.json names no custom code\n"
        "    found:    'auto_map' in tokenizer_config.json naming custom code in "
        "tokenization_x.py\n" + REMOTE_HINT + "1 error: the spec is not valid\n")
    assert not marker.exists()


def test_transformers_is_never_asked_to_trust_code(tmp_path):
    """Below dgraph's own check: every transformers call says trust_remote_code=False, so
    the folder is refused by transformers itself, without a prompt (stdin says 'y')."""
    from dgraph.components.models.hf import load_causal_lm

    marker = tmp_path / "MARKER"
    folder = _remote_code_folder(tmp_path / "model", marker)
    for load_weights in (True, False):
        with pytest.raises(ValueError, match="contains custom code which must be executed"):
            load_causal_lm(path=folder, config=None, load_weights=load_weights)
    assert not marker.exists()


def test_config_dicts_naming_custom_code_are_invalid(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(LM_SPEC.format(
        teacher="config: {model_type: gpt2, vocab_size: 258, "
        "auto_map: {AutoModelForCausalLM: evil--modeling_e.E}}"))
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert code == 1
    assert err == (
        f"{spec}:10:14: error[bad-param]: node 'teacher': parameter 'config' of "
        "'hf_causal_lm': config.auto_map names custom code (modeling_e.py), which dgraph "
        "never runs: use a model_type that transformers ships, or register a dgraph "
        "component plug-in\n"
        "    expected: config.auto_map names custom code (modeling_e.py), which dgraph never "
        "runs: use a model_type that transformers ships, or register a dgraph component "
        "plug-in\n"
        "    found:    {'model_type': 'gpt2', 'vocab_size': 258, 'auto_map': {'A...\n"
        "    hint: `dgraph list teacher` shows the parameters of 'hf_causal_lm' and their "
        "defaults\n"
        "1 error: the spec is not valid\n")


def test_a_model_folder_without_config_is_a_located_error(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"")
    spec = tmp_path / "spec.yaml"
    spec.write_text(LM_SPEC.format(teacher="path: model"))
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert code == 1
    assert err == (
        f"{spec}:10:20: error[missing-file]: node 'teacher': params.path: "
        f"{tmp_path / 'model'} holds no config.json\n"
        "    expected: a folder written by save_pretrained (config.json and weights)\n"
        "    found:    a folder without config.json (it holds weights.bin)\n"
        "    hint: point it at the folder save_pretrained wrote; models are never downloaded\n"
        "1 error: the spec is not valid\n")


# -- paths named in specs --------------------------------------------------------------------
TENSOR_SPEC = """\
dgraph: 1
nodes:
  data:
    kind: data
    type: tensor_file
    params:
      path: {path}
      batch_size: 2
      keys:
        x: {{key: images, type: Features, shape: "B, 4"}}
        y: {{key: labels, type: Labels}}
  student:
    kind: student
    type: mlp
    params: {{in_features: 4, num_classes: 3, hidden: [8]}}
    inputs: {{x: data.x}}
  ce:
    kind: loss
    type: cross_entropy
    inputs: {{logits: student.logits, target: data.y}}
updates:
  main: {{optimizer: {{type: adam, lr: 0.01}}, params: [student], objective: {{ce: 1.0}}}}
train: {{steps: 1}}
"""


def _tensors(path: Path, **override: torch.Tensor) -> Path:
    tensors = {"images": torch.rand(6, 4), "labels": torch.tensor([0, 1, 2, 0, 1, 2])}
    save_file({**tensors, **override}, str(path))
    return path


def test_relative_paths_mean_the_spec_folder_never_the_working_directory(
        tmp_path, monkeypatch, capsys):
    specs, cwd = tmp_path / "specs", tmp_path / "cwd"
    specs.mkdir()
    cwd.mkdir()
    _tensors(cwd / "train.safetensors")  # only where the spec does not point
    monkeypatch.chdir(cwd)
    spec = specs / "spec.yaml"
    spec.write_text(TENSOR_SPEC.format(path="train.safetensors"))
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert code == 1
    assert err == (
        f"{spec}:7:13: error[missing-file]: node 'data': params.path: 'train.safetensors' "
        "does not exist\n"
        "    expected: a tensor file (.pt, .pth, .npy, .npz or .safetensors)\n"
        f"    found:    nothing at {specs / 'train.safetensors'}\n"
        f"    hint: relative paths are relative to the spec's folder ({specs}); give an "
        "absolute path for a file elsewhere\n"
        "1 error: the spec is not valid\n")
    _tensors(specs / "train.safetensors")
    assert run_cli(capsys, "validate", str(spec))[0] == 0


def test_files_of_the_wrong_kind_are_located(tmp_path, capsys):
    (tmp_path / "data.safetensors").mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(TENSOR_SPEC.format(path="data.safetensors"))
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert code == 1
    assert err == (
        f"{spec}:7:13: error[bad-file]: node 'data': params.path: 'data.safetensors' is not "
        "a file\n"
        "    expected: a tensor file (.pt, .pth, .npy, .npz or .safetensors)\n"
        f"    found:    {tmp_path / 'data.safetensors'} is a folder\n"
        "    hint: point params.path at a tensor file (.pt, .pth, .npy, .npz or "
        ".safetensors)\n"
        "1 error: the spec is not valid\n")
    # A device is never read (reading /dev/zero would not end).
    text = LM_SPEC.format(teacher="path: model").replace(
        "max_examples: 4}", "max_examples: 4, path: /dev/zero}")
    spec.write_text(text)
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert err == (
        f"{spec}:6:79: error[bad-file]: node 'data': params.path: '/dev/zero' is not a file\n"
        "    expected: a UTF-8 text file\n"
        "    found:    /dev/zero is neither a regular file nor a folder (a device, pipe or "
        "socket)\n"
        "    hint: point params.path at a UTF-8 text file\n"
        "1 error: the spec is not valid\n")


def test_tokenizer_save_to_stays_inside_the_run_directory(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(LM_SPEC.format(teacher="path: model").replace(
        "max_examples: 4}", "max_examples: 4, tokenizer: {save_to: ../../tok}}"))
    code, _, err = run_cli(capsys, "validate", "--static", str(spec))
    assert code == 1
    assert err == (
        f"{spec}:6:94: error[bad-param]: node 'data': parameter 'tokenizer.save_to' of "
        "'text_lm': save_to '../../tok' leaves the run directory; components write only "
        "inside it: give a relative folder without '..'\n"
        "    expected: save_to '../../tok' leaves the run directory; components write only "
        "inside it: give a relative folder without '..'\n"
        "    found:    '../../tok'\n"
        "    hint: `dgraph list data` shows the parameters of 'text_lm' and their defaults\n"
        "1 error: the spec is not valid\n")
    text_lm = COMPONENTS.get("text_lm")
    source = text_lm(text_lm.Params(seq_len=8, prompt_len=2, max_examples=2,
                                    tokenizer={"save_to": "tok"}), "data")
    source.build(BuildContext(node="data", spec_dir=tmp_path))  # no run directory
    assert not (tmp_path / "tok").exists()
    source.build(BuildContext(node="data", spec_dir=tmp_path, run_dir=tmp_path / "r"))
    assert (tmp_path / "r" / "tok" / "tokenizer.json").is_file()


def test_a_missing_topk_cache_is_never_written_outside_the_run(tmp_path):
    from dgraph.components.data.topk_cache import cache_path

    cache = COMPONENTS.get("lm_topk_cache")
    node = cache(cache.Params(path="cache/c.safetensors", text={"seq_len": 8, "prompt_len": 2}),
                 "data")
    run = BuildContext(node="data", spec_dir=tmp_path / "spec", run_dir=tmp_path / "run")
    assert cache_path("cache/c.safetensors", run) == tmp_path / "run" / "cache" / "c.safetensors"
    with pytest.raises(ValidationError) as info:
        node.build(run)
    assert str(info.value) == (
        "1 problem found in the spec:\n"
        "error[missing-file]: node 'data': params.path: "
        f"{tmp_path / 'run' / 'cache' / 'c.safetensors'} does not exist\n"
        "    expected: a top-k cache (.safetensors) written by write_topk_cache\n"
        "    found:    'cache/c.safetensors': no such file\n"
        "    hint: relative paths are relative to the spec's folder; write the cache with "
        "dgraph.components.data.topk_cache.write_topk_cache, or give the node a 'teacher' to "
        "write it on the first run")
    (tmp_path / "spec" / "cache").mkdir(parents=True)
    shared = _tensors(tmp_path / "spec" / "cache" / "c.safetensors")
    # A file the user put there is read, not written.
    assert cache_path("cache/c.safetensors", run) == shared


# -- tensor files ----------------------------------------------------------------------------
class _Evil:
    """Unpickling this calls os.mkdir(marker): proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _write_case(case: str, folder: Path, marker: Path) -> str:
    """Write the file of one broken-tensor-file case; return its name."""
    if case == "not_safetensors":
        (folder / "data.safetensors").write_text("hello, not a tensor file at all")
        return "data.safetensors"
    if case == "truncated":
        _tensors(folder / "data.safetensors")
        data = (folder / "data.safetensors").read_bytes()
        (folder / "data.safetensors").write_bytes(data[:-20])
        return "data.safetensors"
    if case == "wrong_key":
        save_file({"images": torch.rand(6, 4), "label": torch.zeros(6, dtype=torch.long)},
                  str(folder / "data.safetensors"))
        return "data.safetensors"
    if case == "wrong_dtype":
        _tensors(folder / "data.safetensors", labels=torch.zeros(6))
        return "data.safetensors"
    if case == "wrong_shape":
        _tensors(folder / "data.safetensors", images=torch.rand(6, 5))
        return "data.safetensors"
    if case == "wrong_lengths":
        _tensors(folder / "data.safetensors", images=torch.rand(5, 4))
        return "data.safetensors"
    if case == "pickle_in_torch_save":
        torch.save({"images": _Evil(marker), "labels": torch.zeros(6, dtype=torch.long)},
                   folder / "data.pt")
        return "data.pt"
    if case == "plain_pickle":
        with (folder / "data.pt").open("wb") as fp:
            pickle.dump({"images": _Evil(marker)}, fp, protocol=2)
        return "data.pt"
    if case == "text_as_torch":
        (folder / "data.pt").write_text("images,labels\n0.1,2\n")
        return "data.pt"
    if case == "object_npz":
        np.savez(folder / "data.npz", images=np.array([{"a": 1}] * 6, dtype=object),
                 labels=np.zeros(6, np.int64))
        return "data.npz"
    raise AssertionError(case)


PICKLE_HINT = ("    hint: save plain tensors: safetensors.torch.save_file({name: tensor}, path), "
               "or torch.save of a dict of tensors; dgraph never unpickles other objects\n")
TENSOR_CASES = {
    "not_safetensors": (
        "7:13", "bad-tensor-file", "path", "{file} is not a safetensors file",
        "a safetensors file, as written by safetensors.torch.save_file({name: tensor}, path)",
        "text starting with 'hello, not a ten'",
        "    hint: write it with safetensors.torch.save_file({name: tensor}, path), or give "
        "the file the suffix of its format\n"),
    "truncated": (
        "7:13", "bad-tensor-file", "path", "{file} cannot be read as a safetensors file",
        "a safetensors file, as written by safetensors.torch.save_file({name: tensor}, path)",
        "SafetensorError: Error while deserializing header: incomplete metadata, file not "
        "fully covered",
        "    hint: the file may be truncated or corrupt: write it again\n"),
    "wrong_key": (
        "11:18", "bad-tensor-file", "keys.y.key", "{file} holds no tensor named 'labels'",
        "a tensor named 'labels'", "the file holds 'images', 'label'",
        "    hint: did you mean 'label'? set the key to a tensor name of the file\n"),
    "wrong_dtype": (
        "11:32", "bad-tensor-file", "keys.y.type",
        "{file}: tensor 'labels' (port 'y', Labels) does not hold integers",
        "integer values (Labels are indices)", "dtype float32",
        "    hint: store the tensor as int64, or give the port another type\n"),
    "wrong_shape": (
        "10:49", "bad-tensor-file", "keys.x.shape",
        "{file}: tensor 'images' (port 'x', Features) does not have the declared shape",
        "shape [B, 4]", "shape [6, 5]", "    hint: fix the declared shape, or the file\n"),
    "wrong_lengths": (
        "9:7", "bad-tensor-file", "keys", "{file}: the tensors have different lengths",
        "the same first dimension (number of examples) in every tensor",
        "x ('images'): 5, y ('labels'): 6",
        "    hint: every tensor's first dimension must index the same examples\n"),
    "pickle_in_torch_save": (
        "7:13", "pickle-refused", "path",
        "{file} holds pickled Python objects, which dgraph never loads",
        "tensors only: a dict of tensors (read with torch.load(weights_only=True)), or a "
        ".safetensors file", "a pickle that calls posix.mkdir", PICKLE_HINT),
    "plain_pickle": (
        "7:13", "pickle-refused", "path",
        "{file} holds pickled Python objects, which dgraph never loads",
        "tensors only: a dict of tensors (read with torch.load(weights_only=True)), or a "
        ".safetensors file", "a pickle that calls posix.mkdir", PICKLE_HINT),
    "text_as_torch": (
        "7:13", "bad-tensor-file", "path", "{file} is not a torch.save file",
        "a torch.save file, as written by torch.save({name: tensor, ...}, path)",
        "text starting with 'images,labels\\n0.'",
        "    hint: write it with torch.save({name: tensor, ...}, path), or give the file the "
        "suffix of its format\n"),
    "object_npz": (
        "10:18", "pickle-refused", "keys.x.key",
        "{file}: array 'images' holds pickled Python objects, which dgraph never loads",
        "an array of numbers or booleans",
        "an array of dtype object (Python objects, stored as a pickle)", PICKLE_HINT),
}


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_tensor_file_errors_are_located(case, command, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    name = _write_case(case, tmp_path, marker)
    spec = tmp_path / "spec.yaml"
    spec.write_text(TENSOR_SPEC.format(path=name))
    where, code, param, message, expected, found, hint = TENSOR_CASES[case]
    extra = ["--out", str(tmp_path / "run")] if command == "train" else []
    status, _, err = run_cli(capsys, command, str(spec), *extra)
    assert status == 1
    assert err.endswith(
        f"{spec}:{where}: error[{code}]: node 'data': params.{param}: "
        + message.replace("{file}", str(tmp_path / name)) + "\n"
        + f"    expected: {expected}\n    found:    {found}\n" + hint
        + "1 error: the spec is not valid\n")
    assert not marker.exists()


# -- parameter bounds ------------------------------------------------------------------------
DIGITS_SPEC = """\
dgraph: 1
nodes:
  data: {{kind: data, type: digits}}
  student:
    kind: student
    type: {type}
    params: {params}
    inputs: {{x: data.x}}
  ce:
    kind: loss
    type: cross_entropy
    inputs: {{logits: student.logits, target: data.y}}
updates:
  main: {{optimizer: {{type: adam, lr: 0.01}}, params: [student], objective: {{ce: 1.0}}}}
"""

BOUND_CASES = {
    "{in_features: 64, num_classes: 10, hidden: [32, -3]}": (
        "7:61", "hidden.1", "Input should be greater than 0", "greater than 0", "-3"),
    "{in_features: 64, num_classes: 10, activation: rleu}": (
        "7:60", "activation", "unknown activation 'rleu'; did you mean 'relu'? (one of: relu, "
        "gelu, tanh, silu)", None, "'rleu'"),
    "{in_features: 64, num_classes: 10, dropout: 1.0}": (
        "7:57", "dropout", "Input should be less than 1", "less than 1", "1.0"),
    "{in_features: 0, num_classes: 10}": (
        "7:27", "in_features", "Input should be greater than 0", "greater than 0", "0"),
}


@pytest.mark.parametrize("params", sorted(BOUND_CASES))
def test_out_of_range_parameters_are_located(params, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(DIGITS_SPEC.format(type="mlp", params=params))
    where, name, message, expected, found = BOUND_CASES[params]
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert code == 1
    assert err == (
        f"{spec}:{where}: error[bad-param]: node 'student': parameter '{name}' of 'mlp': "
        f"{message}\n    expected: {expected or message}\n    found:    {found}\n"
        "    hint: `dgraph list student` shows the parameters of 'mlp' and their defaults\n"
        "1 error: the spec is not valid\n")


@pytest.mark.parametrize(("type_name", "params", "field"), [
    ("learnable_tensor", {"shape": [2], "mean": float("nan")}, "mean"),
    ("gaussian_noise", {"dim": 2, "std": float("inf")}, "std"),
    ("toy2d", {"radius": float("inf")}, "radius"),
    ("lm_sampler", {"source": "teacher", "temperature": float("inf")}, "temperature"),
])
def test_non_finite_numbers_are_refused(make, type_name, params, field):
    from pydantic import ValidationError as PydanticError

    with pytest.raises(PydanticError) as info:
        make(type_name, **params)
    (error,) = info.value.errors()
    assert (error["loc"], error["msg"]) == ((field,), "Input should be a finite number")
