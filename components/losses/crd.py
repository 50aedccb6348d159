"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

The student's embedding of an example is pulled towards the teacher's embedding of the same
example and pushed from the teacher's embeddings of other examples, drawn from a memory bank.
The banks are component state (registered buffers), saved and restored with checkpoints: CRD
is a class component, not a function.
"""

from __future__ import annotations

from dgraph.declare import Features, Labels, Module, Scalar, loss, param

__all__ = ["CRD"]


def _negatives_fit(params) -> None:  # the generated parameter model
    if params.num_negatives > params.num_data:
        raise ValueError(f"num_negatives={params.num_negatives} exceeds num_data="
                         f"{params.num_data}")


@loss("crd", check=_negatives_fit)
class CRD(Module):
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

    def __init__(
        self, *,
        num_data: int = param(gt=0, doc="training-set size: one bank slot per example"),
        dim: int = param(128, gt=0, doc="embedding width"),
        num_negatives: int = param(256, gt=0, doc="negatives K drawn per example"),
        temperature: float = param(0.07, gt=0.0, doc="softmax temperature tau"),
        momentum: float = param(0.5, ge=0.0, lt=1.0, doc="bank update momentum m"),
        symmetric: bool = param(True, doc="add the teacher-anchored term (student-bank "
                                "negatives)"),
    ) -> None:
        import torch
        import torch.nn.functional as F

        super().__init__()
        self.num_data, self.dim = num_data, dim
        self.num_negatives, self.temperature = num_negatives, float(temperature)
        self.momentum, self.symmetric = float(momentum), symmetric
        # Registered buffers: part of state_dict, and so of every checkpoint.
        self.register_buffer("memory_student", F.normalize(torch.randn(num_data, dim), dim=1))
        self.register_buffer("memory_teacher", F.normalize(torch.randn(num_data, dim), dim=1))

    def _nce(self, anchor, positive, bank, negatives):  # tensors
        import torch
        import torch.nn.functional as F

        pos = (anchor * positive).sum(-1, keepdim=True)                 # [B, 1]
        if bank.shape[0] <= 8 * negatives.shape[1]:
            # A small bank: every similarity at once is cheaper than gathering K rows each.
            neg = (anchor @ bank.t()).gather(1, negatives)              # [B, K]
        else:
            neg = torch.bmm(bank[negatives], anchor.unsqueeze(2)).squeeze(2)
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        return -F.log_softmax(logits, dim=1)[:, 0].sum() / max(len(logits), 1)

    def forward(self, student: Features("B, {dim}", "student embedding (l2-normalised)"),
                teacher: Features("B, {dim}", "teacher embedding (l2-normalised)"),
                index: Labels("B", "dataset index of each example (int64)"),
                ) -> Scalar(None, "contrastive loss"):
        import torch
        import torch.nn.functional as F

        if student.shape != teacher.shape or student.dim() != 2 or student.shape[1] != self.dim:
            raise ValueError(f"crd expects student and teacher embeddings [B, {self.dim}]; "
                             f"found {list(student.shape)} and {list(teacher.shape)}")
        index = index.reshape(-1).long()
        if len(index) != len(student):
            raise ValueError(f"crd: 'index' has {len(index)} entries for {len(student)} examples")
        checkable = len(index) > 0 and index.device.type != "meta"
        if checkable and (int(index.min()) < 0 or int(index.max()) >= self.num_data):
            raise ValueError(
                f"crd: example index {int(index.max())} is outside the memory bank of "
                f"num_data={self.num_data} entries; set num_data to the training set's size"
            )
        s, t = student.float(), teacher.float()  # the banks are float32
        negatives = torch.randint(self.num_data, (len(s), self.num_negatives), device=s.device)
        loss = self._nce(s, t, self.memory_teacher, negatives)
        if self.symmetric:
            loss = loss + self._nce(t, s, self.memory_student, negatives)
        if self.training:
            with torch.no_grad():
                m = self.momentum
                for name, fresh in (("memory_student", s), ("memory_teacher", t)):
                    bank = getattr(self, name)
                    mixed = m * bank.index_select(0, index) + (1 - m) * fresh.detach()
                    # Out of place: autograd may still hold the old bank for the backward.
                    setattr(self, name, bank.index_copy(0, index,
                                                        F.normalize(mixed, dim=1).to(bank.dtype)))
        return loss
