"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download).

A stratified train/eval split, optionally with labels kept for only a few training examples
(semi-supervised setups): the ``labelled`` mask output says which examples have one.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import TYPE_CHECKING

from dgraph.declare import Features, Images, Labels, Mask, Outputs, data, param
from dgraph.registry import BuildContext

if TYPE_CHECKING:
    import numpy as np
    import torch


__all__ = ["DIGITS_CLASSES", "DIGITS_SIZE", "digits", "digits_split", "split_sizes",
           "stratified_subset"]

DIGITS_SIZE = 1797  # examples in sklearn.datasets.load_digits
DIGITS_CLASSES = 10


def split_sizes(test_fraction: float, total: int = DIGITS_SIZE) -> tuple[int, int]:
    """(train, eval) sizes, computed as scikit-learn's ``train_test_split`` does."""
    n_eval = math.ceil(test_fraction * total)
    return total - n_eval, n_eval


def _labelled_fits(p) -> None:  # noqa: ANN001 - the generated parameter model
    n_train, n_eval = split_sizes(p.test_fraction)
    if n_train < DIGITS_CLASSES or n_eval < DIGITS_CLASSES:
        raise ValueError(
            f"test_fraction={p.test_fraction} leaves {n_train} training and {n_eval} "
            f"evaluation examples; a stratified split needs at least {DIGITS_CLASSES} in each"
        )
    if p.labelled is not None and p.labelled > n_train:
        raise ValueError(
            f"labelled={p.labelled} exceeds the {n_train} training examples left by "
            f"test_fraction={p.test_fraction}"
        )


_OUTPUTS = Outputs(
    x=Features("B, ...", "pixels in [0, 1]: [B, 64], or Images [B, 1, 8, 8]"),
    y=Labels("B", "class index (int64); -1 where the label is withheld"),
    labelled=Mask("B", "true where the example has a label (bool)"),
)


def _ports(p) -> Outputs:  # noqa: ANN001 - the generated parameter model
    x = (Features("B, 64", "pixels in [0, 1], flattened") if p.flatten
         else Images("B, 1, 8, 8", "pixels in [0, 1], one channel"))
    ports = dict(_OUTPUTS, x=x)
    if p.with_index:
        ports["index"] = Labels("B", "position of the example in its split (int64)")
    return Outputs(**ports)


@data("digits", check=_labelled_fits, output_ports=_ports)
def digits(
    *,
    test_fraction: float = param(0.2, gt=0.0, lt=1.0, doc="fraction of the 1797 examples "
                                 "held out for evaluation"),
    split_seed: int = param(0, ge=0, doc="seed of the stratified split (and of the choice of "
                            "labelled examples)"),
    flatten: bool = param(True, doc="x as flat Features [B, 64]; false: Images [B, 1, 8, 8]"),
    batch_size: int = param(64, gt=0, le=DIGITS_SIZE, doc="examples per batch"),
    shuffle: bool = param(True, doc="reshuffle the training set every epoch"),
    drop_last: bool = param(True, doc="skip the last incomplete training batch"),
    labelled: int | None = param(None, ge=0, doc="keep labels for only this many training "
                                 "examples (stratified over classes); the others get label -1 "
                                 "and labelled=false. None: all labelled"),
    with_index: bool = param(False, doc="also output index: each example's position in its "
                             "split (int64), for losses with per-example state such as CRD's "
                             "memory bank"),
    context: BuildContext,
) -> _OUTPUTS:
    """scikit-learn's ``load_digits``: 1797 grey 8x8 digit images, classes ``"0".."9"``.

    Pixel values are scaled from 0..16 to [0, 1] (divided by 16). ``x`` is ``Features [B, 64]``
    when ``flatten`` (default), else ``Images [B, 1, 8, 8]``. The eval split (a fraction
    ``test_fraction``, stratified by class, seeded by ``split_seed``) is fully labelled.
    With ``labelled: n`` only ``n`` training examples, chosen stratified over classes, keep
    their label: the others have ``y = -1`` and ``labelled = false``. Feed ``labelled`` to
    ``cross_entropy``'s ``mask`` (it also skips negative labels on its own). With
    ``with_index: true`` an ``index`` output gives each example's position in its split
    (``0 .. n_train-1`` in training), for per-example state such as CRD's memory bank.
    """
    import numpy as np
    import torch

    from dgraph.data import DataSource

    n_train, n_eval = split_sizes(test_fraction)
    x_tail = (64,) if flatten else (1, 8, 8)
    n_labelled = n_train if labelled is None else labelled
    if context.meta:
        def split(n: int) -> dict[str, torch.Tensor]:
            return {
                "x": torch.empty((n, *x_tail), device="meta"),
                "y": torch.empty(n, dtype=torch.int64, device="meta"),
                "labelled": torch.empty(n, dtype=torch.bool, device="meta"),
            }

        train, evaluation = split(n_train), split(n_eval)
        if with_index:
            train["index"] = torch.empty(n_train, dtype=torch.int64, device="meta")
            evaluation["index"] = torch.empty(n_eval, dtype=torch.int64, device="meta")
    else:
        images, labels = digits_arrays()
        train_idx, eval_idx = _split_indices(labels, test_fraction, split_seed)
        assert len(train_idx) == n_train and len(eval_idx) == n_eval
        y_train = labels[train_idx].copy()
        has_label = np.ones(n_train, dtype=bool)
        if labelled is not None:
            has_label = stratified_subset(y_train, labelled, split_seed)
            y_train[~has_label] = -1

        def x_of(index: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(images[index].reshape(len(index), *x_tail).copy())

        train = {
            "x": x_of(train_idx),
            "y": torch.from_numpy(y_train),
            "labelled": torch.from_numpy(has_label),
        }
        evaluation = {
            "x": x_of(eval_idx),
            "y": torch.from_numpy(labels[eval_idx].copy()),
            "labelled": torch.ones(n_eval, dtype=torch.bool),
        }
        if with_index:
            train["index"] = torch.arange(n_train, dtype=torch.int64)
            evaluation["index"] = torch.arange(n_eval, dtype=torch.int64)
    return DataSource(
        train=train, eval=evaluation, batch_size=batch_size, shuffle=shuffle,
        drop_last=drop_last, label_names=[str(i) for i in range(DIGITS_CLASSES)],
        info={"dataset": "sklearn digits", "train": n_train, "eval": n_eval,
              "labelled": n_labelled, "num_classes": DIGITS_CLASSES},
    )


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images ``[N, 1, 8, 8]`` (float32 in [0, 1]) and labels (int64), read-only.

    Read from the data file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``, what
    ``load_digits`` parses) without importing scikit-learn, which costs more than a second of
    start-up: the same values as ``load_digits()``.
    """
    import numpy as np

    data = np.loadtxt(_digits_file(), delimiter=",")  # [N, 65]: 64 pixels 0..16, then the label
    images = (data[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0)[:, None, :, :]
    labels = data[:, -1].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _digits_file() -> Path:
    spec = importlib.util.find_spec("sklearn")  # a top-level package: found, not imported
    locations = spec.submodule_search_locations if spec is not None else None
    path = Path(locations[0]) / "datasets" / "data" / "digits.csv.gz" if locations else None
    if path is None or not path.is_file():
        where = f" (looked for {path})" if path is not None else ""
        raise FileNotFoundError(
            f"the digits data file of scikit-learn was not found{where}: the digits source "
            "reads the copy scikit-learn ships; install scikit-learn")
    return path


def _split_indices(labels: np.ndarray, test_fraction: float, split_seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(train, eval)`` indices of a stratified split, exactly those of scikit-learn's
    ``train_test_split(np.arange(n), test_size=test_fraction, random_state=split_seed,
    stratify=labels)`` (a ``StratifiedShuffleSplit`` draw), computed without scikit-learn.

    Per class, the training and evaluation counts are the approximate mode of the
    multivariate hypergeometric distribution (:func:`_approximate_mode`); each class's
    members are permuted, the first go to training and the next to evaluation, and each
    split is permuted once more. Every draw comes from one ``RandomState(split_seed)`` in
    scikit-learn's order, so the indices match it element for element (tests compare both).
    """
    import numpy as np

    n_samples = len(labels)
    n_train, n_test = split_sizes(test_fraction, n_samples)
    classes, y_indices, class_counts = np.unique(labels, return_inverse=True,
                                                 return_counts=True)
    if class_counts.min() < 2:
        raise ValueError(f"classes {classes[class_counts < 2].tolist()} have a single "
                         "example: a stratified split needs at least 2 per class")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(f"a stratified split of {n_samples} examples into {n_train} and "
                         f"{n_test} needs at least {len(classes)} (the classes) on each side")
    members = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(split_seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for i, count in enumerate(class_counts):
        permuted = members[i][rng.permutation(count)]
        train.append(permuted[:n_i[i]])
        test.append(permuted[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState
                      ) -> np.ndarray:
    """Per-class counts of ``n_draws`` examples: the floor of each class's share, plus one
    for the classes with the largest remainders, ties broken at random by ``rng`` (the rule
    and the random draws of scikit-learn's ``_approximate_mode``)."""
    import numpy as np

    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.unique(remainder)[::-1]:
            (tied,) = np.nonzero(remainder == value)
            take = min(len(tied), need)
            floored[rng.choice(tied, size=take, replace=False)] += 1
            need -= take
            if need == 0:
                break
    return floored.astype(int)


def digits_split(test_fraction: float = 0.2, split_seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_eval, y_eval)`` of the ``digits`` source, images ``[N, 1, 8, 8]``."""
    import torch

    images, labels = digits_arrays()
    train_idx, eval_idx = _split_indices(labels, test_fraction, split_seed)
    return (torch.from_numpy(images[train_idx].copy()), torch.from_numpy(labels[train_idx].copy()),
            torch.from_numpy(images[eval_idx].copy()), torch.from_numpy(labels[eval_idx].copy()))


def stratified_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A boolean mask selecting ``count`` examples, per class in proportion to its frequency.

    Quotas are the largest-remainder rounding of ``count * class_frequency``; within a class the
    examples are drawn by a permutation seeded with ``seed``.
    """
    import numpy as np

    if not 0 <= count <= len(labels):
        raise ValueError(f"cannot select {count} of {len(labels)} examples")
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    exact = count * sizes / sizes.sum()
    quota = np.floor(exact).astype(np.int64)
    remainder = count - int(quota.sum())
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:remainder]] += 1
    quota = np.minimum(quota, sizes)
    mask = np.zeros(len(labels), dtype=bool)
    for cls, wanted in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == cls)
        mask[rng.permutation(members)[:wanted]] = True
    return mask
