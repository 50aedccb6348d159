"""``siamese_shift``: differentiable Siamese augmentation (DSA) for two batches of any sizes.

Zhao & Bilen 2021 (Dataset Condensation with Differentiable Siamese Augmentation) apply the
*same* random transform to the real and the synthetic images of a matching step, by drawing the
transform parameters of both batches from one seed: example ``i`` of the real batch and example
``i`` of the synthetic batch get the same parameters, whatever the two batch sizes. The pairing
ops of :mod:`dgraph.components.ops.tensor` (``random_shift`` with ``x2``) need equal batch
sizes; this op draws ``max(B, N)`` parameter sets and gives set ``i`` to example ``i`` of each
batch, as DSA's shared seed does. The transform is the DSA crop (a translation by up to
``max_shift`` pixels, uncovered pixels zero) and, with ``p_flip > 0``, a left-right flip (DSA
leaves flips out for digits, whose classes they change).
"""

from __future__ import annotations

from dgraph.declare import Images, Outputs, TypeOf, op, param

__all__ = ["siamese_shift"]


@op
def siamese_shift(x: Images("B, C, H, W", "the first batch (the real images)"),
                  x2: Images("N, C, H, W", "the second batch (the synthetic images)"), *,
                  max_shift: int = param(1, ge=0, le=64, doc="largest translation in pixels"),
                  p_flip: float = param(0.0, ge=0.0, le=1.0, doc="probability of a left-right "
                                        "flip (0 for digits)"),
                  ) -> Outputs(y=TypeOf("x")("B, C, H, W", "x augmented"),
                               y2=TypeOf("x2")("N, C, H, W", "x2 augmented with the same draws")):
    """Translate (and flip) example ``i`` of both batches by the same random draw ``i``.

    Draws, from torch's global generator (seeded and checkpointed by dgraph), ``M = max(B, N)``
    offsets ``(dy_i, dx_i)`` uniform in ``[-max_shift, max_shift]`` and flips ``f_i`` with
    probability ``p_flip``; ``y[i] = shift(flip^f_i(x[i]), dy_i, dx_i)`` and the same for
    ``y2[i]``, so ``y[i]`` and ``y2[i]`` see one transform. Differentiable in the pixels.
    """
    import torch
    import torch.nn.functional as F

    if x.shape[1:] != x2.shape[1:]:
        raise ValueError(f"siamese_shift needs images of one size; found x {list(x.shape)} and "
                         f"x2 {list(x2.shape)}")
    count = max(x.shape[0], x2.shape[0])
    pad = max_shift
    offsets = torch.randint(0, 2 * pad + 1, (2, count), device=x.device)
    flips = torch.rand(count, device=x.device) < p_flip

    def transform(images):
        batch, _, height, width = images.shape
        flip = flips[:batch].view(-1, 1, 1, 1)
        images = torch.where(flip, images.flip(-1), images)
        rows = torch.arange(height, device=x.device).view(1, height, 1) + \
            offsets[0, :batch].view(-1, 1, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, width) + \
            offsets[1, :batch].view(-1, 1, 1)
        padded = F.pad(images, (pad, pad, pad, pad))
        b = torch.arange(batch, device=x.device).view(-1, 1, 1)
        # [B, H, W, C] after advanced indexing on (batch, row, col); channels back to dim 1.
        return padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)

    return {"y": transform(x), "y2": transform(x2)}
