"""The TensorBoard image is the SVG's picture: both draw one scene, checked pixel by pixel.

The SVG is parsed back into primitives and compared with the scene; the raster is checked
where the scene puts things: text ink inside each text's box (and nowhere else), kind fills
inside node boxes, update stripes, dashed frozen borders, padlocks, edge colours along each
curve and arrowheads.
"""

from __future__ import annotations

import copy
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from dgraph.graph import Graph
from dgraph.viz import to_image, to_svg
from dgraph.viz.raster import font, image_from_scene
from dgraph.viz.scene import (
    EDGE_GREY,
    REF_COLOUR,
    Curve,
    Group,
    Polygon,
    Rect,
    Scene,
    Text,
    build_scene,
)
from dgraph.viz.svg import svg_from_scene
from dgraph.viz.view import build_view, kind_style

SVG = "{http://www.w3.org/2000/svg}"

_FONT_NAME = " ".join(getattr(font(13), "getname", lambda: ("Pillow default",))())
needs_mono = pytest.mark.skipif(
    "DejaVu Sans Mono" not in _FONT_NAME,
    reason=f"DejaVu Sans Mono is not installed (Debian: fonts-dejavu-core, which .ci/run "
    f"installs); text is drawn in {_FONT_NAME!r}, whose widths differ from the layout's")


def _rgb(colour: str) -> np.ndarray:
    colour = colour.lstrip("#")
    if len(colour) == 3:
        colour = "".join(c * 2 for c in colour)
    return np.array([int(colour[i:i + 2], 16) for i in (0, 2, 4)], dtype=float)


def _near(pixel: np.ndarray, colour: str, tol: float = 40.0) -> bool:
    return float(np.abs(pixel.astype(float) - _rgb(colour)).max()) <= tol


def _bezier(seg, t: float) -> tuple[float, float]:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = seg
    u = 1 - t
    return (u**3 * x0 + 3 * u * u * t * x1 + 3 * u * t * t * x2 + t**3 * x3,
            u**3 * y0 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t**3 * y3)


def _without_text(scene: Scene) -> Scene:
    bare = copy.deepcopy(scene)

    def strip(items: list) -> list:
        out = []
        for item in items:
            if isinstance(item, Group):
                item.items = strip(item.items)
            if not isinstance(item, Text):
                out.append(item)
        return out

    bare.items = strip(bare.items)
    return bare


@pytest.fixture
def scene(ref_graph: Graph) -> Scene:
    return build_scene(build_view(ref_graph))


@pytest.fixture
def pixels(scene: Scene) -> np.ndarray:
    return np.asarray(image_from_scene(scene))


# -- one scene, two backends -----------------------------------------------------------------
def _svg_primitives(svg: str) -> dict[str, list[tuple]]:
    """Texts, rects, paths and polygons of an SVG with their translations applied."""
    out: dict[str, list[tuple]] = {"text": [], "rect": [], "path": [], "polygon": []}

    def visit(el: ET.Element, dx: float, dy: float) -> None:
        move = re.fullmatch(r"translate\(([-\d.]+),([-\d.]+)\)", el.get("transform") or "")
        if move:
            dx, dy = dx + float(move.group(1)), dy + float(move.group(2))
        tag = el.tag.removeprefix(SVG)
        if tag == "text":
            out["text"].append((el.text, round(float(el.get("x")) + dx, 1),
                                round(float(el.get("y")) + dy, 1), float(el.get("font-size"))))
        elif tag == "rect" and el.get("class") != "background":
            out["rect"].append((round(float(el.get("x")) + dx, 1),
                                round(float(el.get("y")) + dy, 1), el.get("fill")))
        elif tag == "path":
            out["path"].append((el.get("stroke"), el.get("stroke-dasharray")))
        elif tag == "polygon":
            out["polygon"].append(el.get("fill"))
        for child in el:
            visit(child, dx, dy)

    visit(ET.fromstring(svg), 0.0, 0.0)
    return out


def test_the_svg_writes_exactly_the_scene_the_raster_paints(ref_graph: Graph,
                                                             scene: Scene) -> None:
    svg = to_svg(ref_graph)
    assert svg == svg_from_scene(scene)
    drawn = _svg_primitives(svg)
    texts, rects, curves, polygons = [], [], [], []
    for item, dx, dy, _ in scene.walk():
        if isinstance(item, Text):
            texts.append((item.text, round(item.x + dx, 1), round(item.y + dy, 1), item.size))
        elif isinstance(item, Rect):
            rects.append((round(item.x + dx, 1), round(item.y + dy, 1), item.fill or "none"))
        elif isinstance(item, Curve):
            dash = " ".join(f"{d:g}" for d in item.dash) if item.dash else None
            curves.append((item.stroke, dash))
        elif isinstance(item, Polygon):
            polygons.append(item.fill)
    assert drawn == {"text": texts, "rect": rects, "path": curves, "polygon": polygons}
    # every node name, every port label and every type/shape label is a text of the scene
    words = {t[0] for t in texts}
    assert set(ref_graph.nodes) <= words
    assert {"logits → teacher:", "Logits[B, 10]", "y → labels:", "Labels[B]",
            "head → b:", "params.source:", "reference"} <= words


def test_to_image_is_the_scene_painted(ref_graph: Graph, scene: Scene,
                                       pixels: np.ndarray) -> None:
    image = to_image(ref_graph)
    assert image.dtype == np.uint8
    assert image.shape == (math.ceil(scene.height), math.ceil(scene.width), 3)
    assert np.array_equal(image, pixels)
    small = to_image(ref_graph, max_side=400)
    assert max(small.shape[:2]) <= 400 and small.shape[1] >= 399
    double = to_image(ref_graph, scale=2.0)
    assert double.shape == (math.ceil(scene.height * 2), math.ceil(scene.width * 2), 3)


# -- text ----------------------------------------------------------------------------------------
@needs_mono
def test_every_text_is_painted_inside_its_box_and_nowhere_else(scene: Scene,
                                                               pixels: np.ndarray) -> None:
    bare = np.asarray(image_from_scene(_without_text(scene)))
    ink = np.abs(pixels.astype(int) - bare.astype(int)).max(axis=2) > 60
    allowed = np.zeros(ink.shape, dtype=bool)
    h, w = ink.shape
    boxes = []
    for item, dx, dy, _ in scene.walk():
        if not isinstance(item, Text):
            continue
        x0, y0, x1, y1 = item.box()
        x0, x1 = max(0, int(x0 + dx) - 1), min(w, math.ceil(x1 + dx) + 2)
        y0, y1 = max(0, int(y0 + dy) - 1), min(h, math.ceil(y1 + dy) + 2)
        allowed[y0:y1, x0:x1] = True
        boxes.append((item.text, x0, y0, x1, y1))
    assert len(boxes) > 50
    for text, x0, y0, x1, y1 in boxes:
        glyphs = sum(not c.isspace() for c in text)
        assert ink[y0:y1, x0:x1].sum() >= 3 * glyphs, f"no ink for {text!r}"
        # ink spreads over the whole width the layout reserved for the text
        columns = np.nonzero(ink[y0:y1, x0:x1].any(axis=0))[0]
        assert columns[-1] - columns[0] >= 0.6 * (x1 - x0 - 3), f"{text!r} is too narrow"
    stray = ink & ~allowed
    assert stray.sum() == 0, f"text ink outside the text boxes at {np.argwhere(stray)[:5]}"


@needs_mono
def test_text_uses_the_monospace_font_the_layout_measures() -> None:
    face = font(13)
    assert "DejaVu Sans Mono" in " ".join(face.getname()), face.getname()
    assert face.getlength("m" * 10) == pytest.approx(10 * 13 * 0.6, rel=0.02)


# -- nodes ---------------------------------------------------------------------------------------
def test_node_boxes_have_their_kind_fill_border_stripes_and_locks(
        ref_graph: Graph, scene: Scene, pixels: np.ndarray) -> None:
    view = build_view(ref_graph)
    nodes = {g.data["node"]: (g, dx, dy) for g, dx, dy in scene.groups("node")}
    assert set(nodes) == set(ref_graph.nodes)
    for name, (group, dx, dy) in nodes.items():
        node = view.nodes[name]
        fill, border = kind_style(node.kind)
        box = next(i for i in group.items if isinstance(i, Rect) and i.cls == "box")
        x, y = box.x + dx, box.y + dy
        mid = int(y + box.h / 2)
        assert _near(pixels[mid, int(x + box.w - 5)], fill, 6), name  # inside, right of text
        edge = pixels[mid, int(x + box.w) - 1:int(x + box.w) + 1]
        assert any(_near(p, border, 70) for p in edge), (name, edge)
        top = pixels[int(y), int(x + 8):int(x + box.w - 8)].astype(float)
        on = (np.abs(top - _rgb(border)).max(axis=1) < 90).mean()
        if node.frozen:  # dashed: border and gaps alternate along the top edge
            assert 0.35 < on < 0.8, (name, on)
        else:
            assert on > 0.95, (name, on)
        marks = [i for i in group.items if isinstance(i, Rect) and i.cls == "update-mark"]
        assert [m.data["update"] for m in marks] == [u for u in node.updates]
        for mark in marks:
            colour = view.updates[mark.data["update"]].colour
            assert _near(pixels[mid, int(mark.x + dx + mark.w / 2)], colour, 12), name
        locks = [g for g in group.items if isinstance(g, Group) and g.cls == "lock"]
        assert len(locks) == (1 if node.frozen else 0), name
        for lock in locks:
            body = next(i for i in lock.items if isinstance(i, Rect))
            centre = pixels[int(body.y + dy + body.h / 2), int(body.x + dx + body.w / 2)]
            assert _near(centre, border, 25), name


# -- edges ---------------------------------------------------------------------------------------
def test_edges_are_painted_along_their_curves_in_their_colours(
        ref_graph: Graph, scene: Scene, pixels: np.ndarray) -> None:
    view = build_view(ref_graph)
    covers = []  # label and node boxes: the curve runs under a label, into a box
    for item, dx, dy, around in scene.walk():
        if isinstance(item, Rect) and around and around[-1].cls.split()[0] in (
                "edge-label", "node"):
            covers.append((item.x + dx - 3, item.y + dy - 3, item.x + dx + item.w + 3,
                           item.y + dy + item.h + 3))
    edges = list(scene.groups("edge"))
    assert len(edges) == len(view.edges) == len(ref_graph.edges) + 1
    for group, dx, dy in edges:
        edge = next(e for e in view.edges if e.src == group.data["src"]
                    and e.dst == group.data["dst"] and e.dst_port == group.data["dst-port"])
        colour = (REF_COLOUR if edge.ref else
                  view.updates[edge.updates[0]].colour if edge.updates else EDGE_GREY)
        curves = [i for i in group.items if isinstance(i, Curve)]
        assert curves[0].stroke == colour
        hits = total = 0
        for seg in curves[0].segments:
            for k in range(1, 20):
                px, py = _bezier(seg, k / 20)
                px, py = px + dx, py + dy
                if any(a <= px <= c and b <= py <= d for a, b, c, d in covers):
                    continue
                total += 1
                r, c = int(round(py)), int(round(px))
                window = pixels[r - 2:r + 3, c - 2:c + 3].reshape(-1, 3)
                hits += any(_near(p, colour, 60) for p in window)
        assert total >= 5, group.title
        assert hits / total >= (0.95 if not (edge.tap or edge.ref) else 0.8), (
            group.title, hits, total)
        arrow = next(i for i in group.items if isinstance(i, Polygon))
        cx = sum(p[0] for p in arrow.points) / 3 + dx
        cy = sum(p[1] for p in arrow.points) / 3 + dy
        assert _near(pixels[int(round(cy)), int(round(cx))], colour, 60), group.title


def test_gradient_edges_take_their_update_colour_and_the_reference_is_dotted(
        ref_graph: Graph, scene: Scene) -> None:
    view = build_view(ref_graph)
    by_title = {g.title: g for g, _, _ in scene.groups("edge")}
    grad = by_title["student.logits → ce.logits: Logits[B, 10]"]
    assert [c.stroke for c in grad.items if isinstance(c, Curve)] == [view.updates["main"].colour]
    ref = by_title["student → follower.params.source (reference)"]
    assert [(c.stroke, c.dash) for c in ref.items if isinstance(c, Curve)] == [
        (REF_COLOUR, (2.0, 3.0))]
    tap = by_title["teacher.head → hint.b: Features[*] (tap)"]
    assert [c.dash for c in tap.items if isinstance(c, Curve)] == [(6.0, 4.0)]
