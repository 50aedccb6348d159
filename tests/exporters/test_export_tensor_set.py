"""``dgraph export RUN`` on a tensor node: a learned set written as safetensors plus a PNG grid.

One real short ``dd_dm`` run (2 images per class, a few steps, a tiny evaluation) is exported;
the file must hold exactly the final learned images and their classes, the PNG one row per
class, and every failure must leave the files at ``-o`` as they were.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy
import pytest
import torch
from dgraph.exporters.tensor_set import export_tensor_set, is_tensor_node, read_tensor_set
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dgraph.api import train
from dgraph.cli import main
from dgraph.errors import ExportError

IPC = 2
_EVAL = '{"mlp": {"hidden": [16]}}'


@pytest.fixture(scope="module")
def dm_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dd_dm") / "run"
    overrides = [f"nodes.syn.params.images_per_class={IPC}", "train.steps=4",
                 "train.eval.every=4", "train.checkpoint_every=4", "train.log_every=2"]
    for node in ("synthetic", "random_real"):
        overrides += [f"nodes.{node}.params.models={_EVAL}", f"nodes.{node}.params.seeds=[0]",
                      f"nodes.{node}.params.steps=5"]
    train("dd_dm", out=out, overrides=overrides, progress=False, log=lambda _m: None)
    return out


def test_export_writes_the_final_images_labels_metadata_and_a_png_grid(dm_run, tmp_path):
    final = load_file(str(dm_run / "final" / "syn.safetensors"))
    lines: list[str] = []
    out = tmp_path / "syn.safetensors"
    result = export_tensor_set(dm_run, out, log=lines.append)

    tensors, meta = read_tensor_set(out)
    assert sorted(tensors) == ["images", "labels"]
    assert torch.equal(tensors["images"], final["images"])  # bit for bit the learned set
    assert tensors["images"].dtype == torch.float32
    assert torch.equal(tensors["labels"], torch.arange(10).repeat_interleave(IPC))
    assert tensors["labels"].dtype == torch.int64
    assert {k: meta[k] for k in ("format", "spec", "node", "type", "images_per_class",
                                 "num_classes", "shapes", "png")} == {
        "format": "dgraph-tensor-set", "spec": "dd_dm", "node": "syn",
        "type": "synthetic_digits", "images_per_class": "2", "num_classes": "10",
        "shapes": '{"images": [20, 1, 8, 8], "labels": [20]}', "png": "syn.png"}
    assert meta["run"] == str(dm_run.resolve())
    assert result.tensors == {"images": (20, 1, 8, 8), "labels": (20,)}
    assert lines == [f"wrote {out} (images [20, 1, 8, 8], labels [20]; 2 images per class) "
                     f"and {tmp_path / 'syn.png'} (67x331, one row per class)"]

    # The grid: 10 rows (classes) x 2 columns of 8x8 images at 4x, 1-pixel gaps:
    # width 2 * (32 + 1) + 1 = 67, height 10 * (32 + 1) + 1 = 331.
    picture = Image.open(tmp_path / "syn.png")
    assert picture.size == (67, 331) and picture.mode == "L"
    pixels = torch.from_numpy(numpy.array(picture)).float()
    assert pixels.shape == (331, 67)
    images = final["images"]
    low, high = min(0.0, float(images.min())), max(1.0, float(images.max()))
    assert picture.info["value_range"] == f"black = {low:g}, white = {high:g}"
    for k in range(20):  # image k is class k // 2, column k % 2; each 4x4 block one pixel
        row, column = k // IPC, k % IPC
        tile = pixels[1 + row * 33:1 + row * 33 + 32, 1 + column * 33:1 + column * 33 + 32]
        expected = ((images[k, 0] - low) / (high - low) * 255).round().clamp(0, 255)
        assert torch.equal(tile[::4, ::4], expected), k
        assert torch.equal(tile, expected.repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert pixels.std() > 20  # not blank: digits on a dark background


def test_the_cli_routes_a_tensor_node_to_the_set_exporter(dm_run, tmp_path, capsys):
    assert is_tensor_node(dm_run) and is_tensor_node(dm_run, "syn")
    assert not is_tensor_node(dm_run, "embed") and not is_tensor_node(tmp_path)
    out = tmp_path / "set.safetensors"
    assert main(["export", str(dm_run), "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (images [20, 1, 8, 8]")
    assert (tmp_path / "set.png").is_file()
    with pytest.raises(SystemExit):
        main(["export", str(dm_run), "-o", str(out), "--fp16", "--opset", "17"])
    assert ("error: a tensor node is exported as safetensors and a PNG grid; --opset, --fp16 "
            "apply to ONNX export only") in capsys.readouterr().err


def test_bad_destinations_are_refused_before_anything_is_written(dm_run, tmp_path):
    with pytest.raises(ExportError, match=re.escape(
            f"-o {tmp_path / 'syn.onnx'}: a tensor node is exported as safetensors (plus a "
            f"PNG grid beside it); name the file with the .safetensors suffix, e.g. -o "
            f"{tmp_path / 'syn.safetensors'}")):
        export_tensor_set(dm_run, tmp_path / "syn.onnx")
    missing = tmp_path / "no" / "syn.safetensors"
    with pytest.raises(ExportError, match=re.escape(
            f"-o {missing}: the folder {missing.parent} does not exist; create it first "
            f"(mkdir -p {missing.parent}) or choose another path")):
        export_tensor_set(dm_run, missing)
    (tmp_path / "syn.png").mkdir()
    with pytest.raises(ExportError, match=re.escape(
            f"{tmp_path / 'syn.png'} is a directory; choose another -o")):
        export_tensor_set(dm_run, tmp_path / "syn.safetensors")
    with pytest.raises(ExportError, match=re.escape(
            "node 'embed' is a model ('random_convnet'), not a tensor node: a learned set is "
            "exported from a tensor node; export a model to ONNX with -o FILE.onnx")):
        export_tensor_set(dm_run, tmp_path / "e.safetensors", node="embed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn.png"]  # no staging left over


def test_non_finite_images_are_refused_and_the_previous_files_stay(dm_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(dm_run, run)
    out = tmp_path / "syn.safetensors"
    export_tensor_set(run, out)
    before = out.read_bytes(), (tmp_path / "syn.png").read_bytes()
    path = run / "final" / "syn.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    state["images"][3, 0, 2, 2] = float("nan")
    state["images"][5, 0, 0, 0] = float("inf")
    save_file(state, str(path), metadata=meta)
    with pytest.raises(ExportError, match=re.escape(
            f"cannot export node 'syn': its final weights in {path} are not finite: 'images' "
            "holds 1 NaN and 1 infinite values of 1280")):
        export_tensor_set(run, out)
    assert (out.read_bytes(), (tmp_path / "syn.png").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "syn.png", "syn.safetensors"]


def test_a_file_that_is_not_a_tensor_set_is_named(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ExportError, match=re.escape(
            f"{path} is not a tensor set written by dgraph export (its metadata has format "
            "'pt', expected 'dgraph-tensor-set')")):
        read_tensor_set(path)


def test_soft_labels_the_evaluation_trains_on_are_exported_computed_from_the_final_state(
        tmp_path):
    # dd_sre2l with its relabel (the frozen teacher's softmax(z / 4) on the recovered images)
    # fed to the evaluator: the export computes them from the run as the evaluation did.
    quiet = {"progress": False, "log": lambda _m: None}
    train("teacher_digits_cnn", out=tmp_path / "teacher_digits_cnn",
          overrides=["train.steps=5", "train.eval.every=5"], **quiet)
    run = tmp_path / "dd_sre2l"
    overrides = ["nodes.syn.params.images_per_class=1", "train.steps=2", "train.eval.every=2",
                 "nodes.synthetic.inputs.soft_labels=relabel.y"]
    for node in ("synthetic", "random_real"):
        overrides += [f"nodes.{node}.params.models={_EVAL}", f"nodes.{node}.params.seeds=[0]",
                      f"nodes.{node}.params.steps=2"]
    train("dd_sre2l", out=run, overrides=overrides, **quiet)
    lines: list[str] = []
    export_tensor_set(run, tmp_path / "set.safetensors", log=lines.append)
    tensors, meta = read_tensor_set(tmp_path / "set.safetensors")
    assert sorted(tensors) == ["images", "labels", "soft_labels"]
    assert meta["soft_labels_from"] == "relabel.y (Probs)"
    assert lines[0].startswith(f"wrote {tmp_path / 'set.safetensors'} (images [10, 1, 8, 8], "
                               "labels [10], soft_labels [10, 10]; 1 images per class)")
    # By hand: the teacher of the squeezed run, in eval mode, on the final images.
    from dgraph.registry import COMPONENTS, BuildContext

    cnn = COMPONENTS.get("cnn")
    teacher = cnn(cnn.Params(in_channels=1, channels=[32, 64, 128], num_classes=10,
                             image_size=8), "t").build(BuildContext("t"))
    teacher.load_state_dict(load_file(str(tmp_path / "teacher_digits_cnn" / "final" /
                                          "teacher.safetensors")))
    teacher.eval()
    images = load_file(str(run / "final" / "syn.safetensors"))["images"]
    with torch.no_grad():
        expected = torch.softmax(teacher(images)["logits"] / 4.0, -1)
    assert torch.allclose(tensors["soft_labels"], expected, atol=1e-6)
    assert torch.allclose(tensors["soft_labels"].sum(1), torch.ones(10), atol=1e-6)
