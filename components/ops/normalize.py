"""L2 normalisation of feature vectors: the last step of a contrastive embedding head."""

from __future__ import annotations

from dgraph.declare import Embeddings, Features, op, param

__all__ = ["l2_normalize"]


@op
def l2_normalize(x: Features("B, D", "features"), *,
                 eps: float = param(1e-12, gt=0.0, le=1e-2, doc="guards the norm against zero"),
                 ) -> Embeddings("B, D", "unit-length embeddings"):
    """``y_b = x_b / max(||x_b||_2, eps)`` for each example ``b`` of ``[B, D]`` features."""
    import torch.nn.functional as F

    return F.normalize(x, p=2, dim=1, eps=eps)
