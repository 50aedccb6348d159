"""Drawing a validated graph: SVG (pure-Python layout), offline HTML, Graphviz DOT, Mermaid,
and a raster image for TensorBoard.

:func:`render` picks the format from a file suffix (``.svg``, ``.html``, ``.dot``, ``.mmd``),
writes the file and returns the text; a bare format name returns the text only. No torch.
The SVG (also inside the HTML page) and :func:`to_image` (a numpy RGB array, via Pillow) paint
one :class:`Scene` built by :func:`build_scene`, so they show the same picture.
:func:`run_drawings` makes what a training run keeps (SVG, Mermaid, image) from one view and
one scene.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from dgraph.errors import DgraphError, Problem
from dgraph.graph.model import Graph
from dgraph.viz.dot import dot_from_view, to_dot
from dgraph.viz.html import html_from_view, to_html
from dgraph.viz.layout import Layout, layered_layout
from dgraph.viz.mermaid import mermaid_from_view, to_mermaid
from dgraph.viz.raster import image_from_scene, to_image
from dgraph.viz.scene import Scene, build_scene
from dgraph.viz.svg import svg_from_scene, svg_from_view, to_svg
from dgraph.viz.view import GraphView, build_view

__all__ = [
    "SUFFIXES",
    "GraphView",
    "Layout",
    "RunDrawings",
    "Scene",
    "build_scene",
    "build_view",
    "layered_layout",
    "render",
    "run_drawings",
    "to_dot",
    "to_html",
    "to_image",
    "to_mermaid",
    "to_svg",
]

# suffix -> renderer of a GraphView; the order is the one error messages list.
_RENDERERS: dict[str, Callable[[GraphView], str]] = {
    ".dot": dot_from_view,
    ".mmd": mermaid_from_view,
    ".svg": svg_from_view,
    ".html": html_from_view,
}
SUFFIXES: tuple[str, ...] = tuple(_RENDERERS)
_FORMAT_NAMES = {"dot": ".dot", "mmd": ".mmd", "mermaid": ".mmd", "svg": ".svg", "html": ".html"}


def _supported() -> str:
    return "supported suffixes: " + ", ".join(SUFFIXES)


def _suffix_of(target: str | Path) -> tuple[str, Path | None]:
    """The format suffix and the file to write (None when ``target`` names a format)."""
    text = str(target)
    bare = text.lower().lstrip(".")
    if not isinstance(target, Path) and bare in _FORMAT_NAMES and "/" not in text:
        return _FORMAT_NAMES[bare], None
    path = Path(target)
    suffix = path.suffix.lower()
    if not suffix:
        raise DgraphError(
            f"cannot tell which format to draw '{text}' in: it has no suffix; {_supported()}"
        )
    if suffix not in _RENDERERS:
        raise DgraphError(
            f"cannot draw a graph as '{text}': unknown suffix '{path.suffix}'; {_supported()}"
        )
    return suffix, path


def render(
    graph: Graph,
    path_or_format: str | Path,
    *,
    problems: Iterable[Problem | str] | None = None,
) -> str:
    """Draw ``graph`` in the format its target names; write the file when given a path.

    Args:
        graph: a validated graph (from :func:`dgraph.graph.validate`).
        path_or_format: a file path ending in ``.dot``, ``.mmd``, ``.svg`` or ``.html``
            (written as UTF-8, parent folders created), or a bare format name
            (``"svg"``, ``".svg"``, ``"dot"``, ``"mmd"``/``"mermaid"``, ``"html"``) to get
            the text without writing anything.
        problems: problems or warnings to list in the HTML page (ignored by other formats).

    Returns:
        The drawing's text.

    Raises:
        DgraphError: the suffix is missing or unknown (the message lists the supported
            suffixes), or the file cannot be written.
    """
    suffix, path = _suffix_of(path_or_format)
    view = build_view(graph)
    text = html_from_view(view, problems) if suffix == ".html" else _RENDERERS[suffix](view)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise DgraphError(f"cannot write the drawing to '{path}': {exc.strerror or exc}") \
                from exc
    return text


class RunDrawings(NamedTuple):
    """What a training run keeps of its graph (see :func:`run_drawings`)."""

    svg: str
    mermaid: str
    image: Any  # H x W x 3 uint8 numpy array


def run_drawings(graph: Graph) -> RunDrawings:
    """The SVG, the Mermaid source and the raster image of ``graph``, exactly what
    :func:`render` (``"svg"``, ``"mmd"``) and :func:`to_image` return, made from one view and
    one scene instead of a view per drawing and a scene per picture."""
    import numpy as np

    view = build_view(graph)
    scene = build_scene(view)
    return RunDrawings(svg=svg_from_scene(scene), mermaid=mermaid_from_view(view),
                       image=np.asarray(image_from_scene(scene)))
