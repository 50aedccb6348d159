"""Dataset quantization (``dataset_quantization``): GraphCut bins by hand, the draw across
bins, the selection of a digits subset, and what a checkpoint keeps of it."""

from __future__ import annotations

import pytest
import torch
from dgraph.components.data.digits import digits
from dgraph.components.dd.quantization import (
    DatasetQuantization,
    graphcut_bins,
    sample_from_bins,
)
from dgraph.components.models.mlp import MLP

from dgraph.registry import BuildContext


@pytest.fixture(scope="module")
def source():
    return digits.component(digits.component.Params(flatten=False), "data").build(
        BuildContext(node="data"))


def _quantization(source, features=None, **params):
    refs = {"data": source} | ({"features": features} if features is not None else {})
    return DatasetQuantization.create(BuildContext(node="syn", references=refs), data="data",
                                      **({"features": "net"} if features is not None else {}),
                                      **params)


def test_bins_follow_the_graphcut_gain_by_hand():
    # f = 0, 1, 2, 10; squared distances d(0,1)=1, d(0,2)=4, d(0,10)=100, d(1,2)=1,
    # d(1,10)=81, d(2,10)=64. Bin 1 (size 2) over all four: S empty, gain = -sum_rest d:
    # 0: -105, 1: -83, 2: -69, 10: -245 -> index 2. Then gain = d(x,2) - (sum_rest - d(x,2)):
    # 0: 4-101 = -97, 1: 1-82 = -81, 10: 64-181 = -117 -> index 1. Bin 2 over {0, 10}: both
    # -100 (tie: lowest index, 0), then 10.
    bins = graphcut_bins(torch.tensor([[0.0], [1.0], [2.0], [10.0]]), 2)
    assert [b.tolist() for b in bins] == [[2, 1], [0, 3]]
    # Sizes differ by at most one, the larger first; every example is in exactly one bin.
    bins = graphcut_bins(torch.randn(11, 3, generator=torch.Generator().manual_seed(0)), 3)
    assert [len(b) for b in bins] == [4, 4, 3]
    assert sorted(torch.cat(bins).tolist()) == list(range(11))
    with pytest.raises(ValueError) as info:
        graphcut_bins(torch.zeros(3, 2), 4)
    assert str(info.value) == "num_bins must be between 1 and the 3 examples to divide; found 4"


def test_the_draw_is_uniform_across_bins_and_seeded():
    bins = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])]
    drawn = sample_from_bins(bins, 5, torch.Generator().manual_seed(1))
    per_bin = [sum(int(i) in b.tolist() for i in drawn) for b in bins]
    assert sorted(per_bin) == [1, 2, 2] and len(set(drawn.tolist())) == 5
    # The same seed draws the same; the draw is, bin by bin, a uniform pick without
    # replacement after choosing which bins give the extra examples.
    generator = torch.Generator().manual_seed(1)
    extra = torch.randperm(3, generator=generator)[:2].tolist()
    torch.randperm(3, generator=generator)  # the order for passing on shortfalls (none here)
    expected = [b[torch.randperm(3, generator=generator)[:1 + (k in extra)]]
                for k, b in enumerate(bins)]
    assert torch.equal(drawn, torch.cat(expected))
    # A bin too small for its share passes the rest on: 3 from [0] and [1, 2, 3].
    small = sample_from_bins([torch.tensor([0]), torch.tensor([1, 2, 3])], 3,
                             torch.Generator().manual_seed(0))
    assert small[0] == 0 and sorted(small[1:].tolist()) in ([1, 2], [1, 3], [2, 3])
    # pick: first takes each bin's first entries (its most central ones).
    first = sample_from_bins(bins, 6, torch.Generator().manual_seed(0), pick="first")
    assert first.tolist() == [0, 1, 3, 4, 6, 7]
    with pytest.raises(ValueError) as info:
        sample_from_bins(bins, 10, torch.Generator())
    assert str(info.value) == "cannot draw 10 examples from bins holding 9"


def test_the_selection_is_a_real_subset_drawn_across_each_class_bins(source):
    node = _quantization(source, images_per_class=3, num_bins=3, seed=5)
    out = node()
    x, y = source.train["x"], source.train["y"]
    index = node.index
    assert out["labels"].tolist() == [c for c in range(10) for _ in range(3)]
    assert torch.equal(out["images"], x[index]) and torch.equal(y[index], out["labels"])
    # Class by class: the raw pixels binned by hand, one example from each of the 3 bins,
    # the draws from one generator seeded with 5.
    generator = torch.Generator().manual_seed(5)
    for c in range(10):
        members = torch.nonzero(y == c).flatten()
        bins = graphcut_bins(x[members].flatten(1), 3)
        expected = members[sample_from_bins(bins, 3, generator)]
        assert torch.equal(index[3 * c:3 * c + 3], expected)
    # Selected once: later forwards return the same set without drawing again.
    node.select = None  # would fail if called
    assert torch.equal(node()["images"], out["images"])


def test_a_feature_network_embeds_the_pool_and_the_buffers_restore_the_selection(source):
    torch.manual_seed(0)
    net = MLP.create(in_features=64, hidden=[16], num_classes=10)
    flat = digits.component(digits.component.Params(), "data").build(BuildContext(node="d"))
    node = _quantization(flat, features=net, images_per_class=2, num_bins=2, pick="first")
    with torch.no_grad():
        expected_features = net(x=flat.train["x"])["features"]
    assert torch.equal(node.embed(flat.train["x"]), expected_features)
    images = node()["images"]
    members = torch.nonzero(flat.train["y"] == 0).flatten()
    bins = graphcut_bins(expected_features[members], 2)
    assert torch.equal(node.index[:2], members[torch.stack([bins[0][0], bins[1][0]])])
    # The selection is in the state (checkpoints, final/): a fresh node loads it and does not
    # select again.
    again = _quantization(flat, features=net, images_per_class=2, num_bins=2, pick="first")
    again.load_state_dict(node.state_dict())
    again.select = None
    assert torch.equal(again()["images"], images)


def test_bad_references_and_sizes_are_reported(source):
    with pytest.raises(ValueError) as info:
        DatasetQuantization.create(BuildContext(node="syn", references={"data": MLP.create(
            in_features=4, num_classes=2)}), data="net")
    assert str(info.value) == "data must name a data node; it names a MLP"
    node = _quantization(source, images_per_class=200)
    with pytest.raises(ValueError) as info:
        node()
    assert str(info.value) == ("class 0: the training split has 142 examples, fewer than "
                               "images_per_class=200")
    node = _quantization(source, features=MLP.create(in_features=64, num_classes=10),
                         feature_port="hidden", images_per_class=1)
    with pytest.raises(ValueError) as info:
        node.embed(source.train["x"][:4].flatten(1))
    assert str(info.value) == ("the features network has no output 'hidden' (feature_port); "
                               "it outputs logits, features")
