"""Exports never lie: non-finite weights and outputs fail, a failed check writes nothing, the
weights hash and ``dgraph export --check`` catch later changes, broken runs and destinations
give located errors, and data paths resolve as ``dgraph train`` resolved them.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from dgraph.exporters import api, export_run, onnx_export, verify
from onnx import numpy_helper
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dgraph.api import train
from dgraph.cli import main

SPEC_HINT = ("hint: the run's spec.resolved.yaml was changed after training, or final/ holds "
             "weights of another run; export with the spec the run was trained with")


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("tb", "checkpoints"))
    return dest


def _rewrite_weights(path: Path, change) -> None:
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata=meta)


def _error(capsys) -> str:
    return _message(capsys.readouterr().err)


def _message(err: str) -> str:
    assert err.startswith("error: "), err
    return err[len("error: "):].rstrip("\n")


# -- the weights hash, recomputed here from its documented definition -------------------------

def _field(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def documented_hash(path: Path) -> str:
    model = onnx.load(str(path))
    items = [(f"initializer:{t.name}", t) for t in model.graph.initializer]
    items += [(f"constant:{n.output[0]}", a.t) for n in model.graph.node
              if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    digest = hashlib.sha256()
    for key, tensor in sorted(items, key=lambda item: item[0]):
        values = np.ascontiguousarray(numpy_helper.to_array(tensor)).astype(
            numpy_helper.to_array(tensor).dtype.newbyteorder("<"))
        digest.update(_field(key.encode()) + _field(str(tensor.data_type).encode())
                      + _field(",".join(str(d) for d in tensor.dims).encode())
                      + _field(values.tobytes()))
    return digest.hexdigest()


def _set_metadata(path: Path, **changes: str | None) -> None:
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            props.pop(key)
        else:
            props[key] = value
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def exported(mlp_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "mlp.onnx"
    export_run(mlp_run, out)
    return out


def test_weights_hash_follows_its_definition_and_run_dir_is_recorded(exported, mlp_run):
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert meta["dgraph.weights_sha256"] == documented_hash(exported)
    assert meta["dgraph.run_dir"] == str(mlp_run.resolve())


def test_check_verifies_a_file_against_its_recorded_run(exported, mlp_run, capsys):
    assert main(["export", "--check", str(exported)]) == 0
    line = capsys.readouterr().out
    sha = documented_hash(exported)
    pattern = (rf"verified {re.escape(str(exported))}: node 'student' \(mlp\), weights sha256 "
               rf"{sha[:16]} over 4 tensors, metadata ok, onnxruntime matches torch of run "
               rf"{re.escape(str(mlp_run.resolve()))} on 4 cases \(max abs diff \S+, "
               r"tolerance 0\.0001\)\n")
    assert re.fullmatch(pattern, line), line


def test_check_without_a_run_dir_says_parity_was_skipped(exported, tmp_path, capsys):
    copy = tmp_path / "shipped.onnx"
    shutil.copy(exported, copy)
    gone = tmp_path / "gone"
    _set_metadata(copy, dgraph__run_dir=str(gone))
    assert main(["export", "--check", str(copy)]) == 0
    sha = documented_hash(copy)
    assert capsys.readouterr().out == (
        f"verified {copy}: node 'student' (mlp), weights sha256 {sha[:16]} over 4 tensors, "
        f"metadata ok; parity not checked: the run directory recorded in the file ({gone}) "
        "no longer exists; pass --run RUN_DIR\n")


def test_check_finds_changed_weights(exported, tmp_path, capsys):
    copy = tmp_path / "tampered.onnx"
    model = onnx.load(str(exported))
    stored = {p.key: p.value for p in model.metadata_props}["dgraph.weights_sha256"]
    tensor = next(t for t in model.graph.initializer if t.name == "module.head.bias")
    values = numpy_helper.to_array(tensor).copy()
    values[0] += np.float32(1e-3)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, str(copy))
    assert main(["export", "--check", str(copy)]) == 1
    assert _error(capsys) == (
        f"{copy}: the weights do not match the hash stored at export: dgraph.weights_sha256 "
        f"is {stored}, the 4 tensors in the file hash to {documented_hash(copy)}. hint: the "
        "file was modified or damaged after export; export it again from its run directory")


def test_check_metadata_must_be_present_and_parse(exported, tmp_path, capsys):
    old = tmp_path / "old.onnx"
    shutil.copy(exported, old)
    _set_metadata(old, dgraph__weights_sha256=None)
    assert main(["export", "--check", str(old)]) == 1
    assert _error(capsys) == (
        f"{old}: the ONNX metadata lacks 'dgraph.weights_sha256'. hint: files exported before "
        "dgraph stored a weights hash, or not by `dgraph export`, cannot be re-verified; "
        "export it again from its run directory")
    bad = tmp_path / "bad.onnx"
    shutil.copy(exported, bad)
    _set_metadata(bad, dgraph__inputs="{x: 1")
    assert main(["export", "--check", str(bad)]) == 1
    assert _error(capsys) == (
        f"{bad}: metadata 'dgraph.inputs' is '{{x: 1'; expected a JSON object. hint: the file "
        "was not written by this version of `dgraph export`, or its metadata was edited; "
        "export it again from its run directory")


def test_check_refuses_external_data_outside_the_folder(exported, tmp_path, capsys):
    inner = tmp_path / "inner"
    inner.mkdir()
    model = onnx.load(str(exported))
    tensor = next(t for t in model.graph.initializer if t.name == "module.head.weight")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    tensor.ClearField("raw_data")
    path = inner / "escape.onnx"
    onnx.save(model, str(path))
    assert main(["export", "--check", str(path)]) == 1
    assert _error(capsys) == (
        f"{path}: tensor 'module.head.weight' keeps its data in '../secret.bin', outside the "
        f"file's folder {inner.resolve()}; dgraph reads external data only next to the file")


def test_check_against_a_run_with_other_weights_fails(exported, mlp_run, tmp_path, capsys):
    run = _copy_run(mlp_run, tmp_path / "retrained")

    def scale(state):
        state["head.weight"] *= 1.5

    _rewrite_weights(run / "final" / "student.safetensors", scale)
    assert main(["export", "--check", str(exported), "--run", str(run)]) == 1
    message = _error(capsys)
    pattern = (r"verification failed: the ONNX file differs from node 'student' of run "
               rf"{re.escape(str(run))} in torch on 4 of 4 cases, worst on output 'logits' with "
               r"(random|real) inputs \(B=\d\): max abs diff \S+, max rel diff \S+, above the "
               r"fp32 tolerance 0\.0001\. hint: the run's final weights changed after the "
               r"export \(retrained\?\), or the file comes from another run; pass --run with "
               r"the run directory it came from")
    assert re.fullmatch(pattern, message), message


def test_check_against_a_run_with_another_spec(exported, mlp_run, tmp_path, capsys):
    run = _copy_run(mlp_run, tmp_path / "edited")
    resolved = run / "spec.resolved.yaml"
    resolved.write_text(resolved.read_text() + "# edited\n")
    spec_sha = hashlib.sha256((mlp_run / "spec.resolved.yaml").read_bytes()).hexdigest()
    new_sha = hashlib.sha256(resolved.read_bytes()).hexdigest()
    assert main(["export", "--check", str(exported), "--run", str(run)]) == 1
    assert _error(capsys) == (
        f"{exported} was exported from a run whose spec.resolved.yaml has sha256 {spec_sha}, "
        f"but {resolved} has {new_sha}. hint: pass --run with the run directory the file was "
        "exported from")


def test_check_usage_errors(exported, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["export", "--check", str(exported), "-o", "x.onnx"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.endswith(
        "dgraph export: error: --check re-verifies an existing file and takes only --run and "
        "--provider, not -o\n")
    with pytest.raises(SystemExit):
        main(["export", "run"])
    assert capsys.readouterr().err.endswith(
        "dgraph export: error: export needs RUN_DIR and -o FILE.onnx (or --check FILE.onnx)\n")


# -- non-finite weights and outputs ------------------------------------------------------------

def test_nan_and_inf_weights_are_refused(mlp_run, tmp_path, capsys):
    run = _copy_run(mlp_run, tmp_path / "diverged")
    weights = run / "final" / "student.safetensors"

    def poison(state):
        state["body.0.weight"][0, :3] = float("nan")
        state["body.0.weight"][1, 0] = float("inf")
        state["head.bias"][2] = float("-inf")

    _rewrite_weights(weights, poison)
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "-o", str(out)]) == 1
    assert _error(capsys) == (
        f"cannot export node 'student': its final weights in {weights} are not finite: "
        "'body.0.weight' holds 3 NaN and 1 infinite values of 1536; 2 of 4 tensors hold "
        "non-finite values. hint: the run diverged; export an earlier run whose weights are "
        "finite, or retrain (a lower learning rate or clip_grad_norm on the update usually "
        "helps)")
    assert not out.exists()


def test_fp16_overflow_is_refused(mlp_run, tmp_path, capsys):
    run = _copy_run(mlp_run, tmp_path / "large")

    def enlarge(state):
        state["body.0.weight"][0, 0] = 1e5  # finite in fp32, inf in fp16

    _rewrite_weights(run / "final" / "student.safetensors", enlarge)
    out = tmp_path / "m16.onnx"
    assert main(["export", str(run), "-o", str(out), "--fp16"]) == 1
    assert _error(capsys) == (
        "cannot export node 'student' (student 'mlp'): the exported fp16 weights are not "
        "finite: 'module.body.0.weight' holds 1 NaN or infinite values of 1536 (float16 holds "
        f"magnitudes up to 65504; export in fp32). {out} was not written (a file already "
        "there is unchanged)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large"]


def test_difference_of_non_finite_outputs():
    inf, nan = math.inf, math.nan
    torch_side = torch.tensor([[-inf, 1.0, 2.0], [3.0, inf, -4.0]])
    same = np.array([[-inf, 1.5, 2.0], [3.0, inf, -4.0]], dtype=np.float32)
    assert verify._difference(same, torch_side) == (0.5, 0.5 / 4.0, None)
    one_side = np.array([[-inf, 1.0, 2.0], [3.0, 5.0, -4.0]], dtype=np.float32)
    assert verify._difference(one_side, torch_side) == (
        math.inf, math.inf, "1 of 6 values are infinite on one side only or with opposite "
        "signs (torch: 2 infinite, onnxruntime: 1)")
    flipped = np.array([[inf, 1.0, 2.0], [3.0, inf, -4.0]], dtype=np.float32)
    assert verify._difference(flipped, torch_side)[2] == (
        "1 of 6 values are infinite on one side only or with opposite signs (torch: 2 "
        "infinite, onnxruntime: 2)")
    both_nan = np.array([[nan, 1.0, 2.0], [3.0, 4.0, 5.0]], dtype=np.float32)
    assert verify._difference(both_nan, torch.from_numpy(both_nan.copy())) == (
        math.inf, math.inf, "NaN in 1 torch and 1 onnxruntime values of 6")


class _NaNLogits(nn.Module):
    """The exported graph computes NaN logits; the torch reference does not."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **ports):
        out = dict(self.inner(**ports))
        out["logits"] = torch.sqrt(-1.0 - out["logits"] ** 2)  # NaN everywhere
        return out


def test_nan_output_fails_and_keeps_the_previous_file(mlp_run, tmp_path, monkeypatch, capsys):
    real_export = onnx_export.export_module

    def export_nan(wrapper, args, path, **kwargs):
        poisoned = onnx_export.PortModule(_NaNLogits(wrapper.module), wrapper.input_names,
                                          wrapper.output_names)
        return real_export(poisoned, args, path, **kwargs)

    monkeypatch.setattr(onnx_export, "export_module", export_nan)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous, good model")
    assert main(["export", str(mlp_run), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "FAIL (logits: NaN in 0 torch and 10 onnxruntime values of 10)" in captured.out
    assert _message(captured.err) == (
        "verification failed: the ONNX file differs from the torch model on 4 of 4 cases, "
        "worst on output 'logits' with random inputs (B=1): NaN in 0 torch and 10 onnxruntime "
        "values of 10. hint: an output holding NaN is never verified (NaN equals nothing); "
        f"find why the model computes NaN on these inputs. {out} was not written (a file "
        "already there is unchanged); --no-check writes the unverified file for inspection")
    assert out.read_bytes() == b"the previous, good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no staging left


def test_failed_export_writes_nothing(mlp_run, tmp_path, monkeypatch, capsys):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("pretend no exporter can trace this model")

    monkeypatch.setattr(onnx_export, "_export_dynamo", refuse)
    monkeypatch.setattr(onnx_export, "_export_torchscript", refuse)
    assert main(["export", str(mlp_run), "-o", str(tmp_path / "m.onnx")]) == 1
    assert _error(capsys) == (
        "cannot export node 'student' (student 'mlp'). The current exporter failed with: "
        "RuntimeError: pretend no exporter can trace this model; the TorchScript fallback "
        "failed with: RuntimeError: pretend no exporter can trace this model")
    assert list(tmp_path.iterdir()) == []


def test_verified_export_replaces_the_previous_file(mlp_run, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    export_run(mlp_run, out)
    assert onnx.load(str(out)).graph.input[0].name == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_external_data_moves_with_the_file(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")])
    model = onnx.helper.make_model(graph)
    onnx.save(model, str(staging / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    (staging / "stale.data").write_bytes(b"left by a failed exporter")
    out = tmp_path / "m.onnx"
    api._publish(staging / "m.onnx", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "staging"]
    assert sorted(p.name for p in staging.iterdir()) == ["stale.data"]
    loaded = onnx.load(str(out))
    assert numpy_helper.to_array(loaded.graph.initializer[0]).tolist() == [0, 1, 2, 3]


# -- broken runs -----------------------------------------------------------------------------

def test_weights_that_do_not_fit_the_spec(mlp_run, tmp_path, capsys):
    run = _copy_run(mlp_run, tmp_path / "edited")
    resolved = run / "spec.resolved.yaml"
    text = resolved.read_text()
    assert "    - 24\n" in text
    resolved.write_text(text.replace("    - 24\n", "    - 32\n"))
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row == "    params:"
                and "in_features" in text.splitlines()[i])
    assert main(["export", str(run), "-o", str(tmp_path / "m.onnx")]) == 1
    assert _error(capsys) == (
        f"the weights in {run / 'final' / 'student.safetensors'} do not fit node 'student' "
        f"('mlp') as the run's spec describes it ({resolved}:{line}:5): tensor "
        "'body.0.weight' has shape [24, 64] in the file, the spec's architecture expects "
        f"[32, 64] (3 of 4 tensors differ). {SPEC_HINT}")


def test_truncated_weights_file(mlp_run, tmp_path, capsys):
    run = _copy_run(mlp_run, tmp_path / "truncated")
    weights = run / "final" / "student.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert main(["export", str(run), "-o", str(tmp_path / "m.onnx")]) == 1
    assert _error(capsys) == (
        f"cannot read the final weights of node 'student' from {weights}: SafetensorError: "
        "Error while deserializing header: incomplete metadata, file not fully covered. The "
        "file is truncated or is not a safetensors file (an interrupted copy or a full disk); "
        "copy it again from where the run was trained, or retrain the run")


def test_run_without_final_folder(mlp_run, tmp_path, capsys):
    run = tmp_path / "unfinished"
    run.mkdir()
    shutil.copy(mlp_run / "spec.resolved.yaml", run)
    assert main(["export", str(run), "-o", str(tmp_path / "m.onnx")]) == 1
    assert _error(capsys) == (
        f"run {run} has no final weights (no final/ folder): training did not finish. Finish "
        f"it with `dgraph train {run / 'spec.resolved.yaml'} --out {run} --resume`")


# -- destinations ------------------------------------------------------------------------------

def test_destination_errors(mlp_run, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["export", str(mlp_run), "-o", str(folder)]) == 1
    assert _error(capsys) == (f"-o {folder} is a directory; name the .onnx file to write, "
                              f"e.g. -o {folder / 'model.onnx'}")
    missing = tmp_path / "nowhere" / "m.onnx"
    assert main(["export", str(mlp_run), "-o", str(missing)]) == 1
    assert _error(capsys) == (
        f"-o {missing}: the folder {missing.parent} does not exist; create it first "
        f"(mkdir -p {missing.parent}) or choose another path")
    assert not missing.parent.exists()
    link = tmp_path / "link.onnx"
    link.symlink_to(folder / "target.onnx")
    assert main(["export", str(mlp_run), "-o", str(link)]) == 1
    assert _error(capsys) == (
        f"-o {link} is a symbolic link; dgraph replaces the file at -o as a whole and would "
        f"replace the link itself: pass the path it points to ({folder / 'target.onnx'}) or "
        "another path")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_destination(mlp_run, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "m.onnx").write_bytes(b"kept")
    folder.chmod(0o555)
    try:
        assert main(["export", str(mlp_run), "-o", str(folder / "m.onnx")]) == 1
    finally:
        folder.chmod(0o755)
    assert _error(capsys) == (
        f"-o {folder / 'm.onnx'}: the folder {folder} is not writable (no permission, or a "
        "read-only file system); choose -o in a writable folder")
    assert (folder / "m.onnx").read_bytes() == b"kept"


# -- data paths resolve as in train -----------------------------------------------------------

TENSOR_SPEC = """
dgraph: 1
name: tensor_mlp
nodes:
  data:
    kind: data
    type: tensor_file
    params:
      path: examples.safetensors
      batch_size: 8
      keys:
        x: {key: x, type: Features, shape: "B, 16"}
        y: {key: y, type: Labels, shape: "B"}
  student:
    kind: student
    type: mlp
    params: {in_features: 16, hidden: [8], num_classes: 3}
    inputs: {x: data.x}
  ce:
    kind: loss
    type: cross_entropy
    inputs: {logits: student.logits, target: data.y}
updates:
  main:
    optimizer: {type: adam, lr: 0.01}
    params: [student]
    objective: {ce: 1.0}
train: {steps: 2, device: cpu, log_every: 1}
"""


def test_data_paths_resolve_against_the_trained_spec_folder(tmp_path, monkeypatch):
    spec_dir = tmp_path / "project" / "specs"
    spec_dir.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    examples = {"x": torch.randn(12, 16, generator=generator),
                "y": torch.randint(0, 3, (12,), generator=generator)}
    save_file(examples, str(spec_dir / "examples.safetensors"))
    (spec_dir / "mlp.yaml").write_text(TENSOR_SPEC)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the spec's folder nor the run's
    run = tmp_path / "runs" / "tensor_mlp"
    train(spec_dir / "mlp.yaml", out=run, progress=False, log=lambda _m: None)
    with safe_open(str(run / "final" / "student.safetensors"), framework="pt") as handle:
        assert handle.metadata()["spec_dir"] == str(spec_dir.resolve())

    result = export_run(run, elsewhere / "m.onnx")
    assert {c.inputs for c in result.verification.cases} == {"random", "real"}

    # Moved away: the copies in the run dir and its parent (where export used to look) are
    # not read; the check runs on random inputs and says which file was missing.
    (spec_dir / "examples.safetensors").rename(tmp_path / "moved.safetensors")
    for decoy in (run / "examples.safetensors", run.parent / "examples.safetensors"):
        save_file({"x": torch.zeros(12, 16), "y": torch.zeros(12, dtype=torch.int64)},
                  str(decoy))
    result = export_run(run, elsewhere / "m.onnx")
    assert {c.inputs for c in result.verification.cases} == {"random"}
    (skipped,) = result.verification.skipped  # the wording of the missing file is tensor_file's
    assert skipped.startswith("real inputs: data node 'data' cannot be loaded: ")
    assert str(spec_dir.resolve() / "examples.safetensors") in skipped
    assert str(run) not in skipped
