"""The graph as a raster image (an RGB array), for TensorBoard's image tab.

Same layout and colours as the SVG, drawn with Pillow: boxes coloured by kind, name and type
in each, edges as sampled Bézier curves with arrowheads (dashed boxes are frozen nodes).
"""

from __future__ import annotations

from typing import Any

from dgraph.graph.model import Graph
from dgraph.viz.layout import layered_layout
from dgraph.viz.view import build_view, kind_style

__all__ = ["to_image"]

_CHAR_W, _LINE_H, _PAD = 7.0, 14.0, 8.0


def _hex(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def _bezier(segment, steps: int = 16) -> list[tuple[float, float]]:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = segment
    points = []
    for i in range(steps + 1):
        t = i / steps
        u = 1 - t
        points.append((u**3 * x0 + 3 * u * u * t * x1 + 3 * u * t * t * x2 + t**3 * x3,
                       u**3 * y0 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t**3 * y3))
    return points


def to_image(graph: Graph, *, scale: float = 1.0) -> Any:
    """An ``H x W x 3`` uint8 numpy array picturing the graph."""
    import numpy as np
    from PIL import Image, ImageDraw

    view = build_view(graph)
    lines = {name: [name, f"{node.type} ({node.kind})"] for name, node in view.nodes.items()}
    sizes = {name: (max(len(t) for t in text) * _CHAR_W + 2 * _PAD,
                    len(text) * _LINE_H + 2 * _PAD) for name, text in lines.items()}
    layout = layered_layout(sizes, [(e.src, e.dst) for e in view.edges])
    width, height = int(layout.width * scale) + 1, int(layout.height * scale) + 1
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def at(point):
        return (point[0] * scale, point[1] * scale)

    for edge_view, edge in zip(view.edges, layout.edges, strict=True):
        colour = _hex(view.colours_of(edge_view.updates)[0]) if edge_view.updates else (
            120, 120, 120)
        points = [at(p) for segment in edge.segments for p in _bezier(segment)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
            (ex, ey), (dx, dy) = points[-1], edge.end_direction()
            left = (ex - 8 * dx + 4 * dy, ey - 8 * dy - 4 * dx)
            right = (ex - 8 * dx - 4 * dy, ey - 8 * dy + 4 * dx)
            draw.polygon([(ex, ey), left, right], fill=colour)
    for name, box in layout.nodes.items():
        node = view.nodes[name]
        fill, border = kind_style(node.kind)
        corners = [at((box.x, box.y)), at((box.x + box.w, box.y + box.h))]
        draw.rectangle(corners, fill=_hex(fill), outline=_hex(border),
                       width=1 if node.frozen else 3)
        for i, text in enumerate(lines[name]):
            draw.text(at((box.x + _PAD, box.y + _PAD + i * _LINE_H)), text, fill=(0, 0, 0))
    return np.asarray(image)
