"""A demo dgraph plug-in: registers the loss component type ``demo_l1`` on import.

Written as a third party would: one declaration, torch imported only when the loss runs.
"""

from __future__ import annotations

from dgraph.declare import Scalar, Tensor, loss, param

__all__ = ["demo_l1"]


@loss("demo_l1")
def demo_l1(prediction: Tensor("B, ...", "predicted values"),
            target: Tensor("B, ...", "target values (same shape)"), *,
            scale: float = param(1.0, gt=0.0, doc="multiplies the mean absolute error"),
            ) -> Scalar(None, "scaled mean absolute error"):
    """Mean absolute error between two tensors of the same shape, times ``scale``."""
    return scale * (prediction - target).abs().mean()
