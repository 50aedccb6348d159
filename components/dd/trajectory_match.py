"""``trajectory_match``: the normalised parameter distance of trajectory matching (MTT).

Cazenavette et al. (2022): a student trained for N steps on the synthetic set from an expert's
snapshot ``theta*_t`` should land where the expert was M epochs later, ``theta*_{t+M}``; the
distance is normalised by how far the expert itself moved.
"""

from __future__ import annotations

from dgraph.declare import Scalar, Tensor, loss

__all__ = ["trajectory_match"]


@loss("trajectory_match")
def trajectory_match(params: Tensor("P", "theta_N: the student's parameters after the unroll"),
                     start: Tensor("P", "theta*_t: the expert's snapshot the unroll started "
                                   "from"),
                     target: Tensor("P", "theta*_{t+M}: the expert's later snapshot"),
                     ) -> Scalar:
    """``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` over flat vectors.

    0 when the student reaches the expert's end point, 1 when it does not move from the
    start. A start equal to the target leaves nothing to normalise by: the loss is then not
    finite, which the runtime reports naming this node (no check here, so no host sync).
    """
    if not params.shape == start.shape == target.shape or params.dim() != 1:
        raise ValueError(f"params {list(params.shape)}, start {list(start.shape)} and target "
                         f"{list(target.shape)} must be flat vectors of one size (the "
                         "network's parameter count)")
    gap = (params.float() - target.float()).pow(2).sum()
    span = (start.float() - target.float()).pow(2).sum()
    return gap / span
