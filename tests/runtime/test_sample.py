"""Samples as pictures: the grid and scatter drawn pixel by pixel, TensorBoard pictures at each
evaluation, and ``dgraph sample`` on a real diffusion run (seeded, located errors)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dgraph.cli import main
from dgraph.errors import DgraphError
from dgraph.runtime.pictures import image_grid, sample_picture, scatter

STEPS = ["--set", "train.steps=20", "--set", "train.eval.every=10",
         "--set", "nodes.samples.params.num_samples=64",
         "--set", "nodes.samples.params.steps=[1, 4]"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("sample") / "teacher"
    assert main(["train", "diffusion_teacher_toy", "--out", str(run), "--quiet", *STEPS]) == 0
    return run


def test_grid_places_each_row_and_maps_zero_one_to_black_white():
    images = torch.tensor([[[0.0, 1.0]], [[0.5, 0.25]], [[1.0, 0.0]]])  # three 1x2 images
    picture, low, high = image_grid(images, [[0, 2], [1]], scale=1)
    pixels = np.asarray(picture)
    assert (low, high) == (0.0, 1.0) and picture.mode == "L"
    # pad 1 around each 1x2 tile: rows at y 1 and 3, tiles at x 1..2 and 4..5, grey elsewhere
    expected = np.full((5, 7), 64, dtype=np.uint8)
    expected[1, 1:3] = [0, 255]
    expected[1, 4:6] = [255, 0]
    expected[3, 1:3] = [128, 64]  # round(0.5 * 255), round(0.25 * 255)
    assert np.array_equal(pixels, expected)


def test_grid_keeps_out_of_range_values_visible():
    images = torch.tensor([[[-1.0, 3.0]]])
    picture, low, high = image_grid(images, [[0]], scale=1)
    assert (low, high) == (-1.0, 3.0)
    assert np.asarray(picture)[1, 1:3].tolist() == [0, 255]


def test_scatter_puts_points_where_the_frame_says():
    points = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    picture = scatter(points, size=101)
    pixels = np.asarray(picture)
    # frame: centre 0, half-width 1.05, so +-1 lands 1/1.05 of the way to each edge; y is up
    offset = round((1 - 1 / 1.05) / 2 * 100)
    blue = np.array([31, 119, 180])
    assert (pixels[100 - offset, offset] == blue).all()  # (-1, -1): bottom left
    assert (pixels[offset, 100 - offset] == blue).all()  # (1, 1): top right
    assert (pixels[50, 50] == 255).all()


def test_samples_of_other_shapes_are_refused():
    with pytest.raises(DgraphError) as caught:
        sample_picture(torch.zeros(4, 3))
    assert str(caught.value) == (
        "cannot draw samples of shape [4, 3]: a picture is made of 2-D points [N, 2] or "
        "images [N, H, W] / [N, C, H, W] with C of 1 or 3")


def test_class_labels_give_one_row_per_class():
    images = torch.zeros(6, 1, 2, 2)
    picture = sample_picture(images, labels=torch.tensor([0, 1, 2, 0, 1, 2]), scale=1)
    assert picture.size == (2 * 3 + 1, 3 * 3 + 1)  # two per row, three rows


def test_evaluations_write_sample_pictures_to_tensorboard(toy_run):
    events = EventAccumulator(str(toy_run / "tb"), size_guidance={"images": 0})
    events.Reload()
    for steps in (1, 4):
        pictures = events.Images(f"samples/samples@{steps}")
        assert [p.step for p in pictures] == [10, 20]
        assert (pictures[0].width, pictures[0].height) == (384, 384)


def test_dgraph_sample_writes_a_seeded_picture(toy_run, tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["sample", str(toy_run), "--steps", "4", "-o", str(out), "-n", "200"]) == 0
    assert capsys.readouterr().out == f"wrote {out} (200 samples at 4 steps)\n"
    again = tmp_path / "b.png"
    other = tmp_path / "c.png"
    assert main(["sample", str(toy_run), "--steps", "4", "-o", str(again), "-n", "200"]) == 0
    assert main(["sample", str(toy_run), "--steps", "4", "-o", str(other), "-n", "200",
                 "--seed", "1"]) == 0
    assert out.read_bytes() == again.read_bytes()
    assert out.read_bytes() != other.read_bytes()
    picture = Image.open(io.BytesIO(out.read_bytes()))
    assert picture.size == (384, 384) and picture.mode == "RGB"
    blue = (np.asarray(picture) == [31, 119, 180]).all(-1).sum()
    assert blue > 200  # 200 dots of a few pixels each


@pytest.mark.parametrize("case", ["not_png", "no_run", "no_final", "no_sampler", "node"])
def test_sample_errors_say_what_and_where(case, toy_run, tmp_path, capsys):
    out, run = str(tmp_path / "x.png"), str(toy_run)
    if case == "not_png":
        out = str(tmp_path / "x.jpg")
        expected = f"-o {out}: samples are written as a PNG picture; name a file ending in .png"
    elif case == "no_run":
        run = str(tmp_path)
        expected = (f"{tmp_path} is not a dgraph run directory: it has no spec.resolved.yaml "
                    "(written by `dgraph train`)")
    elif case == "no_final":
        copy = tmp_path / "unfinished"
        copy.mkdir()
        (copy / "spec.resolved.yaml").write_bytes((toy_run / "spec.resolved.yaml").read_bytes())
        run = str(copy)
        expected = (f"{copy} has no final weights (final/*.safetensors): the run has not "
                    f"finished; finish it with `dgraph train SPEC --out {copy} --resume`")
    elif case == "no_sampler":
        other = tmp_path / "teacher"
        assert main(["train", "teacher_digits", "--out", str(other), "--quiet",
                     "--set", "train.steps=2"]) == 0
        run = str(other)
        expected = (f"spec 'teacher_digits' of {other} has no node that draws samples "
                    "(metrics: none); add a 'diffusion_samples' metric to sample a diffusion "
                    "model")
    else:
        expected = ("node 'teacher' of spec 'diffusion_teacher_toy' does not draw samples; "
                    "sampling nodes: samples")
    extra = ["--node", "teacher"] if case == "node" else []
    capsys.readouterr()
    assert main(["sample", run, "--steps", "1", "-o", out, *extra]) == 1
    assert capsys.readouterr().err == f"error: {expected}\n"
