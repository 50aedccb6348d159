"""The digits source without scikit-learn: its data file read directly, and a stratified split
that gives exactly the indices of scikit-learn's ``train_test_split(stratify=...)``, on which
every digits number in BENCHMARKS.md depends. scikit-learn stays a test dependency for this."""

from __future__ import annotations

import numpy as np
import pytest
from dgraph.components.data.digits import (
    DIGITS_SIZE,
    _approximate_mode,
    _split_indices,
    digits_arrays,
    split_sizes,
)

sklearn_datasets = pytest.importorskip("sklearn.datasets")
sklearn_split = pytest.importorskip("sklearn.model_selection")
sklearn_extmath = pytest.importorskip("sklearn.utils.extmath")


def _sklearn(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return sklearn_split.train_test_split(np.arange(len(labels)), test_size=fraction,
                                          random_state=seed, stratify=labels)


def test_arrays_equal_load_digits() -> None:
    images, labels = digits_arrays()
    bunch = sklearn_datasets.load_digits()
    assert images.shape == (DIGITS_SIZE, 1, 8, 8) and images.dtype == np.float32
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, (bunch.images.astype(np.float32) / 16.0)[:, None])
    np.testing.assert_array_equal(labels, bunch.target)


@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.25, 0.3, 0.5, 0.05, 0.0056, 0.9, 0.33333])
def test_digits_split_equals_sklearn_over_seeds(fraction: float) -> None:
    _, labels = digits_arrays()
    for seed in [*range(40), 123, 2**16 + 7, 2**31 - 1, 2**32 - 1]:
        train, evaluation = _split_indices(labels, fraction, seed)
        want_train, want_eval = _sklearn(labels, fraction, seed)
        np.testing.assert_array_equal(train, want_train, err_msg=f"{fraction=} {seed=}")
        np.testing.assert_array_equal(evaluation, want_eval, err_msg=f"{fraction=} {seed=}")
        assert (len(train), len(evaluation)) == split_sizes(fraction)


def test_split_equals_sklearn_on_other_labels() -> None:
    # Tied class counts and tied remainders make _approximate_mode draw at random: the draws
    # must be the same as scikit-learn's, in the same order.
    generator = np.random.default_rng(0)
    cases = [np.repeat(np.arange(3), 4), np.repeat(np.arange(7), [2, 2, 3, 3, 5, 5, 9]),
             np.array([5, 5, 2, 2, 9, 9, 9, 2, 5, 9, 2, 5])]
    cases += [generator.integers(0, k, size=n) for k, n in [(4, 41), (6, 100), (13, 300)]]
    for labels in cases:
        for fraction in (0.3, 0.5, 0.41):
            n_train, n_test = split_sizes(fraction, len(labels))
            classes = len(np.unique(labels))
            if min(n_train, n_test) < classes or np.bincount(labels).max() < 2:
                continue
            for seed in range(10):
                got = _split_indices(labels, fraction, seed)
                want = _sklearn(labels, fraction, seed)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])


def test_approximate_mode_equals_sklearn() -> None:
    for counts, draws in [([3, 3, 3, 3], 6), ([5, 1, 7, 2], 9), ([10, 10], 3), ([4, 4, 4], 4)]:
        for seed in range(20):
            got = _approximate_mode(np.array(counts), draws, np.random.RandomState(seed))
            want = sklearn_extmath._approximate_mode(np.array(counts), draws,
                                                     np.random.RandomState(seed))
            np.testing.assert_array_equal(got, want)
    # by hand: 3 draws from [3, 3] are shares 1.5 and 1.5, floors 1 and 1, and the one left
    # goes to a class drawn at random among the two tied remainders
    got = _approximate_mode(np.array([3, 3]), 3, np.random.RandomState(0))
    assert sorted(got.tolist()) == [1, 2]


def test_split_errors() -> None:
    with pytest.raises(ValueError) as info:
        _split_indices(np.array([0, 0, 1, 2, 2]), 0.4, 0)
    assert str(info.value) == ("classes [1] have a single example: a stratified split needs "
                               "at least 2 per class")
    with pytest.raises(ValueError) as info:
        _split_indices(np.repeat(np.arange(5), 2), 0.2, 0)
    assert str(info.value) == ("a stratified split of 10 examples into 8 and 2 needs at "
                               "least 5 (the classes) on each side")
