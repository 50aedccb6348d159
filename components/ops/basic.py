"""Small parameter-free operations: flatten a tensor to features, stop a gradient.

Both keep the batch dimension; ``detach`` keeps the semantic type of what feeds it.
"""

from __future__ import annotations

from dgraph.declare import Features, Tensor, TypeOf, op

__all__ = ["detach", "flatten"]


@op
def flatten(x: Tensor("B, ...", "any tensor with a batch dimension"),
            ) -> Features("B, F", "the flattened tensor"):
    """Flatten every dimension after the batch: ``[B, d1, d2, ...] -> [B, d1*d2*...]``.

    Equivalent to ``x.flatten(1)``; the output is typed ``Features`` so that a feature map or an
    image can feed a linear projector or a flat-feature loss.
    """
    if x.dim() < 1:
        raise ValueError("flatten needs a tensor with a batch dimension, found a scalar")
    return x.flatten(1) if x.dim() > 1 else x.unsqueeze(1)


@op
def detach(x: Tensor("B, ...", "the tensor to stop gradients at"),
           ) -> TypeOf("x")("B, ...", "the same values, without gradient history"):
    """Stop-gradient: ``y = x`` in the forward pass, no gradient flows back into ``x``.

    Returns ``x.detach()`` (a view sharing storage, not a copy of the data). The output has the
    semantic type of what feeds ``x``, so that, e.g., detached logits still feed a ``Logits``
    input.
    """
    return x.detach()
