"""Dataset condensation by distribution matching (Zhao & Bilen, WACV 2023).

Synthetic images are learned so that, under randomly initialised embedding networks
(re-sampled every step), the mean embedding of each class matches that of the real images.
"""

from __future__ import annotations

from pydantic import Field

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["DistributionMatching", "DistributionMatchingParams"]


class DistributionMatchingParams(Params):
    """Parameters of :class:`DistributionMatching`."""

    num_classes: int = Field(gt=0, description="number of classes")


@component("distribution_matching", roles=("loss",))
class DistributionMatching(Component):
    """Per-class maximum mean discrepancy of embeddings, with the identity kernel.

    ``loss = sum_c || (1/|R_c|) sum_{i in R_c} psi(x_i) - (1/|S_c|) sum_{j in S_c} psi(s_j) ||^2``
    where ``R_c`` / ``S_c`` are the real / synthetic examples of class ``c`` in this step
    (real examples with a negative label are ignored; a class absent from either side adds
    nothing) and ``psi`` is the embedding network of the step. An empty batch on either side
    leaves no class present and gives 0, connected to the inputs. fp16/bf16 embeddings are
    computed in float32.
    """

    Params = DistributionMatchingParams
    inputs = {
        "real": Port("Features", "B, D", "embeddings of real images"),
        "real_labels": Port("Labels", "B", "classes of the real images"),
        "synthetic": Port("Features", "N, D", "embeddings of the synthetic images"),
        "synthetic_labels": Port("Labels", "N", "classes of the synthetic images"),
    }
    outputs = {"loss": Port("Scalar", None, "sum over classes of squared mean differences")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_zoo import DistributionMatchingLoss

        return DistributionMatchingLoss(self.params.num_classes)
