"""SVG drawing of a graph, laid out in pure Python (no graphviz): :func:`to_svg`.

Boxes are coloured by kind; frozen nodes have a dashed border and a lock, trainable ones a bold
border; update membership is a coloured stripe per update, explained in a legend at the top.
The result is well-formed standalone XML; every node name appears in a ``<text>`` element.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from dgraph.graph.model import Graph
from dgraph.viz.layout import Layout, Segment, layered_layout
from dgraph.viz.view import (
    GraphView,
    NodeView,
    build_view,
    kind_style,
    safe_id,
    text_width,
)

__all__ = ["FONT_FAMILY", "svg_from_view", "to_svg", "xml_escape"]

FONT_FAMILY = "DejaVu Sans Mono, Menlo, Consolas, Liberation Mono, monospace"
SVG_NS = "http://www.w3.org/2000/svg"

_NAME_SIZE, _SUB_SIZE, _STATUS_SIZE, _LABEL_SIZE, _LEGEND_SIZE = 13.0, 11.0, 10.0, 10.0, 11.0
_PAD_X, _PAD_Y = 10.0, 7.0
_STRIPE_W, _STRIPE_STEP = 5.0, 7.0
_LOCK_W = 14.0
_EDGE_GREY = "#6b6b6b"
_MARGIN = 14.0

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def xml_escape(text: object) -> str:
    """Text made safe for XML content and attribute values (quotes and control characters)."""
    return html.escape(_INVALID_XML.sub("?", str(text)), quote=True)


def _f(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


@dataclass
class _Box:
    """A node's text lines and size."""

    node: NodeView
    lines: list[tuple[str, float, str]]  # (text, font size, css class)
    stripes: list[str]  # update names, one coloured stripe each
    w: float
    h: float


def _line_height(size: float) -> float:
    return size + 5.0


def _box(node: NodeView, view: GraphView) -> _Box:
    lines = [(node.name, _NAME_SIZE, "name"), (node.subtitle, _SUB_SIZE, "sub")]
    if node.status:
        lines.append((node.status, _STATUS_SIZE, "status"))
    stripes = [u for u in node.updates if u in view.updates]
    widths = [text_width(t, s) for t, s, _ in lines]
    if node.frozen:
        widths[-1 if node.status else 1] += _LOCK_W
    w = max(80.0, _PAD_X + len(stripes) * _STRIPE_STEP + max(widths) + _PAD_X)
    h = 2 * _PAD_Y + sum(_line_height(s) for _, s, _ in lines)
    return _Box(node, lines, stripes, w, h)


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


def _lock(x: float, y: float, colour: str) -> str:
    """A small padlock whose body's top-left corner is (x, y)."""
    return (
        f'<g class="lock"><path d="M{_f(x + 2)},{_f(y)} v-2.5 a3,3 0 0 1 6,0 v2.5" fill="none" '
        f'stroke="{colour}" stroke-width="1.4"/>'
        f'<rect x="{_f(x)}" y="{_f(y)}" width="10" height="7" rx="1.5" fill="{colour}"/></g>'
    )


def _legend(view: GraphView, width_hint: float) -> tuple[list[str], float, float]:
    """Legend elements, its width and its height (drawn at the top-left)."""
    out: list[str] = ['<g class="legend">']
    x0, y = _MARGIN, _MARGIN
    widest = 0.0
    title = view.title + ("  (shapes from a dry run)" if view.dry_run else "")
    y += 16
    out.append(f'<text class="legend-title" x="{_f(x0)}" y="{_f(y)}" font-size="16" '
               f'font-weight="bold">{xml_escape(title)}</text>')
    widest = max(widest, text_width(title, 16))
    if view.description:
        desc = " ".join(view.description.split())
        if len(desc) > 160:
            desc = desc[:157] + "..."
        y += 16
        out.append(f'<text x="{_f(x0)}" y="{_f(y)}" font-size="{_LEGEND_SIZE:g}" '
                   f'fill="#444">{xml_escape(desc)}</text>')
        widest = max(widest, text_width(desc, _LEGEND_SIZE))
    y += 22
    heading = "updates" if view.updates else "updates: none (nothing is trained)"
    out.append(f'<text x="{_f(x0)}" y="{_f(y)}" font-size="12" font-weight="bold">'
               f'{xml_escape(heading)}</text>')
    for update in view.updates.values():
        y += 17
        text = update.summary
        widest = max(widest, 24 + text_width(text, _LEGEND_SIZE))
        out.append(
            f'<g class="legend-update" data-update="{xml_escape(update.name)}">'
            f'<rect x="{_f(x0)}" y="{_f(y - 10)}" width="16" height="11" rx="2" '
            f'fill="{update.colour}"/>'
            f'<text x="{_f(x0 + 24)}" y="{_f(y)}" font-size="{_LEGEND_SIZE:g}">'
            f'{xml_escape(text)}</text></g>'
        )
    if view.stages:
        y += 17
        text = "stages: " + " → ".join(view.stages)
        widest = max(widest, text_width(text, _LEGEND_SIZE))
        out.append(f'<text class="legend-stages" x="{_f(x0)}" y="{_f(y)}" '
                   f'font-size="{_LEGEND_SIZE:g}">{xml_escape(text)}</text>')
    # kinds present, wrapped to the drawing's width
    limit = max(width_hint, 520.0)
    y += 24
    x = x0
    out.append(f'<text x="{_f(x)}" y="{_f(y)}" font-size="12" font-weight="bold">kinds</text>')
    x += text_width("kinds", 12) + 12
    for kind in view.kinds():
        fill, border = kind_style(kind)
        item = 20 + text_width(kind, _LEGEND_SIZE) + 14
        if x + item > limit and x > x0 + 60:
            x, y = x0 + text_width("kinds", 12) + 12, y + 17
        out.append(
            f'<g class="legend-kind" data-kind="{xml_escape(kind)}">'
            f'<rect x="{_f(x)}" y="{_f(y - 10)}" width="16" height="11" rx="2" fill="{fill}" '
            f'stroke="{border}"/><text x="{_f(x + 20)}" y="{_f(y)}" '
            f'font-size="{_LEGEND_SIZE:g}">{xml_escape(kind)}</text></g>'
        )
        x += item
        widest = max(widest, x - x0)
    # line styles
    y += 22
    x = x0
    key: list[str] = []
    key.append(f'<rect x="{_f(x)}" y="{_f(y - 11)}" width="22" height="13" rx="3" fill="#fff" '
               f'stroke="#444" stroke-width="1.4" stroke-dasharray="5 3"/>')
    key.append(_lock(x + 28, y - 7, "#555"))
    key.append(f'<text x="{_f(x + 44)}" y="{_f(y)}" font-size="{_LEGEND_SIZE:g}">frozen</text>')
    x += 44 + text_width("frozen", _LEGEND_SIZE) + 18
    key.append(f'<rect x="{_f(x)}" y="{_f(y - 11)}" width="22" height="13" rx="3" fill="#fff" '
               f'stroke="#444" stroke-width="3"/>')
    key.append(f'<text x="{_f(x + 28)}" y="{_f(y)}" font-size="{_LEGEND_SIZE:g}">trainable</text>')
    x += 28 + text_width("trainable", _LEGEND_SIZE) + 18
    key.append(f'<rect x="{_f(x)}" y="{_f(y - 11)}" width="22" height="13" rx="3" fill="#fff" '
               f'stroke="#444" stroke-width="1.3"/>')
    text = "no parameters trained"
    key.append(f'<text x="{_f(x + 28)}" y="{_f(y)}" font-size="{_LEGEND_SIZE:g}">{text}</text>')
    x += 28 + text_width(text, _LEGEND_SIZE) + 18
    key.append(f'<rect x="{_f(x)}" y="{_f(y - 11)}" width="5" height="13" rx="1.5" '
               f'fill="{next(iter(view.updates.values())).colour if view.updates else "#999"}"/>')
    text = "stripe: in that update"
    key.append(f'<text x="{_f(x + 11)}" y="{_f(y)}" font-size="{_LEGEND_SIZE:g}">{text}</text>')
    x += 11 + text_width(text, _LEGEND_SIZE) + 18
    key.append(f'<path d="M{_f(x)},{_f(y - 4)} h26" stroke="{_EDGE_GREY}" stroke-width="1.4" '
               f'stroke-dasharray="5 3"/>')
    text = "tapped submodule"
    key.append(f'<text x="{_f(x + 32)}" y="{_f(y)}" font-size="{_LEGEND_SIZE:g}">{text}</text>')
    x += 32 + text_width(text, _LEGEND_SIZE) + 18
    if view.updates:
        colour = next(iter(view.updates.values())).colour
        key.append(f'<path d="M{_f(x)},{_f(y - 4)} h26" stroke="{colour}" stroke-width="2.2"/>')
        text = "coloured edge: carries that update's gradient"
        key.append(f'<text x="{_f(x + 32)}" y="{_f(y)}" font-size="{_LEGEND_SIZE:g}">'
                   f'{xml_escape(text)}</text>')
        x += 32 + text_width(text, _LEGEND_SIZE)
    widest = max(widest, x - x0)
    out.append('<g class="legend-key">' + "".join(key) + "</g>")
    out.append("</g>")
    return out, widest + 2 * _MARGIN, y + 16


def _node_svg(box: _Box, x: float, y: float, view: GraphView, dom_id: str) -> str:
    node = box.node
    fill, border = node.fill, node.border
    colours = view.colours_of(box.stripes)
    stroke = {
        "frozen": f'stroke="{border}" stroke-width="1.5" stroke-dasharray="6 4"',
        "trainable": f'stroke="{border}" stroke-width="3"',
    }.get(node.look, f'stroke="{border}" stroke-width="1.3"')
    classes = f"node kind-{re.sub(r'[^A-Za-z0-9_-]', '_', node.kind)} {node.look}"
    title = f"{node.name}: {node.subtitle}" + (f" — {node.status}" if node.status else "")
    parts = [
        f'<g class="{classes}" id="{dom_id}" data-node="{xml_escape(node.name)}" '
        f'data-kind="{xml_escape(node.kind)}" data-type="{xml_escape(node.type)}" '
        f'data-frozen="{"true" if node.frozen else "false"}" '
        f'data-trained="{"true" if node.trained else "false"}" '
        f'data-updates="{xml_escape(" ".join(box.stripes))}">',
        f"<title>{xml_escape(title)}</title>",
        f'<rect class="box" x="{_f(x)}" y="{_f(y)}" width="{_f(box.w)}" height="{_f(box.h)}" '
        f'rx="6" fill="{fill}" {stroke}/>',
    ]
    for j, (update, colour) in enumerate(zip(box.stripes, colours, strict=True)):
        parts.append(
            f'<rect class="update-mark" data-update="{xml_escape(update)}" '
            f'x="{_f(x + 4 + j * _STRIPE_STEP)}" y="{_f(y + 4)}" width="{_f(_STRIPE_W)}" '
            f'height="{_f(box.h - 8)}" rx="1.5" fill="{colour}"/>'
        )
    tx = x + _PAD_X + len(box.stripes) * _STRIPE_STEP
    ty = y + _PAD_Y
    for index, (text, size, css) in enumerate(box.lines):
        ty += _line_height(size)
        baseline = ty - 4
        lx = tx
        if node.frozen and index == len(box.lines) - 1 and css == "status":
            parts.append(_lock(tx, baseline - 7, border))
            lx += _LOCK_W
        weight = ' font-weight="bold"' if css == "name" else ""
        style = ' font-style="italic" fill="#333"' if css == "status" else ""
        parts.append(
            f'<text class="{css}" x="{_f(lx)}" y="{_f(baseline)}" '
            f'font-size="{size:g}"{weight}{style}>{xml_escape(text)}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def _arrow(end: tuple[float, float], direction: tuple[float, float], colour: str) -> str:
    ux, uy = direction
    bx, by = end[0] - 9 * ux, end[1] - 9 * uy
    px, py = -uy * 4, ux * 4
    points = f"{_f(end[0])},{_f(end[1])} {_f(bx + px)},{_f(by + py)} {_f(bx - px)},{_f(by - py)}"
    return f'<polygon class="arrow" points="{points}" fill="{colour}"/>'


def svg_from_view(view: GraphView) -> str:
    """Draw an already built :class:`GraphView` as an SVG document (see :func:`to_svg`)."""
    boxes = {name: _box(node, view) for name, node in view.nodes.items()}
    label_lines = [(e.ports + ":", e.typed) for e in view.edges]
    label_h = 2 * (_LABEL_SIZE + 2) + 5
    label_sizes = [
        (max(text_width(a, _LABEL_SIZE), text_width(b, _LABEL_SIZE)) + 10, label_h)
        for a, b in label_lines
    ]
    layout: Layout = layered_layout(
        {name: (b.w, b.h) for name, b in boxes.items()},
        [(e.src, e.dst) for e in view.edges],
        label_sizes,
        margin=_MARGIN,
    )
    legend, legend_w, legend_h = _legend(view, layout.width - 2 * _MARGIN)
    width = max(layout.width, legend_w)
    height = legend_h + layout.height
    out = [
        f'<svg xmlns="{SVG_NS}" class="dgraph" width="{_f(width)}" height="{_f(height)}" '
        f'viewBox="0 0 {_f(width)} {_f(height)}" font-family="{FONT_FAMILY}" '
        f'data-title="{xml_escape(view.title)}">',
        f"<title>{xml_escape(view.title)}</title>",
        f"<desc>dgraph drawing of '{xml_escape(view.title)}': {len(view.nodes)} nodes, "
        f"{len(view.edges)} edges, {len(view.updates)} updates</desc>",
        f'<rect class="background" x="0" y="0" width="{_f(width)}" height="{_f(height)}" '
        'fill="#ffffff"/>',
        *legend,
        f'<g class="graph" transform="translate(0,{_f(legend_h)})">',
        '<g class="edges">',
    ]
    labels: list[str] = []
    for i, (edge, routed) in enumerate(zip(view.edges, layout.edges, strict=True)):
        if not routed.segments:
            continue
        colours = view.colours_of(edge.updates) or [_EDGE_GREY]
        dash = ' stroke-dasharray="6 4"' if edge.tap else ""
        d = _path(routed.segments)
        classes = "edge" + (" tap" if edge.tap else "") + (" grad" if edge.updates else "")
        parts = [
            f'<g class="{classes}" id="edge-{i}" data-src="{xml_escape(edge.src)}" '
            f'data-dst="{xml_escape(edge.dst)}" data-src-port="{xml_escape(edge.src_port)}" '
            f'data-dst-port="{xml_escape(edge.dst_port)}" '
            f'data-updates="{xml_escape(" ".join(edge.updates))}">',
            f"<title>{xml_escape(edge.full)}</title>",
        ]
        n = len(colours)
        for j, colour in enumerate(colours):  # stacked strokes: one colour per update
            width_j = 2.2 + 2.4 * (n - 1 - j) if edge.updates else 1.4
            parts.append(f'<path d="{d}" fill="none" stroke="{colour}" '
                         f'stroke-width="{_f(width_j)}"{dash}/>')
        parts.append(_arrow(routed.segments[-1][3], routed.end_direction(), colours[0]))
        parts.append("</g>")
        out.append("".join(parts))
        if routed.label is not None:
            (lw, lh), (a, b) = label_sizes[i], label_lines[i]
            lx, ly = routed.label
            labels.append(
                f'<g class="edge-label" data-edge="edge-{i}">'
                f'<rect x="{_f(lx - lw / 2)}" y="{_f(ly - lh / 2)}" width="{_f(lw)}" '
                f'height="{_f(lh)}" rx="3" fill="#ffffff" fill-opacity="0.92" stroke="#d0d0d0"/>'
                f'<text x="{_f(lx)}" y="{_f(ly - 2)}" font-size="{_LABEL_SIZE:g}" '
                f'text-anchor="middle" fill="#222">'
                f'<tspan x="{_f(lx)}">{xml_escape(a)}</tspan>'
                f'<tspan x="{_f(lx)}" dy="{_f(_LABEL_SIZE + 2)}" fill="#555">'
                f"{xml_escape(b)}</tspan></text></g>"
            )
    out.append("</g>")
    out.append('<g class="edge-labels">')
    out.extend(labels)
    out.append("</g>")
    out.append('<g class="nodes">')
    taken: set[str] = set()
    for name, box in boxes.items():
        placed = layout.nodes[name]
        out.append(_node_svg(box, placed.x, placed.y, view, safe_id(name, taken, "node-")))
    out.append("</g></g></svg>")
    return "\n".join(out) + "\n"


def to_svg(graph: Graph) -> str:
    """Draw ``graph`` as a standalone SVG document.

    Args:
        graph: a validated graph.

    Returns:
        SVG text (UTF-8 when written); needs no graphviz and loads nothing external.
    """
    return svg_from_view(build_view(graph))
