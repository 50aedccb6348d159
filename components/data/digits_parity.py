"""scikit-learn's digits reduced to a binary task: even (0) or odd (1).

The ``digits`` source (same split, parameters and ports) with ``y = digit % 2``; the digit
itself stays available as ``digit``. Few-class distillation (LELP) is measured on it: the
teacher learns only the parity, and whatever it knows about the ten digits inside each class
is in its embeddings, not its outputs.
"""

from __future__ import annotations

from dgraph.components.data.digits import _labelled_fits, _ports, digits

from dgraph.declare import Features, Labels, Mask, Outputs, data, param
from dgraph.registry import BuildContext

__all__ = ["PARITY_NAMES", "digits_parity"]

PARITY_NAMES = ["even", "odd"]


def _parity_ports(p) -> Outputs:  # noqa: ANN001 - the generated parameter model
    ports = dict(_ports(p))
    ports["y"] = Labels("B", "0 = even digit, 1 = odd (int64); -1 where withheld")
    ports["digit"] = Labels("B", "the digit 0..9 (int64); -1 where the label is withheld")
    return Outputs(**ports)


@data("digits_parity", check=_labelled_fits, output_ports=_parity_ports)
def digits_parity(
    *,
    test_fraction: float = param(0.2, gt=0.0, lt=1.0, doc="fraction of the 1797 examples "
                                 "held out for evaluation"),
    split_seed: int = param(0, ge=0, doc="seed of the stratified split (by digit)"),
    flatten: bool = param(True, doc="x as flat Features [B, 64]; false: Images [B, 1, 8, 8]"),
    batch_size: int = param(64, gt=0, le=1797, doc="examples per batch"),
    shuffle: bool = param(True, doc="reshuffle the training set every epoch"),
    drop_last: bool = param(True, doc="skip the last incomplete training batch"),
    labelled: int | None = param(None, ge=0, doc="keep labels for only this many training "
                                 "examples (stratified over digits); None: all labelled"),
    with_index: bool = param(False, doc="also output index: each example's position in its "
                             "split (int64)"),
    context: BuildContext,
) -> Outputs(x=Features("B, 64", "pixels in [0, 1]"),
             y=Labels("B", "0 = even digit, 1 = odd"),
             labelled=Mask("B", "true where the example has a label"),
             digit=Labels("B", "the digit 0..9")):
    """The ``digits`` source with ``y = digit % 2``: 0 = even, 1 = odd.

    A withheld label stays -1; the digit itself is in ``digit``; the class names are ``even``
    and ``odd``.
    """
    source = digits(test_fraction=test_fraction, split_seed=split_seed, flatten=flatten,
                    batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                    labelled=labelled, with_index=with_index, context=context)
    for split in (source.train, source.eval or {}):
        split["digit"] = split["y"]
        if not context.meta:
            split["y"] = split["y"].where(split["y"] < 0, split["y"] % 2)
    source.label_names = list(PARITY_NAMES)
    source.info = {**source.info, "num_classes": 2, "task": "parity (digit % 2)"}
    return source
