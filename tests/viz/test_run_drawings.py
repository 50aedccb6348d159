"""run_drawings: the drawings a training run keeps, from one view and one scene, are exactly
the ones render and to_image make one by one."""

from __future__ import annotations

import numpy as np

from dgraph.api import graph_pictures
from dgraph.graph.model import Graph
from dgraph.viz import render, run_drawings, to_image


def test_run_drawings_are_the_rendered_drawings(ref_graph: Graph, kd_graph: Graph) -> None:
    for graph in (ref_graph, kd_graph):
        drawings = run_drawings(graph)
        assert drawings.svg == render(graph, "svg")
        assert drawings.mermaid == render(graph, "mmd")
        assert drawings.image.dtype == np.uint8 and drawings.image.shape[2] == 3
        assert np.array_equal(drawings.image, to_image(graph))


def test_a_runs_pictures_are_the_run_drawings(kd_graph: Graph) -> None:
    pictures = graph_pictures(kd_graph)
    drawings = run_drawings(kd_graph)
    assert (pictures.svg, pictures.mermaid) == (drawings.svg, drawings.mermaid)
    assert np.array_equal(pictures.image, drawings.image)
