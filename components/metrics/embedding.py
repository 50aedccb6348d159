"""Agreement of two sentence embeddings over a whole held-out split."""

from __future__ import annotations

from dgraph.declare import Features, Module, Scalar, metric

__all__ = ["EmbeddingCosine"]


@metric("embedding_cosine")
class EmbeddingCosine(Module):
    """Mean cosine similarity between student and teacher embeddings, row by row.

    ``cosine = (1/N) sum_n <s_n, t_n> / max(||s_n|| ||t_n||, 1e-8)`` over the ``N`` held-out
    rows (float64 sums, so the value does not depend on the batch size); 1 means the student
    reproduces the teacher's directions. A node named ``embedding`` reports
    ``embedding/cosine``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, student: Features("B, D", "student sentence embeddings"),
               teacher: Features("B, D", "teacher sentence embeddings (same shape)")) -> None:
        import torch

        if student.shape != teacher.shape:
            raise ValueError(f"embedding_cosine: student {list(student.shape)} and teacher "
                             f"{list(teacher.shape)} differ; project the student first")
        cos = torch.nn.functional.cosine_similarity(
            student.detach().to(torch.float64), teacher.detach().to(torch.float64), dim=1,
            eps=1e-8)
        self.total += float(cos.sum())
        self.count += int(cos.numel())

    def compute(self) -> Scalar(None, "mean cosine similarity"):
        if self.count == 0:
            raise ValueError("embedding_cosine saw no rows; the evaluation split is empty")
        return {"cosine": self.total / self.count}
