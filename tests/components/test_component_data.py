"""Data components: the bundled digits set (split, labels, masks) and tensor files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from dgraph.data import DataSource
from dgraph.errors import ValidationError as DgraphValidationError
from dgraph.ports import parse_shape

# -- digits ---------------------------------------------------------------------------------


def test_digits_sizes_ranges_and_ports(build, make):
    source = build("digits")
    assert isinstance(source, DataSource)
    assert set(source.train) == set(source.eval) == {"x", "y", "labelled"}
    assert len(source) == 1437 and source.eval["x"].shape[0] == 360
    assert len(source) + source.eval["x"].shape[0] == 1797
    x = source.train["x"]
    assert x.shape == (1437, 64) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert source.train["y"].dtype == torch.int64
    assert set(source.train["y"].tolist()) == set(range(10))
    assert source.train["labelled"].dtype == torch.bool and bool(source.train["labelled"].all())
    assert bool(source.eval["labelled"].all())
    assert source.label_names == [str(i) for i in range(10)]
    assert (source.batch_size, source.shuffle) == (64, True)

    ports = make("digits").resolved_outputs({})
    assert (ports["x"].type, ports["x"].shape) == ("Features", "B, 64")
    assert (ports["y"].type, ports["labelled"].type) == ("Labels", "Mask")
    images = make("digits", flatten=False).resolved_outputs({})["x"]
    assert (images.type, images.shape) == ("Images", "B, 1, 8, 8")


def test_digits_stratified_split_sizes(build):
    source = build("digits", test_fraction=0.25)
    train_counts = np.bincount(source.train["y"].numpy(), minlength=10)
    eval_counts = np.bincount(source.eval["y"].numpy(), minlength=10)
    total = train_counts + eval_counts
    assert total.sum() == 1797 and eval_counts.sum() == 450  # ceil(0.25 * 1797)
    # Every class is held out in proportion to its size (within rounding).
    assert np.all(np.abs(eval_counts - 0.25 * total) <= 1)


def test_digits_images_equal_flat_features(build):
    flat = build("digits")
    images = build("digits", flatten=False)
    assert images.train["x"].shape == (1437, 1, 8, 8)
    assert torch.equal(images.train["x"].reshape(1437, 64), flat.train["x"])
    assert torch.equal(images.train["y"], flat.train["y"])


def test_digits_split_seed_is_deterministic(build):
    a, b, c = build("digits"), build("digits"), build("digits", split_seed=1)
    assert torch.equal(a.train["x"], b.train["x"]) and torch.equal(a.eval["y"], b.eval["y"])
    assert not torch.equal(a.train["y"], c.train["y"])


def test_digits_low_label_mask(build):
    source = build("digits", labelled=50, split_seed=3)
    mask, y = source.train["labelled"], source.train["y"]
    assert int(mask.sum()) == 50
    assert bool((y[~mask] == -1).all()) and bool((y[mask] >= 0).all())
    per_class = np.bincount(y[mask].numpy(), minlength=10)
    assert per_class.sum() == 50 and per_class.min() >= 4 and per_class.max() <= 6
    assert bool(source.eval["labelled"].all()) and bool((source.eval["y"] >= 0).all())
    # The images and the split do not depend on how many labels are kept.
    full = build("digits", split_seed=3)
    assert torch.equal(full.train["x"], source.train["x"])
    assert torch.equal(full.train["y"][mask], y[mask])
    again = build("digits", labelled=50, split_seed=3)
    assert torch.equal(again.train["labelled"], mask)
    assert int(build("digits", labelled=0).train["labelled"].sum()) == 0
    assert int(build("digits", labelled=7).train["labelled"].sum()) == 7


def test_digits_feeds_cross_entropy_with_mask(build):
    source = build("digits", labelled=20)
    logits = torch.zeros(len(source), 10)
    ce = build("cross_entropy")
    loss = ce(logits=logits, target=source.train["y"], mask=source.train["labelled"])["loss"]
    assert loss.item() == pytest.approx(np.log(10), rel=1e-6)


def test_digits_rejects_bad_params(make):
    with pytest.raises(ValidationError, match="exceeds the 1437 training examples"):
        make("digits", labelled=1438)
    with pytest.raises(ValidationError):
        make("digits", test_fraction=1.0)
    with pytest.raises(ValidationError):
        make("digits", batchsize=32)


@pytest.mark.parametrize("flatten", [True, False])
def test_digits_meta_matches_real(build, flatten):
    real = build("digits", flatten=flatten, labelled=30)
    meta = build("digits", flatten=flatten, labelled=30, device="meta")
    for split in ("train", "eval"):
        for name, tensor in getattr(real, split).items():
            other = getattr(meta, split)[name]
            assert other.is_meta
            assert (other.shape, other.dtype) == (tensor.shape, tensor.dtype)


# -- tensor_file ----------------------------------------------------------------------------

KEYS = {"x": {"key": "images", "type": "Images"}, "y": {"key": "labels", "type": "Labels"}}


def _arrays(n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"images": rng.normal(size=(n, 1, 4, 4)), "labels": rng.integers(0, 3, size=n,
                                                                            dtype=np.int32)}


def _write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    suffix = path.suffix
    if suffix == ".pt":
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    elif suffix == ".npz":
        np.savez(path, **arrays)
    elif suffix == ".safetensors":
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
                  str(path))
    else:
        raise AssertionError(suffix)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".safetensors"])
def test_tensor_file_round_trip(build, tmp_path, suffix):
    train, held_out = _arrays(10, 0), _arrays(4, 1)
    _write(tmp_path / f"train{suffix}", train)
    _write(tmp_path / f"eval{suffix}", held_out)
    source = build("tensor_file", spec_dir=tmp_path, path=f"train{suffix}",
                   eval_path=str(tmp_path / f"eval{suffix}"), keys=KEYS, batch_size=5,
                   label_names=["a", "b", "c"])
    assert set(source.train) == {"x", "y"} and len(source) == 10
    assert source.train["x"].dtype == torch.float32  # float64 cast to float32
    assert torch.allclose(source.train["x"], torch.from_numpy(train["images"]).float())
    assert source.train["y"].dtype == torch.int64
    assert source.train["y"].tolist() == train["labels"].tolist()
    assert source.eval["y"].tolist() == held_out["labels"].tolist()
    assert source.batch_size == 5 and source.label_names == ["a", "b", "c"]

    meta = build("tensor_file", spec_dir=tmp_path, path=f"train{suffix}", keys=KEYS,
                 device="meta")
    assert meta.train["x"].is_meta and meta.train["x"].shape == (10, 1, 4, 4)
    assert meta.train["x"].dtype == torch.float32 and meta.train["y"].dtype == torch.int64
    assert meta.eval is None


def test_tensor_file_npy_and_cast_float(build, tmp_path):
    array = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.save(tmp_path / "data.npy", array)
    keys = {"v": {"key": "array", "type": "Tensor", "shape": "B, 2"}}
    source = build("tensor_file", path=str(tmp_path / "data.npy"), keys=keys, cast_float=False)
    assert source.train["v"].dtype == torch.float64
    assert torch.equal(source.train["v"], torch.from_numpy(array))
    meta = build("tensor_file", path=str(tmp_path / "data.npy"), keys=keys, device="meta")
    assert meta.train["v"].shape == (6, 2) and meta.train["v"].dtype == torch.float32


def test_tensor_file_ports_follow_keys(make):
    comp = make("tensor_file", path="data.pt",
                keys={**KEYS, "m": {"key": "mask", "type": "Mask", "shape": "B"}})
    ports = comp.resolved_outputs({})
    assert {n: (p.type, p.shape) for n, p in ports.items()} == {
        "x": ("Images", None), "y": ("Labels", None), "m": ("Mask", "B")
    }
    assert comp.outputs == {}


def _problem(call) -> str:
    """The text of the located error a build raises (nothing located: no spec source)."""
    with pytest.raises(DgraphValidationError) as info:
        call()
    return str(info.value)


def test_tensor_file_missing_file_message(build, tmp_path):
    assert _problem(lambda: build("tensor_file", spec_dir=tmp_path, path="nope.pt",
                                  keys=KEYS)) == (
        "1 problem found in the spec:\n"
        "error[missing-file]: node 'test_tensor_file': params.path: 'nope.pt' does not exist\n"
        "    expected: a tensor file (.pt, .pth, .npy, .npz or .safetensors)\n"
        f"    found:    nothing at {tmp_path / 'nope.pt'}\n"
        f"    hint: relative paths are relative to the spec's folder ({tmp_path}); give an "
        "absolute path for a file elsewhere")


def test_tensor_file_missing_key(build, tmp_path):
    _write(tmp_path / "d.safetensors", {"images": np.zeros((3, 2))})
    assert _problem(lambda: build("tensor_file", spec_dir=tmp_path, path="d.safetensors",
                                  keys=KEYS)) == (
        "1 problem found in the spec:\n"
        "error[bad-tensor-file]: node 'test_tensor_file': params.keys.y.key: "
        f"{tmp_path / 'd.safetensors'} holds no tensor named 'labels'\n"
        "    expected: a tensor named 'labels'\n"
        "    found:    the file holds 'images'\n"
        "    hint: set the key to a tensor name of the file")


def test_tensor_file_mismatched_lengths(build, tmp_path):
    _write(tmp_path / "d.npz", {"images": np.zeros((3, 2)), "labels": np.zeros(4, np.int64)})
    assert _problem(lambda: build("tensor_file", spec_dir=tmp_path, path="d.npz",
                                  keys=KEYS)) == (
        "1 problem found in the spec:\n"
        "error[bad-tensor-file]: node 'test_tensor_file': params.keys: "
        f"{tmp_path / 'd.npz'}: the tensors have different lengths\n"
        "    expected: the same first dimension (number of examples) in every tensor\n"
        "    found:    x ('images'): 3, y ('labels'): 4\n"
        "    hint: every tensor's first dimension must index the same examples")


def test_tensor_file_type_and_shape_checks(build, tmp_path):
    _write(tmp_path / "d.pt", {"images": np.zeros((3, 2)), "labels": np.zeros(3)})
    assert _problem(lambda: build("tensor_file", spec_dir=tmp_path, path="d.pt",
                                  keys=KEYS)) == (
        "1 problem found in the spec:\n"
        "error[bad-tensor-file]: node 'test_tensor_file': params.keys.y.type: "
        f"{tmp_path / 'd.pt'}: tensor 'labels' (port 'y', Labels) does not hold integers\n"
        "    expected: integer values (Labels are indices)\n"
        "    found:    dtype float64\n"
        "    hint: store the tensor as int64, or give the port another type")
    keys = {"x": {"key": "images", "type": "Images", "shape": "B, 3"}}
    assert _problem(lambda: build("tensor_file", spec_dir=tmp_path, path="d.pt",
                                  keys=keys)) == (
        "1 problem found in the spec:\n"
        "error[bad-tensor-file]: node 'test_tensor_file': params.keys.x.shape: "
        f"{tmp_path / 'd.pt'}: tensor 'images' (port 'x', Images) does not have the declared "
        "shape\n"
        "    expected: shape [B, 3]\n"
        "    found:    shape [3, 2]\n"
        "    hint: fix the declared shape, or the file")
    keys = {"x": {"key": "images", "type": "Images", "shape": "N, ..."}}
    source = build("tensor_file", spec_dir=tmp_path, path="d.pt", keys=keys)
    assert source.train["x"].shape == (3, 2)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_tensor_file_refuses_pickles(build, tmp_path, device):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert _problem(lambda: build("tensor_file", spec_dir=tmp_path, path="obj.npy",
                                  keys={"v": {"key": "array", "type": "Tensor"}},
                                  device=device)) == (
        "1 problem found in the spec:\n"
        "error[pickle-refused]: node 'test_tensor_file': params.keys.v.key: "
        f"{tmp_path / 'obj.npy'}: array 'array' holds pickled Python objects, which dgraph "
        "never loads\n"
        "    expected: an array of numbers or booleans\n"
        "    found:    an array of dtype object (Python objects, stored as a pickle)\n"
        "    hint: save plain tensors: safetensors.torch.save_file({name: tensor}, path), or "
        "torch.save of a dict of tensors; dgraph never unpickles other objects")


def test_tensor_file_rejects_bad_params(make):
    with pytest.raises(ValidationError, match="not one of the supported files"):
        make("tensor_file", path="data.csv", keys=KEYS)
    with pytest.raises(ValidationError, match="unknown semantic type"):
        make("tensor_file", path="d.pt", keys={"x": {"key": "a", "type": "Picture"}})
    with pytest.raises(ValidationError, match="identifiers"):
        make("tensor_file", path="d.pt", keys={"x.y": {"key": "a"}})
    with pytest.raises(ValidationError, match="bad dimension"):
        make("tensor_file", path="d.pt", keys={"x": {"key": "a", "shape": "B, 2x"}})
    with pytest.raises(ValidationError):
        make("tensor_file", path="d.pt", keys={})
    with pytest.raises(ValidationError):
        make("tensor_file", path="d.pt", keys={"x": {"key": "a", "dtype": "f32"}})


def test_digits_ports_unify_with_real_shapes(build, make):
    comp = make("digits", flatten=False)
    source = build("digits", flatten=False)
    for name, port in comp.resolved_outputs({}).items():
        dims = parse_shape(port.shape, comp.port_params())
        assert len(dims) == source.train[name].dim()
        for dim, size in zip(dims, source.train[name].shape, strict=True):
            assert dim.size in (None, size)


def test_digits_with_index_adds_an_index_port(build, make):
    ports = make("digits", with_index=True).resolved_outputs({})
    assert list(ports) == ["x", "y", "labelled", "index"]
    assert (ports["index"].type, ports["index"].shape) == ("Labels", "B")
    assert "index" not in make("digits").resolved_outputs({})
    source = build("digits", with_index=True)
    assert source.train["index"].tolist() == list(range(1437))
    assert source.eval["index"].tolist() == list(range(360))


def test_digits_check_names_both_sizes(make):
    with pytest.raises(ValidationError) as info:
        make("digits", test_fraction=0.001)
    (error,) = info.value.errors()
    assert error["msg"] == (
        "Value error, test_fraction=0.001 leaves 1795 training and 2 evaluation examples; a "
        "stratified split needs at least 10 in each")


# -- toy2d ----------------------------------------------------------------------------------


def test_toy2d_points_sit_around_their_mode_on_the_ring(build):
    source = build("toy2d", modes=4, radius=3.0, std=0.01, train_size=400, eval_size=16)
    x, mode = source.train["x"], source.train["mode"]
    assert x.shape == (400, 2) and set(mode.tolist()) == {0, 1, 2, 3}
    angle = mode.double() * (torch.pi / 2)
    centre = torch.stack([angle.cos(), angle.sin()], 1) * 3.0
    offset = x.double() - centre
    assert float(offset.abs().max()) < 0.06 and abs(float(offset.std()) - 0.01) < 0.002
    again = build("toy2d", modes=4, radius=3.0, std=0.01, train_size=400, eval_size=16)
    assert torch.equal(again.train["x"], x)  # a fixed sample (seed 0)
    meta = build("toy2d", train_size=32, eval_size=16, device="meta")
    assert meta.train["x"].is_meta and meta.eval["mode"].shape == (16,)


# -- text sources ---------------------------------------------------------------------------


def test_text_sources_check_prompt_lengths_and_give_the_vocabulary_size(make):
    with pytest.raises(ValidationError) as info:
        make("text_lm", seq_len=8, prompt_len=8)
    assert info.value.errors()[0]["msg"] == "Value error, prompt_len (8) must be < seq_len (8)"
    with pytest.raises(ValidationError) as info:
        make("jsonl_pairs", max_len=16, max_prompt_len=20)
    assert info.value.errors()[0]["msg"] == (
        "Value error, max_prompt_len (20) must be < max_len (16)")
    assert make("text_lm").port_params()["vocab_size"] == 258
    bpe = make("jsonl_pairs", tokenizer={"kind": "bpe", "vocab_size": 300})
    assert bpe.port_params()["vocab_size"] == 300
    cache = make("lm_topk_cache", path="c.safetensors", k=4, pairs={"max_len": 16,
                                                                    "max_prompt_len": 6})
    sizes = cache.port_params()
    assert (sizes["seq_len"], sizes["prompt_len"], sizes["k"], sizes["vocab_size"]) == (
        16, 6, 4, 258)
    assert cache.resolved_outputs({})["topk_logprobs"].shape == "B, {seq_len}, {k}"
