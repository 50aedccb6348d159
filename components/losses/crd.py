"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

The student's embedding of an example is pulled towards the teacher's embedding of the same
example and pushed from the teacher's embeddings of other examples, drawn from a memory bank.
The banks are component state (registered buffers), saved and restored with checkpoints.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from dgraph.ports import Port
from dgraph.registry import BuildContext, Component, Params, component

__all__ = ["CRD", "CRDParams"]


class CRDParams(Params):
    """Parameters of :class:`CRD`."""

    num_data: int = Field(gt=0, description="training-set size: one bank slot per example")
    dim: int = Field(128, gt=0, description="embedding width")
    num_negatives: int = Field(256, gt=0, description="negatives K drawn per example")
    temperature: float = Field(0.07, gt=0.0, description="softmax temperature tau")
    momentum: float = Field(0.5, ge=0.0, lt=1.0, description="bank update momentum m")
    symmetric: bool = Field(
        True, description="add the teacher-anchored term (student-bank negatives)"
    )

    @model_validator(mode="after")
    def _negatives_fit(self) -> CRDParams:
        if self.num_negatives > self.num_data:
            raise ValueError(f"num_negatives={self.num_negatives} exceeds num_data="
                             f"{self.num_data}")
        return self


@component("crd", roles=("loss",))
class CRD(Component):
    """CRD's contrastive term, in its InfoNCE form with memory-bank negatives.

    For example ``i`` (dataset index ``n_i``) with l2-normalised embeddings ``s_i``, ``t_i``
    and ``K`` bank slots ``j_1..j_K`` drawn uniformly (torch's global RNG):
    ``L_s = -(1/B) sum_i log( exp(<s_i,t_i>/tau) /
    (exp(<s_i,t_i>/tau) + sum_k exp(<s_i, M_t[j_k]>/tau)) )``, and symmetrically ``L_t`` with
    ``t_i`` as anchor and the student bank ``M_s``; ``loss = L_s + L_t`` (``L_s`` alone when
    not ``symmetric``). After the loss, in training mode only, the banks follow:
    ``M[n_i] <- normalize(m * M[n_i] + (1 - m) * e_i)``. Banks start as random unit vectors.
    Feed ``index`` from the data node (``digits`` with ``with_index: true``). An empty
    batch gives 0, connected to the inputs (backward gives zero gradients); fp16/bf16
    embeddings are computed in float32.
    """

    Params = CRDParams
    inputs = {
        "student": Port("Features", "B, {dim}", "student embedding (l2-normalised)"),
        "teacher": Port("Features", "B, {dim}", "teacher embedding (l2-normalised)"),
        "index": Port("Labels", "B", "dataset index of each example (int64)"),
    }
    outputs = {"loss": Port("Scalar", None, "contrastive loss")}

    def build(self, context: BuildContext):
        from dgraph.components.losses._torch_zoo import CRDLoss

        p = self.params
        return CRDLoss(p.num_data, p.dim, p.num_negatives, p.temperature, p.momentum,
                       p.symmetric)
