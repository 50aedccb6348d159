"""SVG drawing of a graph, laid out in pure Python (no graphviz): :func:`to_svg`.

Boxes are coloured by kind; frozen nodes have a dashed border and a lock, trainable ones a bold
border; update membership is a coloured stripe per update, explained in a legend at the top;
edges carry their ports, type and shape; parameters naming another node are dotted reference
edges. The picture is the :class:`~dgraph.viz.scene.Scene` that the raster image paints too;
this module only writes it as well-formed standalone XML (every node name in a ``<text>``).
"""

from __future__ import annotations

import html
import re

from dgraph.graph.model import Graph
from dgraph.viz.layout import Segment
from dgraph.viz.scene import (
    FONT_FAMILY,
    Curve,
    Group,
    Item,
    Polygon,
    Rect,
    Scene,
    Text,
    build_scene,
)
from dgraph.viz.view import GraphView, build_view

__all__ = ["FONT_FAMILY", "SVG_NS", "svg_from_scene", "svg_from_view", "to_svg", "xml_escape"]

SVG_NS = "http://www.w3.org/2000/svg"

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def xml_escape(text: object) -> str:
    """Text made safe for XML content and attribute values (quotes and control characters)."""
    return html.escape(_INVALID_XML.sub("?", str(text)), quote=True)


def _f(value: float) -> str:
    text = f"{value:.1f}"
    if text == "-0.0":
        return "0"
    return text[:-2] if text.endswith(".0") else text


def _path(segments: list[Segment]) -> str:
    if not segments:
        return ""
    (x0, y0) = segments[0][0]
    parts = [f"M{_f(x0)},{_f(y0)}"]
    for _, c1, c2, end in segments:
        parts.append(
            f"C{_f(c1[0])},{_f(c1[1])} {_f(c2[0])},{_f(c2[1])} {_f(end[0])},{_f(end[1])}"
        )
    return " ".join(parts)


def _attrs(cls: str, data: dict[str, str]) -> str:
    out = f' class="{xml_escape(cls)}"' if cls else ""
    return out + "".join(f' data-{k}="{xml_escape(v)}"' for k, v in data.items())


def _dash(dash: tuple[float, ...] | None) -> str:
    return f' stroke-dasharray="{" ".join(_f(d) for d in dash)}"' if dash else ""


def _item(item: Item, out: list[str]) -> None:
    if isinstance(item, Group):
        head = "<g" + _attrs(item.cls, item.data)
        if item.id:
            head = f'<g id="{xml_escape(item.id)}"' + head[2:]
        if item.dx or item.dy:
            head += f' transform="translate({_f(item.dx)},{_f(item.dy)})"'
        out.append(head + ">")
        if item.title is not None:
            out.append(f"<title>{xml_escape(item.title)}</title>")
        for inner in item.items:
            _item(inner, out)
        out.append("</g>")
    elif isinstance(item, Rect):
        text = (f"<rect{_attrs(item.cls, item.data)} x=\"{_f(item.x)}\" y=\"{_f(item.y)}\" "
                f'width="{_f(item.w)}" height="{_f(item.h)}"')
        if item.rx:
            text += f' rx="{_f(item.rx)}"'
        text += f' fill="{item.fill or "none"}"'
        if item.fill_opacity != 1.0:
            text += f' fill-opacity="{item.fill_opacity:g}"'
        if item.stroke:
            text += (f' stroke="{item.stroke}" stroke-width="{_f(item.stroke_width)}"'
                     + _dash(item.dash))
        out.append(text + "/>")
    elif isinstance(item, Curve):
        out.append(f'<path{_attrs(item.cls, {})} d="{_path(item.segments)}" fill="none" '
                   f'stroke="{item.stroke}" stroke-width="{_f(item.width)}"{_dash(item.dash)}/>')
    elif isinstance(item, Polygon):
        points = " ".join(f"{_f(x)},{_f(y)}" for x, y in item.points)
        out.append(f'<polygon{_attrs(item.cls, {})} points="{points}" fill="{item.fill}"/>')
    elif isinstance(item, Text):
        text = (f'<text{_attrs(item.cls, {})} x="{_f(item.x)}" y="{_f(item.y)}" '
                f'font-size="{item.size:g}"')
        if item.bold:
            text += ' font-weight="bold"'
        if item.italic:
            text += ' font-style="italic"'
        if item.fill:
            text += f' fill="{item.fill}"'
        if item.anchor != "start":
            text += f' text-anchor="{item.anchor}"'
        out.append(f"{text}>{xml_escape(item.text)}</text>")
    else:  # pragma: no cover - every primitive is handled above
        raise TypeError(f"cannot write {type(item).__name__} as SVG")


def svg_from_scene(scene: Scene) -> str:
    """Write a :class:`~dgraph.viz.scene.Scene` as a standalone SVG document."""
    w, h = _f(scene.width), _f(scene.height)
    out = [
        f'<svg xmlns="{SVG_NS}" class="dgraph" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}" '
        f'data-title="{xml_escape(scene.title)}">',
        f"<title>{xml_escape(scene.title)}</title>",
        f"<desc>{xml_escape(scene.desc)}</desc>",
        f'<rect class="background" x="0" y="0" width="{w}" height="{h}" '
        f'fill="{scene.background}"/>',
    ]
    for item in scene.items:
        _item(item, out)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def svg_from_view(view: GraphView) -> str:
    """Draw an already built :class:`GraphView` as an SVG document (see :func:`to_svg`)."""
    return svg_from_scene(build_scene(view))


def to_svg(graph: Graph) -> str:
    """Draw ``graph`` as a standalone SVG document.

    Args:
        graph: a validated graph.

    Returns:
        SVG text (UTF-8 when written); needs no graphviz and loads nothing external.
    """
    return svg_from_view(build_view(graph))
