"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download).

A stratified train/eval split, optionally with labels kept for only a few training examples
(semi-supervised setups): the ``labelled`` mask output says which examples have one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import Field, model_validator

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["DIGITS_SIZE", "Digits", "DigitsParams"]

DIGITS_SIZE = 1797  # examples in sklearn.datasets.load_digits
DIGITS_CLASSES = 10


def split_sizes(test_fraction: float, total: int = DIGITS_SIZE) -> tuple[int, int]:
    """(train, eval) sizes, computed as scikit-learn's ``train_test_split`` does."""
    n_eval = math.ceil(test_fraction * total)
    return total - n_eval, n_eval


class DigitsParams(Params):
    """Parameters of :class:`Digits`."""

    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="fraction of the 1797 examples held out for evaluation"
    )
    split_seed: int = Field(0, ge=0, description="seed of the stratified split (and of the "
                            "choice of labelled examples)")
    flatten: bool = Field(
        True, description="x as flat Features [B, 64]; false: Images [B, 1, 8, 8]"
    )
    batch_size: int = Field(64, gt=0, le=DIGITS_SIZE, description="examples per batch")
    shuffle: bool = Field(True, description="reshuffle the training set every epoch")
    drop_last: bool = Field(True, description="skip the last incomplete training batch")
    labelled: int | None = Field(
        None,
        ge=0,
        description="keep labels for only this many training examples (stratified over "
        "classes); the others get label -1 and labelled=false. None: all labelled",
    )
    with_index: bool = Field(
        False, description="also output index: each example's position in its split (int64), "
        "for losses with per-example state such as CRD's memory bank"
    )

    @model_validator(mode="after")
    def _labelled_fits(self) -> DigitsParams:
        n_train, n_eval = split_sizes(self.test_fraction)
        if n_train < DIGITS_CLASSES or n_eval < DIGITS_CLASSES:
            raise ValueError(
                f"test_fraction={self.test_fraction} leaves {n_train} training and {n_eval} "
                f"evaluation examples; a stratified split needs at least {DIGITS_CLASSES} in each"
            )
        if self.labelled is not None and self.labelled > n_train:
            raise ValueError(
                f"labelled={self.labelled} exceeds the {n_train} training examples left by "
                f"test_fraction={self.test_fraction}"
            )
        return self


@component("digits", roles=("data",))
class Digits(Component):
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

    Params = DigitsParams
    inputs: dict[str, Port] = {}
    outputs = {
        "x": Port("Features", "B, ...", "pixels in [0, 1]: [B, 64], or Images [B, 1, 8, 8]"),
        "y": Port("Labels", "B", "class index (int64); -1 where the label is withheld"),
        "labelled": Port("Mask", "B", "true where the example has a label (bool)"),
    }

    def resolved_outputs(self, peers: Mapping[str, Component]) -> dict[str, Port]:
        ports = dict(self.outputs)
        if self.params.flatten:
            ports["x"] = Port("Features", "B, 64", "pixels in [0, 1], flattened")
        else:
            ports["x"] = Port("Images", "B, 1, 8, 8", "pixels in [0, 1], one channel")
        if self.params.with_index:
            ports["index"] = Port("Labels", "B", "position of the example in its split (int64)")
        return ports

    def build(self, context: BuildContext):
        from dgraph.components.data._torch_data import build_digits

        return build_digits(self.params, context)
