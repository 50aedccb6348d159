"""The picture of a graph as a list of drawing primitives, drawn alike by every backend.

:func:`build_scene` turns a :class:`~dgraph.viz.view.GraphView` into a :class:`Scene`: the
legend, the laid-out node boxes (kind colours, update stripes, frozen padlocks), the edges
(cubic Bézier curves with arrowheads, coloured by update, dashed for taps, dotted for
references) and their labels (ports, type and shape). :mod:`dgraph.viz.svg` writes a scene as
SVG and :mod:`dgraph.viz.raster` paints it with Pillow, so the SVG/HTML view and the
TensorBoard image are the same picture.

Coordinates are pixels; a :class:`Text`'s ``y`` is its baseline. :class:`Group` carries the
SVG's structure (classes, ids, ``data-*`` attributes, tooltips) and an offset; painting ignores
everything but the offset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dgraph.viz.layout import Layout, Point, Segment, layered_layout
from dgraph.viz.view import GraphView, NodeView, kind_style, safe_id, text_width

__all__ = [
    "EDGE_GREY",
    "FONT_FAMILY",
    "REF_COLOUR",
    "Curve",
    "Group",
    "Item",
    "Polygon",
    "Rect",
    "Scene",
    "Text",
    "arrowhead",
    "build_scene",
    "line",
]

FONT_FAMILY = "DejaVu Sans Mono, Menlo, Consolas, Liberation Mono, monospace"
EDGE_GREY = "#6b6b6b"
REF_COLOUR = "#7a4fbf"  # reference edges: a parameter that names another node
REF_DASH = (2.0, 3.0)
TAP_DASH = (6.0, 4.0)
FROZEN_DASH = (6.0, 4.0)

_NAME_SIZE, _SUB_SIZE, _STATUS_SIZE, _LABEL_SIZE, _LEGEND_SIZE = 13.0, 11.0, 10.0, 10.0, 11.0
_PAD_X, _PAD_Y = 10.0, 7.0
_STRIPE_W, _STRIPE_STEP = 5.0, 7.0
_LOCK_W = 14.0
_MARGIN = 14.0


# -- primitives ----------------------------------------------------------------------------
@dataclass
class Rect:
    """A (rounded) rectangle; ``dash`` is an on/off pattern for the border."""

    x: float
    y: float
    w: float
    h: float
    fill: str | None = None
    stroke: str | None = None
    stroke_width: float = 1.0
    dash: tuple[float, ...] | None = None
    rx: float = 0.0
    fill_opacity: float = 1.0
    cls: str = ""
    data: dict[str, str] = field(default_factory=dict)


@dataclass
class Curve:
    """An open path of cubic Bézier segments, stroked and never filled."""

    segments: list[Segment]
    stroke: str
    width: float = 1.0
    dash: tuple[float, ...] | None = None
    cls: str = ""


@dataclass
class Polygon:
    """A filled polygon (arrowheads)."""

    points: list[Point]
    fill: str
    cls: str = ""


@dataclass
class Text:
    """One line of monospace text; ``(x, y)`` is the start (or middle) of its baseline."""

    x: float
    y: float
    text: str
    size: float
    fill: str | None = None  # None: black
    bold: bool = False
    italic: bool = False
    anchor: str = "start"  # "start" or "middle"
    cls: str = ""

    def box(self) -> tuple[float, float, float, float]:
        """Approximate ``(x0, y0, x1, y1)`` covered by the glyphs (ascent to descent)."""
        w = text_width(self.text, self.size)
        x0 = self.x - w / 2 if self.anchor == "middle" else self.x
        return (x0, self.y - 0.8 * self.size, x0 + w, self.y + 0.25 * self.size)


@dataclass
class Group:
    """Items drawn together, shifted by ``(dx, dy)``; the rest is structure for SVG/HTML."""

    items: list[Item] = field(default_factory=list)
    cls: str = ""
    id: str = ""
    data: dict[str, str] = field(default_factory=dict)
    title: str | None = None
    dx: float = 0.0
    dy: float = 0.0


Item = Rect | Curve | Polygon | Text | Group


@dataclass
class Scene:
    """A whole picture: its size, title, one-line description and items in drawing order."""

    width: float
    height: float
    title: str
    desc: str
    items: list[Item]
    background: str = "#ffffff"

    def walk(self) -> Iterator[tuple[Item, float, float, tuple[Group, ...]]]:
        """Every primitive with its absolute offset and the groups around it, in draw order."""
        def visit(items: list[Item], dx: float, dy: float, around: tuple[Group, ...]
                  ) -> Iterator[tuple[Item, float, float, tuple[Group, ...]]]:
            for item in items:
                if isinstance(item, Group):
                    yield from visit(item.items, dx + item.dx, dy + item.dy, (*around, item))
                else:
                    yield item, dx, dy, around

        yield from visit(self.items, 0.0, 0.0, ())

    def groups(self, cls: str) -> Iterator[tuple[Group, float, float]]:
        """Groups whose class list holds ``cls``, with their absolute offset."""
        def visit(items: list[Item], dx: float, dy: float) -> Iterator[tuple[Group, float, float]]:
            for item in items:
                if isinstance(item, Group):
                    ox, oy = dx + item.dx, dy + item.dy
                    if cls in item.cls.split():
                        yield item, ox, oy
                    yield from visit(item.items, ox, oy)

        yield from visit(self.items, 0.0, 0.0)


def line(p: Point, q: Point) -> Segment:
    """A straight segment as a cubic Bézier."""
    return (p, (p[0] + (q[0] - p[0]) / 3, p[1] + (q[1] - p[1]) / 3),
            (p[0] + 2 * (q[0] - p[0]) / 3, p[1] + 2 * (q[1] - p[1]) / 3), q)


def _hline(x: float, y: float, length: float) -> list[Segment]:
    return [line((x, y), (x + length, y))]


# -- node boxes ----------------------------------------------------------------------------
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


def _lock(x: float, y: float, colour: str) -> Group:
    """A small padlock whose body's top-left corner is (x, y): a shackle over a body."""
    shackle = [
        line((x + 2, y), (x + 2, y - 2.5)),
        ((x + 2, y - 2.5), (x + 2, y - 6.5), (x + 8, y - 6.5), (x + 8, y - 2.5)),
        line((x + 8, y - 2.5), (x + 8, y)),
    ]
    return Group([Curve(shackle, colour, 1.4), Rect(x, y, 10, 7, fill=colour, rx=1.5)],
                 cls="lock")


def _node(box: _Box, x: float, y: float, view: GraphView, dom_id: str) -> Group:
    node = box.node
    fill, border = node.fill, node.border
    width, dash = {"frozen": (1.5, FROZEN_DASH), "trainable": (3.0, None)}.get(
        node.look, (1.3, None))
    items: list[Item] = [Rect(x, y, box.w, box.h, fill=fill, stroke=border, stroke_width=width,
                              dash=dash, rx=6, cls="box")]
    for j, (update, colour) in enumerate(
            zip(box.stripes, view.colours_of(box.stripes), strict=True)):
        items.append(Rect(x + 4 + j * _STRIPE_STEP, y + 4, _STRIPE_W, box.h - 8, fill=colour,
                          rx=1.5, cls="update-mark", data={"update": update}))
    tx = x + _PAD_X + len(box.stripes) * _STRIPE_STEP
    ty = y + _PAD_Y
    for index, (text, size, css) in enumerate(box.lines):
        ty += _line_height(size)
        baseline = ty - 4
        lx = tx
        if node.frozen and index == len(box.lines) - 1 and css == "status":
            items.append(_lock(tx, baseline - 7, border))
            lx += _LOCK_W
        items.append(Text(lx, baseline, text, size, fill="#333" if css == "status" else None,
                          bold=css == "name", italic=css == "status", cls=css))
    kind = "".join(c if c.isalnum() or c in "_-" else "_" for c in node.kind)
    return Group(
        items,
        cls=f"node kind-{kind} {node.look}",
        id=dom_id,
        data={
            "node": node.name,
            "kind": node.kind,
            "type": node.type,
            "frozen": "true" if node.frozen else "false",
            "trained": "true" if node.trained else "false",
            "updates": " ".join(box.stripes),
        },
        title=f"{node.name}: {node.subtitle}" + (f" — {node.status}" if node.status else ""),
    )


# -- legend --------------------------------------------------------------------------------
def _legend(view: GraphView, width_hint: float) -> tuple[Group, float, float]:
    """The legend (drawn at the top-left), its width and its height."""
    items: list[Item] = []
    x0, y = _MARGIN, _MARGIN
    widest = 0.0
    title = view.title + ("  (shapes from a dry run)" if view.dry_run else "")
    y += 16
    items.append(Text(x0, y, title, 16, bold=True, cls="legend-title"))
    widest = max(widest, text_width(title, 16))
    if view.description:
        desc = " ".join(view.description.split())
        if len(desc) > 160:
            desc = desc[:157] + "..."
        y += 16
        items.append(Text(x0, y, desc, _LEGEND_SIZE, fill="#444", cls="legend-desc"))
        widest = max(widest, text_width(desc, _LEGEND_SIZE))
    y += 22
    heading = "updates" if view.updates else "updates: none (nothing is trained)"
    items.append(Text(x0, y, heading, 12, bold=True))
    for update in view.updates.values():
        y += 17
        text = update.summary
        widest = max(widest, 24 + text_width(text, _LEGEND_SIZE))
        items.append(Group([Rect(x0, y - 10, 16, 11, fill=update.colour, rx=2),
                            Text(x0 + 24, y, text, _LEGEND_SIZE)],
                           cls="legend-update", data={"update": update.name}))
    if view.stages:
        y += 17
        text = "stages: " + " → ".join(view.stages)
        widest = max(widest, text_width(text, _LEGEND_SIZE))
        items.append(Text(x0, y, text, _LEGEND_SIZE, cls="legend-stages"))
    # kinds present, wrapped to the drawing's width
    limit = max(width_hint, 520.0)
    y += 24
    x = x0
    items.append(Text(x, y, "kinds", 12, bold=True))
    x += text_width("kinds", 12) + 12
    for kind in view.kinds():
        fill, border = kind_style(kind)
        item = 20 + text_width(kind, _LEGEND_SIZE) + 14
        if x + item > limit and x > x0 + 60:
            x, y = x0 + text_width("kinds", 12) + 12, y + 17
        items.append(Group([Rect(x, y - 10, 16, 11, fill=fill, stroke=border, rx=2),
                            Text(x + 20, y, kind, _LEGEND_SIZE)],
                           cls="legend-kind", data={"kind": kind}))
        x += item
        widest = max(widest, x - x0)
    # line styles, wrapped like the kinds
    y += 22
    x = x0
    key: list[Item] = []

    def entry(sample: Callable[[float, float], list[Item]], sample_w: float, text: str) -> None:
        nonlocal x, y, widest
        need = sample_w + text_width(text, _LEGEND_SIZE)
        if x + need > limit and x > x0:
            x, y = x0, y + 17
        key.extend(sample(x, y))
        key.append(Text(x + sample_w, y, text, _LEGEND_SIZE))
        widest = max(widest, x + need - x0)
        x += need + 18

    def swatch(stroke_width: float, dash: tuple[float, ...] | None = None) -> Callable[
            [float, float], list[Item]]:
        return lambda x, y: [Rect(x, y - 11, 22, 13, fill="#fff", stroke="#444",
                                  stroke_width=stroke_width, dash=dash, rx=3)]

    def stroke(colour: str, width: float, dash: tuple[float, ...] | None = None) -> Callable[
            [float, float], list[Item]]:
        return lambda x, y: [Curve(_hline(x, y - 4, 26), colour, width, dash)]

    first = next(iter(view.updates.values())).colour if view.updates else "#999"
    entry(lambda x, y: [*swatch(1.4, (5.0, 3.0))(x, y), _lock(x + 28, y - 7, "#555")], 44,
          "frozen")
    entry(swatch(3.0), 28, "trainable")
    entry(swatch(1.3), 28, "no parameters trained")
    entry(lambda x, y: [Rect(x, y - 11, 5, 13, fill=first, rx=1.5)], 11,
          "stripe: in that update")
    entry(stroke(EDGE_GREY, 1.4, (5.0, 3.0)), 32, "tapped submodule")
    if any(e.ref for e in view.edges):
        entry(stroke(REF_COLOUR, 1.6, REF_DASH), 32, "reference: a parameter names that node")
    if view.updates:
        entry(stroke(first, 2.2), 32, "coloured edge: carries that update's gradient")
    items.append(Group(key, cls="legend-key"))
    return Group(items, cls="legend"), widest + 2 * _MARGIN, y + 16


# -- edges ---------------------------------------------------------------------------------
def arrowhead(end: Point, direction: Point, colour: str) -> Polygon:
    """A filled arrowhead whose tip is ``end``, pointing along ``direction`` (a unit vector)."""
    ux, uy = direction
    bx, by = end[0] - 9 * ux, end[1] - 9 * uy
    px, py = -uy * 4, ux * 4
    return Polygon([end, (bx + px, by + py), (bx - px, by - py)], colour, cls="arrow")


def build_scene(view: GraphView) -> Scene:
    """The picture of ``view``: legend on top, then the laid-out graph."""
    boxes = {name: _box(node, view) for name, node in view.nodes.items()}
    label_lines = [(e.ports + ":", e.typed) for e in view.edges]
    label_h = 2 * (_LABEL_SIZE + 2) + 5
    label_sizes: list[tuple[float, float] | None] = [
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

    edges: list[Item] = []
    labels: list[Item] = []
    for i, (edge, routed) in enumerate(zip(view.edges, layout.edges, strict=True)):
        if not routed.segments:
            continue
        dash: tuple[float, ...] | None
        if edge.ref:
            colours, dash = [REF_COLOUR], REF_DASH
        else:
            colours = view.colours_of(edge.updates) or [EDGE_GREY]
            dash = TAP_DASH if edge.tap else None
        items: list[Item] = []
        n = len(colours)
        for j, colour in enumerate(colours):  # stacked strokes: one colour per update
            width_j = 2.2 + 2.4 * (n - 1 - j) if edge.updates else (1.6 if edge.ref else 1.4)
            items.append(Curve(list(routed.segments), colour, width_j, dash))
        items.append(arrowhead(routed.segments[-1][3], routed.end_direction(), colours[0]))
        classes = ("edge" + (" tap" if edge.tap else "") + (" ref" if edge.ref else "")
                   + (" grad" if edge.updates else ""))
        edges.append(Group(
            items, cls=classes, id=f"edge-{i}",
            data={"src": edge.src, "dst": edge.dst, "src-port": edge.src_port,
                  "dst-port": edge.dst_port, "updates": " ".join(edge.updates)},
            title=edge.full,
        ))
        size = label_sizes[i]
        if routed.label is not None and size is not None:
            (lw, lh), (a, b) = size, label_lines[i]
            lx, ly = routed.label
            labels.append(Group(
                [Rect(lx - lw / 2, ly - lh / 2, lw, lh, fill="#ffffff", fill_opacity=0.92,
                      stroke=REF_COLOUR if edge.ref else "#d0d0d0", rx=3),
                 Text(lx, ly - 2, a, _LABEL_SIZE, fill="#222", anchor="middle", cls="ports"),
                 Text(lx, ly - 2 + _LABEL_SIZE + 2, b, _LABEL_SIZE,
                      fill=REF_COLOUR if edge.ref else "#555", anchor="middle", cls="typed")],
                cls="edge-label", data={"edge": f"edge-{i}"},
            ))
    nodes: list[Item] = []
    taken: set[str] = set()
    for name, box in boxes.items():
        placed = layout.nodes[name]
        nodes.append(_node(box, placed.x, placed.y, view, safe_id(name, taken, "node-")))
    graph = Group([Group(edges, cls="edges"), Group(labels, cls="edge-labels"),
                   Group(nodes, cls="nodes")], cls="graph", dy=legend_h)
    desc = (f"dgraph drawing of '{view.title}': {len(view.nodes)} nodes, "
            f"{sum(not e.ref for e in view.edges)} edges, {len(view.updates)} updates")
    return Scene(width, height, view.title, desc, [legend, graph])
