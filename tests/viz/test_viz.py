"""Tests of dgraph.viz: SVG, DOT, Mermaid and HTML drawings of validated graphs.

The graphs use the component types registered in conftest.py (prefixed ``viztest_``), so these
tests do not depend on which built-in components exist. The HTML page runs in a real browser in
test_html_browser.py; the raster image is checked against the SVG's scene in test_raster.py.
"""

from __future__ import annotations

import html
import json
import random
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dgraph.errors import DgraphError
from dgraph.graph import Graph, validate
from dgraph.spec import load_spec
from dgraph.viz import SUFFIXES, render, to_dot, to_html, to_mermaid, to_svg
from dgraph.viz.dot import dot_quote
from dgraph.viz.layout import layered_layout
from dgraph.viz.mermaid import mermaid_text

SVG = "{http://www.w3.org/2000/svg}"


KD_NAME = "kd_soft"
KD_TITLE = 'viz-kd <T=4> & "soft"'  # the spec's name: XML, DOT and Mermaid special characters


def _graph(tmp_path: Path, text: str, name: str = "spec.yaml") -> Graph:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    graph, _ = validate(load_spec(path))
    return graph


def _chain_spec(n: int) -> str:
    lines = ["dgraph: 1", f"name: chain{n}", "nodes:", "  data: {kind: data, type: viztest_data}"]
    prev = "data"
    for i in range(1, n):
        lines.append(f"  relay_{i}: {{kind: op, type: viztest_relay, inputs: {{x: {prev}.x}}}}")
        prev = f"relay_{i}"
    return "\n".join(lines) + "\n"


def _svg_nodes(root: ET.Element) -> dict[str, ET.Element]:
    return {
        g.get("data-node"): g
        for g in root.iter(f"{SVG}g")
        if "node" in (g.get("class") or "").split()
    }


def _box(group: ET.Element) -> ET.Element:
    return next(r for r in group.iter(f"{SVG}rect") if r.get("class") == "box")


# -- SVG ---------------------------------------------------------------------------------------
def test_svg_is_well_formed_and_names_every_node(kd_graph: Graph) -> None:
    svg = to_svg(kd_graph)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    texts = {"".join(t.itertext()) for t in root.iter(f"{SVG}text")}
    for name in kd_graph.nodes:
        assert name in texts
    assert KD_TITLE in texts and root.get("data-title") == KD_TITLE
    assert "viz-kd &lt;T=4&gt; &amp; &quot;soft&quot;" in svg  # escaped, not raw
    assert set(_svg_nodes(root)) == set(kd_graph.nodes)


def test_svg_edge_labels_show_ports_type_and_shape(kd_graph: Graph) -> None:
    root = ET.fromstring(to_svg(kd_graph))
    titles = [
        "".join(t.itertext())
        for g in root.iter(f"{SVG}g") if (g.get("class") or "").startswith("edge ")
        or g.get("class") == "edge"
        for t in g.iter(f"{SVG}title")
    ]
    assert f"teacher.logits → {KD_NAME}.teacher: Logits[B, 10]" in titles
    assert "data.y → ce.labels: Labels[B]" in titles
    labels = [" ".join("".join(t.itertext()) for t in g.iter(f"{SVG}text"))
              for g in root.iter(f"{SVG}g") if g.get("class") == "edge-label"]
    assert any("logits → student:" in lbl and "Logits[B, 10]" in lbl for lbl in labels)
    assert len(labels) == len(kd_graph.edges)


def test_frozen_teacher_is_drawn_unlike_the_trainable_student(kd_graph: Graph) -> None:
    nodes = _svg_nodes(ET.fromstring(to_svg(kd_graph)))
    teacher, student = nodes["teacher"], nodes["student"]
    assert teacher.get("data-frozen") == "true" and student.get("data-frozen") == "false"
    assert "frozen" in teacher.get("class").split()
    assert "trainable" in student.get("class").split()
    assert _box(teacher).get("stroke-dasharray")  # dashed border
    assert _box(student).get("stroke-dasharray") is None
    assert float(_box(student).get("stroke-width")) > float(_box(teacher).get("stroke-width"))
    assert any(g.get("class") == "lock" for g in teacher.iter(f"{SVG}g"))
    assert not any(g.get("class") == "lock" for g in student.iter(f"{SVG}g"))


def test_legend_lists_each_update_and_nodes_carry_its_colour(kd_graph: Graph) -> None:
    root = ET.fromstring(to_svg(kd_graph))
    legend = {
        g.get("data-update"): g for g in root.iter(f"{SVG}g") if g.get("class") == "legend-update"
    }
    assert list(legend) == ["main", "aux"]
    colours = {u: next(g.iter(f"{SVG}rect")).get("fill") for u, g in legend.items()}
    assert colours["main"] != colours["aux"]
    aux_text = "".join(legend["aux"].itertext())
    assert "every 2, repeat 3" in aux_text and "hint×0.5" in aux_text
    assert f"{KD_NAME}×0.9" in "".join(legend["main"].itertext())

    nodes = _svg_nodes(root)

    def marks(name: str) -> dict[str, str]:
        return {r.get("data-update"): r.get("fill") for r in nodes[name].iter(f"{SVG}rect")
                if r.get("class") == "update-mark"}

    assert marks(KD_NAME) == {"main": colours["main"]}
    assert marks("ce") == {"main": colours["main"]}
    assert marks("hint") == {"aux": colours["aux"]}
    assert marks("student") == {"main": colours["main"], "aux": colours["aux"]}
    assert marks("teacher") == {} and marks("data") == {}


def test_tapped_edges_are_dashed(kd_graph: Graph) -> None:
    root = ET.fromstring(to_svg(kd_graph))
    for g in root.iter(f"{SVG}g"):
        classes = (g.get("class") or "").split()
        if "edge" not in classes:
            continue
        dashed = all(p.get("stroke-dasharray") for p in g.iter(f"{SVG}path"))
        assert dashed == ("tap" in classes)
        assert ("tap" in classes) == (g.get("data-src-port") == "head")


def test_two_hundred_node_chain_renders_quickly(tmp_path: Path) -> None:
    graph = _graph(tmp_path, _chain_spec(200))
    assert len(graph.nodes) == 200
    start = time.perf_counter()
    svg = to_svg(graph)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"200-node chain took {elapsed:.2f}s"
    root = ET.fromstring(svg)
    assert set(_svg_nodes(root)) == set(graph.nodes)
    columns = sorted(float(_box(g).get("x")) for g in _svg_nodes(root).values())
    assert len(set(columns)) == 200  # one node per layer, left to right


# -- layout --------------------------------------------------------------------------------------
def test_layout_keeps_boxes_apart_and_ends_edges_on_boxes() -> None:
    rnd = random.Random(3)
    names = [f"v{i}" for i in range(60)]
    sizes = {n: (rnd.uniform(60, 220), rnd.uniform(30, 70)) for n in names}
    edges = [(names[j], names[i]) for i in range(1, 60)
             for j in rnd.sample(range(max(0, i - 10), i), min(i, 2))]
    layout = layered_layout(sizes, edges, [(80.0, 24.0)] * len(edges))
    boxes = list(layout.nodes.values())
    for a in boxes:
        for b in boxes:
            if a is b:
                continue
            apart = (a.x + a.w <= b.x or b.x + b.w <= a.x
                     or a.y + a.h <= b.y or b.y + b.h <= a.y)
            assert apart, f"{a.name} overlaps {b.name}"
    for (src, dst), routed in zip(edges, layout.edges, strict=True):
        a, b = layout.nodes[src], layout.nodes[dst]
        assert a.layer < b.layer
        start, end = routed.segments[0][0], routed.segments[-1][3]
        assert start[0] == pytest.approx(a.x + a.w) and a.y <= start[1] <= a.y + a.h
        assert end[0] == pytest.approx(b.x) and b.y <= end[1] <= b.y + b.h
        assert routed.label is not None
    assert 0 < layout.width and 0 < layout.height
    for box in boxes:
        assert box.x >= 0 and box.y >= 0
        assert box.x + box.w <= layout.width and box.y + box.h <= layout.height


def test_layout_barycenter_removes_an_avoidable_crossing() -> None:
    sizes = {n: (50.0, 20.0) for n in ("a", "b", "c", "d")}
    layout = layered_layout(sizes, [("a", "d"), ("b", "c")])
    assert layout.crossings == 0
    assert (layout.nodes["a"].cy < layout.nodes["b"].cy) == (
        layout.nodes["d"].cy < layout.nodes["c"].cy)


def test_layout_survives_cycles_and_self_loops() -> None:
    sizes = {n: (40.0, 20.0) for n in ("a", "b", "c")}
    layout = layered_layout(sizes, [("a", "b"), ("b", "c"), ("c", "a"), ("b", "b")])
    assert all(e.segments for e in layout.edges)
    assert sum(e.reversed for e in layout.edges) == 1


# -- DOT and Mermaid ---------------------------------------------------------------------------
def test_dot_contains_every_edge_with_type_and_shape(kd_graph: Graph) -> None:
    dot = to_dot(kd_graph)
    assert dot.startswith('digraph "viz-kd <T=4> & \\"soft\\"" {')  # quotes escaped
    assert dot.rstrip().endswith("}")
    assert "rankdir=LR" in dot
    edge_lines = [line for line in dot.splitlines() if " -> " in line]
    assert len(edge_lines) == len(kd_graph.edges)
    for edge in kd_graph.edges:
        head = f"{dot_quote(edge.src)} -> {dot_quote(edge.dst)} ["
        assert any(line.strip().startswith(head) and f"{edge.src_port} → {edge.dst_port}" in line
                   for line in edge_lines), str(edge)
    assert "Logits[B, 10]" in dot and "Labels[B]" in dot
    assert "style=dashed" in next(line for line in edge_lines if "head →" in line)
    assert "cluster_legend" in dot and "every 2, repeat 3" in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_dot_is_accepted_by_graphviz(kd_graph: Graph) -> None:
    result = subprocess.run(["dot", "-Tsvg"], input=to_dot(kd_graph), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_mermaid_is_a_flowchart_with_safe_ids(kd_graph: Graph) -> None:
    text = to_mermaid(kd_graph)
    assert text.startswith("flowchart LR\n")
    node_lines = re.findall(r'^  (\S+)\["(.*)"\]$', text, re.M)
    labels = {ident: label for ident, label in node_lines}
    for name in kd_graph.nodes:
        assert any(label.split("<br/>")[0] == mermaid_text(name) for label in labels.values())
    for ident in labels:
        assert re.fullmatch(r"[nu]_[A-Za-z0-9_]+", ident)
    assert "  %% dgraph: viz-kd #lt;T=4#gt; #amp; #quot;soft#quot;\n" in text
    arrows = re.findall(r"^  (n_\w+) (-->|-\.->)\|\"(.*)\"\| (n_\w+)$", text, re.M)
    assert len(arrows) == len(kd_graph.edges)
    assert any(arrow == "-.->" for _, arrow, _, _ in arrows)  # the tapped edge
    assert "classDef kind_loss" in text and "classDef frozen" in text
    assert "logits → teacher: Logits[B, 10]" in text


# -- HTML --------------------------------------------------------------------------------------
def test_html_is_self_contained_and_offline(kd_graph: Graph, kd_spec: str,
                                            tmp_path: Path) -> None:
    warnings = _graph_warnings(tmp_path, kd_spec)
    page = to_html(kd_graph, problems=[*warnings, "note: drawn by the viz tests"])
    urls = re.findall(r"https?://[^\s\"'<>]*", page)
    assert urls == ["http://www.w3.org/2000/svg"]
    assert "<svg" in page and "</svg>" in page
    assert not re.search(r"<script[^>]+src=|<link|@import|url\(", page)
    for name in kd_graph.nodes:
        assert html.escape(name) in page
    data = re.search(r'<script type="application/json" id="dgraph-data">(.*?)</script>',
                     page, re.S)
    assert data is not None
    parsed = json.loads(data.group(1))
    student = parsed["nodes"]["student"]
    assert student["frozen"] is False and student["trained_by"] == ["main", "aux"]
    assert student["params"] == {"in_features": 64, "num_classes": 10}
    assert {"name": "x", "type": "Features", "shape": "[B, 64]", "source": "data.x",
            "doc": "", "optional": False} in student["inputs"]
    assert parsed["nodes"]["teacher"]["frozen"] is True
    assert "drawn by the viz tests" in page
    assert "unused-node" in page


def _graph_warnings(tmp_path: Path, kd_spec: str) -> list:
    text = kd_spec.replace("nodes:\n", "nodes:\n  spare: {kind: model, type: viztest_relay, "
                           "inputs: {x: data.x}}\n", 1)
    path = tmp_path / "warn.yaml"
    path.write_text(text, encoding="utf-8")
    _, warnings = validate(load_spec(path))
    assert any(w.code == "unused-node" for w in warnings)
    return warnings


def test_html_hides_urls_written_in_the_spec(tmp_path: Path, kd_spec: str) -> None:
    text = kd_spec.replace("Knowledge distillation", "Hinton et al. https://arxiv.org/abs/1503")
    page = to_html(_graph(tmp_path, text))
    assert re.findall(r"https?://[^\s\"'<>]*", page) == ["http://www.w3.org/2000/svg"]
    assert "arxiv.org" in page


# -- render ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".dot", ".mmd", ".svg", ".html"])
def test_render_writes_the_format_its_suffix_names(kd_graph: Graph, tmp_path: Path,
                                                   suffix: str) -> None:
    path = tmp_path / "out" / f"graph{suffix}"
    text = render(kd_graph, path)
    assert path.read_text(encoding="utf-8") == text
    expected = {".dot": to_dot, ".mmd": to_mermaid, ".svg": to_svg, ".html": to_html}[suffix]
    assert text == expected(kd_graph)


def test_render_with_a_format_name_writes_nothing(kd_graph: Graph, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert render(kd_graph, "svg") == to_svg(kd_graph)
    assert render(kd_graph, "mermaid").startswith("flowchart LR")
    assert render(kd_graph, ".dot").startswith("digraph")
    assert list(tmp_path.iterdir()) == [tmp_path / "spec.yaml"]


def test_unknown_suffix_is_refused_with_the_supported_list(kd_graph: Graph,
                                                           tmp_path: Path) -> None:
    assert SUFFIXES == (".dot", ".mmd", ".svg", ".html")
    with pytest.raises(DgraphError) as info:
        render(kd_graph, "graph.png")
    assert str(info.value) == (
        "cannot draw a graph as 'graph.png': unknown suffix '.png'; "
        "supported suffixes: .dot, .mmd, .svg, .html"
    )
    with pytest.raises(DgraphError) as info:
        render(kd_graph, "drawing")
    assert str(info.value) == (
        "cannot tell which format to draw 'drawing' in: it has no suffix; "
        "supported suffixes: .dot, .mmd, .svg, .html"
    )
    assert not (tmp_path / "graph.png").exists()


def test_viz_imports_no_torch() -> None:
    code = "import sys, dgraph.viz; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_stages_and_shared_modules_are_shown(tmp_path: Path, kd_spec: str) -> None:
    text = kd_spec.replace("nodes:\n", "nodes:\n  twin: {kind: model, type: viztest_net, "
                           "shares: student, params: {in_features: 64, num_classes: 10}, "
                           "inputs: {x: data.x}}\n", 1)
    text += "stages:\n  - {name: warmup, steps: 10, updates: [aux]}\n" \
            "  - {name: distil, steps: 20, updates: [main]}\n"
    graph = _graph(tmp_path, text)
    root = ET.fromstring(to_svg(graph))
    stages = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")
              if t.get("class") == "legend-stages"]
    assert stages == ["stages: warmup: 10 steps, runs aux → distil: 20 steps, runs main"]
    twin = _svg_nodes(root)["twin"]
    assert twin.get("data-updates") == "main aux"  # the student's updates step its weights
    assert "shares student" in "".join(twin.itertext())
    dot = to_dot(graph)
    assert "1. warmup: 10 steps, runs aux" in dot and "2. distil: 20 steps, runs main" in dot
    assert "%% stage warmup: 10 steps, runs aux" in to_mermaid(graph)


# -- references: parameters that name another node ---------------------------------------------
def test_a_parameter_naming_a_node_is_drawn_as_a_dotted_reference_edge(ref_graph: Graph) -> None:
    assert ref_graph.nodes["follower"].component.references() == {"source": "student"}
    assert not any(e.dst == "follower" and e.src == "student" for e in ref_graph.edges)
    root = ET.fromstring(to_svg(ref_graph))
    refs = [g for g in root.iter(f"{SVG}g") if "ref" in (g.get("class") or "").split()]
    assert len(refs) == 1
    ref = refs[0]
    assert ref.get("class") == "edge ref"
    assert (ref.get("data-src"), ref.get("data-dst"), ref.get("data-src-port"),
            ref.get("data-dst-port"), ref.get("data-updates")) == (
        "student", "follower", "", "source", "")
    assert "".join(next(ref.iter(f"{SVG}title")).itertext()) == (
        "student → follower.params.source (reference)")
    paths = list(ref.iter(f"{SVG}path"))
    assert [(p.get("stroke"), p.get("stroke-dasharray")) for p in paths] == [("#7a4fbf", "2 3")]
    label = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "edge-label"
                 and g.get("data-edge") == ref.get("id"))
    assert ["".join(t.itertext()) for t in label.iter(f"{SVG}text")] == [
        "params.source:", "reference"]
    key = "".join(next(g for g in root.iter(f"{SVG}g")
                       if g.get("class") == "legend-key").itertext())
    assert "reference: a parameter names that node" in key


def test_the_reference_legend_entry_only_shows_when_there_is_a_reference(
        kd_graph: Graph, ref_graph: Graph) -> None:
    assert "a parameter names that node" not in to_svg(kd_graph)
    assert "a parameter names that node" in to_svg(ref_graph)
    assert 'class="edge ref"' not in to_svg(kd_graph)


def test_dot_and_mermaid_draw_the_reference(ref_graph: Graph) -> None:
    dot = to_dot(ref_graph)
    line = next(t.strip() for t in dot.splitlines() if t.strip().startswith(
        '"student" -> "follower"'))
    assert line == ('"student" -> "follower" [label="params.source\\nreference", '
                    'tooltip="student → follower.params.source (reference)", style=dotted, '
                    'color="#7a4fbf", fontcolor="#7a4fbf", penwidth=1.5];')
    assert "dotted edge: reference (a parameter names that node)" in dot
    text = to_mermaid(ref_graph)
    links = re.findall(r"^  (n_\w+) (-->|-\.->)\|\"(.*)\"\| (n_\w+)$", text, re.M)
    index = links.index(("n_student", "-.->", "params.source: reference", "n_follower"))
    assert (f"  linkStyle {index} stroke:#7a4fbf,stroke-width:1.5px,stroke-dasharray:2 3"
            in text.splitlines())


def test_html_data_lists_references_both_ways(ref_graph: Graph) -> None:
    page = to_html(ref_graph)
    data = re.search(r'<script type="application/json" id="dgraph-data">(.*?)</script>',
                     page, re.S)
    assert data is not None
    nodes = json.loads(data.group(1))["nodes"]
    assert nodes["follower"]["references"] == {"source": "student"}
    assert nodes["follower"]["referenced_by"] == []
    assert nodes["student"]["references"] == {}
    assert nodes["student"]["referenced_by"] == [["follower", "source"]]
