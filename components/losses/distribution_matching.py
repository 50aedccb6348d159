"""Dataset condensation by distribution matching (Zhao & Bilen, WACV 2023).

Synthetic images are learned so that, under randomly initialised embedding networks
(re-sampled every step), the mean embedding of each class matches that of the real images.
"""

from __future__ import annotations

from dgraph.declare import Features, Labels, Scalar, loss, param

__all__ = ["distribution_matching"]


@loss
def distribution_matching(
    real: Features("B, D", "embeddings of real images"),
    real_labels: Labels("B", "classes of the real images"),
    synthetic: Features("N, D", "embeddings of the synthetic images"),
    synthetic_labels: Labels("N", "classes of the synthetic images"), *,
    num_classes: int = param(gt=0, doc="number of classes"),
) -> Scalar(None, "sum over classes of squared mean differences"):
    """Per-class maximum mean discrepancy of embeddings, with the identity kernel.

    ``loss = sum_c || (1/|R_c|) sum_{i in R_c} psi(x_i) - (1/|S_c|) sum_{j in S_c} psi(s_j) ||^2``
    where ``R_c`` / ``S_c`` are the real / synthetic examples of class ``c`` in this step
    (real examples with a negative label are ignored; a class absent from either side adds
    nothing) and ``psi`` is the embedding network of the step. An empty batch on either side
    leaves no class present and gives 0, connected to the inputs. fp16/bf16 embeddings are
    computed in float32.
    """
    import torch.nn.functional as F
    from dgraph.components.losses._divergence import at_least_float32

    real = at_least_float32(real).flatten(1)
    synthetic = at_least_float32(synthetic).flatten(1)
    c = num_classes
    onehot_r = F.one_hot(real_labels.reshape(-1).long().clamp_min(0), c).to(real.dtype)
    onehot_r = onehot_r * (real_labels.reshape(-1, 1) >= 0)
    onehot_s = F.one_hot(synthetic_labels.reshape(-1).long(), c).to(synthetic.dtype)
    count_r, count_s = onehot_r.sum(0), onehot_s.sum(0)
    mean_r = onehot_r.t() @ real / count_r.clamp_min(1).unsqueeze(1)
    mean_s = onehot_s.t() @ synthetic / count_s.clamp_min(1).unsqueeze(1)
    present = (count_r > 0) & (count_s > 0)  # classes seen in both this step
    return ((mean_r - mean_s).pow(2).sum(1) * present).sum()
