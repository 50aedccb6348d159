"""Pictures of tensors: a grid of images and a scatter plot of 2-D points, as Pillow images.

Used for samples of generative models (TensorBoard at each evaluation, ``dgraph sample``) and
for learned sets (``dgraph export`` of a tensor node). Pure functions of their inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dgraph.errors import DgraphError

__all__ = ["image_grid", "scatter", "sample_picture"]

_BACKGROUND = 64  # grey between tiles


def image_grid(images: torch.Tensor, rows: list[list[int]], scale: int = 4
               ) -> tuple[Any, float, float]:
    """A Pillow image with ``rows[r]`` (indices into ``images``) left to right in row ``r``.

    ``images`` is ``[N, H, W]`` or ``[N, C, H, W]`` (C = 1 grey, 3 RGB, otherwise the first
    channel). Values map linearly from ``[min(0, lowest), max(1, highest)]`` to black..white,
    so in-range pixels look as they are and out-of-range ones are not clipped; returns the
    image and that range.
    """
    from PIL import Image

    images = images.detach().float().cpu()
    low = min(0.0, float(images.min())) if images.numel() else 0.0
    high = max(1.0, float(images.max())) if images.numel() else 1.0
    pixels = ((images - low) / (high - low) * 255).round().clamp(0, 255).to(torch.uint8)
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(1)
    channels, height, width = pixels.shape[1:]
    columns = max((len(r) for r in rows), default=0)
    pad = 1
    cell_h, cell_w = height * scale + pad, width * scale + pad
    canvas = torch.full((channels, len(rows) * cell_h + pad, columns * cell_w + pad),
                        _BACKGROUND, dtype=torch.uint8)
    for r, members in enumerate(rows):
        for c, index in enumerate(members):
            tile = pixels[index].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            top, left = pad + r * cell_h, pad + c * cell_w
            canvas[:, top:top + height * scale, left:left + width * scale] = tile
    array = canvas.permute(1, 2, 0).contiguous().numpy()
    # uint8 [H, W] is a grey ("L") picture, [H, W, 3] an RGB one.
    return Image.fromarray(array if channels == 3 else array[:, :, 0]), low, high


def scatter(points: torch.Tensor, reference: torch.Tensor | None = None, size: int = 384
            ) -> Any:
    """A Pillow RGB image of 2-D ``points`` (blue) over ``reference`` points (light grey),
    both in one frame: the bounding box of everything drawn plus a 5 % margin, equal scales
    on both axes so a circle stays round."""
    from PIL import Image, ImageDraw

    points = points.detach().float().cpu()
    shown = [p for p in (reference, points) if p is not None and p.numel()]
    finite = [p[torch.isfinite(p).all(1)] for p in (x.detach().float().cpu() for x in shown)]
    everything = torch.cat(finite) if finite else torch.zeros(0, 2)
    if everything.numel():
        low, high = everything.min(0).values, everything.max(0).values
    else:
        low, high = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    centre = (low + high) / 2
    half = float((high - low).max()) / 2 * 1.05 or 1.0
    picture = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(picture)

    def place(xy: torch.Tensor) -> list[tuple[float, float]]:
        scaled = (xy - centre) / half  # [-1, 1] on the longer axis
        u = (scaled[:, 0] + 1) / 2 * (size - 1)
        v = (1 - scaled[:, 1]) / 2 * (size - 1)  # y up
        return list(zip(u.tolist(), v.tolist(), strict=True))

    for data, colour, radius in ((reference, (200, 200, 200), 1.5),
                                 (points, (31, 119, 180), 1.5)):
        if data is None:
            continue
        data = data.detach().float().cpu()
        for u, v in place(data[torch.isfinite(data).all(1)]):
            draw.ellipse((u - radius, v - radius, u + radius, v + radius), fill=colour)
    return picture


def sample_picture(samples: torch.Tensor, *, labels: torch.Tensor | None = None,
                   reference: torch.Tensor | None = None, scale: int = 4) -> Any:
    """Samples as a picture: ``[N, 2]`` points as a scatter over ``reference``; ``[N, H, W]``
    or ``[N, C, H, W]`` images (C of 1 or 3) as a grid, one row per class when ``labels``
    are given, otherwise as square as it goes."""
    shape = tuple(samples.shape)
    if len(shape) == 2 and shape[1] == 2:
        return scatter(samples, reference)
    if len(shape) == 3 or (len(shape) == 4 and shape[1] in (1, 3)):
        n = shape[0]
        if labels is not None:
            labels = labels.detach().cpu().reshape(-1)
            rows = [torch.nonzero(labels == c).flatten().tolist()
                    for c in sorted(int(c) for c in labels.unique())]
        else:
            columns = max(1, math.ceil(math.sqrt(n)))
            rows = [list(range(i, min(i + columns, n))) for i in range(0, n, columns)]
        return image_grid(samples, rows, scale)[0]
    raise DgraphError(f"cannot draw samples of shape {list(shape)}: a picture is made of "
                      "2-D points [N, 2] or images [N, H, W] / [N, C, H, W] with C of 1 or 3")
