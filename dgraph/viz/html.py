"""One self-contained, offline HTML page for a graph: :func:`to_html`.

The page embeds the SVG drawing, its data as JSON and a little inline CSS and JavaScript:
hovering or clicking a node shows its type, kind, frozen state, parameters, typed ports,
references and updates. It loads no external script, style sheet, font or image, and holds
no URL.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

from dgraph.errors import Problem
from dgraph.graph.model import Graph
from dgraph.viz.svg import SVG_NS, svg_from_view
from dgraph.viz.view import GraphView, build_view

__all__ = ["html_from_view", "to_html"]


def _defang(text: str) -> str:
    """Hide ``scheme://`` in already escaped text so that the page holds no URL at all."""
    return text.replace("://", ":&#x2F;&#x2F;")


def _json_for_script(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, default=str, sort_keys=False)
    # Safe inside <script>: no "</script>", "<!--" or URL can appear in the raw text.
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("://", ":\\/\\/"))


def _problem_record(problem: Problem | str) -> dict[str, Any]:
    if isinstance(problem, Problem):
        return {
            "severity": problem.severity,
            "code": problem.code,
            "node": problem.node,
            "text": problem.render(),
        }
    return {"severity": "note", "code": "", "node": None, "text": str(problem)}


def _data(view: GraphView, problems: list[dict[str, Any]]) -> dict[str, Any]:
    def ports(items: list) -> list[dict[str, Any]]:
        return [
            {"name": p.name, "type": p.type, "shape": p.shape, "source": p.source,
             "doc": p.doc, "optional": p.optional}
            for p in items
        ]

    nodes = {}
    for name, node in view.nodes.items():
        nodes[name] = {
            "name": name,
            "kind": node.kind,
            "type": node.type,
            "frozen": node.frozen,
            "exported": node.exported,
            "shares": node.shares,
            "doc": node.doc,
            "location": node.location,
            "params": node.params,
            "inputs": ports(node.inputs),
            "outputs": ports(node.outputs),
            "taps": ports(node.taps),
            "references": node.references,
            "referenced_by": [[n, param] for n, param in node.referenced_by],
            "trained_by": node.trained_by,
            "objective_of": [[u, w] for u, w in node.objective_of],
            "problems": [p["text"] for p in problems if p["node"] == name],
        }
    updates = {
        name: {"colour": u.colour, "ratio": u.ratio, "objective": u.objective_text,
               "params": u.params, "optimizer": u.optimizer}
        for name, u in view.updates.items()
    }
    return {"title": view.title, "nodes": nodes, "updates": updates}


_CSS = """
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       display: flex; flex-direction: column; }
header { padding: 8px 14px; border-bottom: 1px solid #ddd; display: flex; gap: 14px;
         align-items: center; flex-wrap: wrap; background: #fff; }
header h1 { font-size: 17px; margin: 0; }
header .summary { color: #555; }
header .tools { margin-left: auto; display: flex; gap: 4px; align-items: center; }
header button { font: inherit; padding: 2px 9px; border: 1px solid #bbb; background: #f6f6f6;
                border-radius: 4px; cursor: pointer; }
header input { font: inherit; padding: 2px 6px; border: 1px solid #bbb; border-radius: 4px; }
main { flex: 1; display: flex; min-height: 0; }
#canvas { flex: 1; overflow: auto; background: #f4f5f7; }
#canvas svg { display: block; background: #fff; }
#side { width: 400px; max-width: 45vw; overflow: auto; border-left: 1px solid #ddd;
        padding: 10px 14px; background: #fff; }
#side h2 { font-size: 16px; margin: 6px 0; word-break: break-all; }
#side h3 { font-size: 13px; margin: 12px 0 4px; text-transform: uppercase; color: #666; }
#side table { border-collapse: collapse; width: 100%; font-size: 13px; }
#side td { border-top: 1px solid #eee; padding: 2px 4px; vertical-align: top;
           word-break: break-word; }
#side td.k { color: #666; white-space: nowrap; width: 1%; }
#side pre { background: #f6f6f6; padding: 6px; border-radius: 4px; font-size: 12px;
            white-space: pre-wrap; word-break: break-word; margin: 0; }
#side .hint { color: #777; }
#side .doc { color: #444; font-style: italic; }
.chip { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
        margin-right: 4px; vertical-align: baseline; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
#problems ul { list-style: none; padding: 0; margin: 0; }
#problems li { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace;
               font-size: 12px; padding: 5px 6px; margin: 4px 0; border-radius: 4px;
               border-left: 4px solid #999; background: #f7f7f7; }
#problems li.error { border-color: #c62828; background: #fdecec; }
#problems li.warning { border-color: #e0a000; background: #fff7e0; }
#problems li[data-node] { cursor: pointer; }
svg .node { cursor: pointer; }
svg .node.selected rect.box { stroke: #000; stroke-width: 4; }
svg .node.match rect.box { stroke: #0a58ca; stroke-width: 4; }
svg .node.has-problem rect.box { stroke: #c62828; }
svg.focus .node:not(.near), svg.focus .edge:not(.near), svg.focus .edge-label:not(.near)
  { opacity: 0.22; }
svg .edge.near path { stroke-width: 3.2; }
"""

_JS = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("dgraph-data").textContent);
  var svg = document.querySelector("#canvas svg");
  var details = document.getElementById("details");
  var nodes = Array.prototype.slice.call(svg.querySelectorAll("g.node"));
  var edges = Array.prototype.slice.call(svg.querySelectorAll("g.edge"));
  var labels = Array.prototype.slice.call(svg.querySelectorAll("g.edge-label"));
  var byName = {};
  nodes.forEach(function (g) { byName[g.getAttribute("data-node")] = g; });
  var pinned = null;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }
  function chip(colour) {
    var c = el("span", null, "chip");
    c.style.background = colour;
    return c;
  }
  function row(table, key, value) {
    var tr = el("tr");
    tr.appendChild(el("td", key, "k"));
    var td = el("td");
    if (value instanceof Node) { td.appendChild(value); } else { td.textContent = value; }
    tr.appendChild(td);
    table.appendChild(tr);
  }
  function updateList(names, weights) {
    var span = el("span");
    names.forEach(function (u, i) {
      var info = data.updates[u];
      if (i) { span.appendChild(document.createTextNode(", ")); }
      if (info) { span.appendChild(chip(info.colour)); }
      var text = u + (weights ? " \\u00d7" + weights[i] : "");
      if (info) { text += " (" + info.ratio + ")"; }
      span.appendChild(document.createTextNode(text));
    });
    return span;
  }
  function portTable(title, ports, withSource) {
    if (!ports.length) { return; }
    details.appendChild(el("h3", title));
    var table = el("table");
    ports.forEach(function (p) {
      var text = p.type + p.shape;
      if (withSource) {
        text += p.source ? "  \\u2190 " + p.source : (p.optional ? "  (optional)" : "  (unfed)");
      }
      var td = el("span", text, "mono");
      row(table, p.name, td);
    });
    details.appendChild(table);
  }
  function show(name) {
    var n = data.nodes[name];
    details.textContent = "";
    if (!n) {
      details.appendChild(el("p", "Hover or click a node to see its details.", "hint"));
      return;
    }
    details.appendChild(el("h2", n.name));
    if (n.doc) { details.appendChild(el("p", n.doc, "doc")); }
    var t = el("table");
    row(t, "type", n.type);
    row(t, "kind", n.kind);
    row(t, "frozen", n.frozen ? "yes (parameters fixed)" : "no (trainable)");
    row(t, "trained by", n.trained_by.length ? updateList(n.trained_by) : "no update");
    if (n.objective_of.length) {
      row(t, "loss in", updateList(n.objective_of.map(function (x) { return x[0]; }),
                                   n.objective_of.map(function (x) { return x[1]; })));
    }
    if (n.exported) { row(t, "exported", "yes"); }
    if (n.shares) { row(t, "shares", n.shares); }
    Object.keys(n.references).forEach(function (param) {
      row(t, "references", "params." + param + " \u2192 " + n.references[param]);
    });
    if (n.referenced_by.length) {
      row(t, "referenced by", n.referenced_by.map(function (r) {
        return r[0] + ".params." + r[1];
      }).join(", "));
    }
    if (n.location) { row(t, "defined at", n.location); }
    details.appendChild(t);
    portTable("inputs", n.inputs, true);
    portTable("outputs", n.outputs, false);
    portTable("tapped submodules", n.taps, false);
    details.appendChild(el("h3", "params"));
    details.appendChild(el("pre", JSON.stringify(n.params, null, 2)));
    if (n.problems.length) {
      details.appendChild(el("h3", "problems"));
      n.problems.forEach(function (p) { details.appendChild(el("pre", p)); });
    }
  }
  function focus(name) {
    nodes.forEach(function (g) { g.classList.remove("near"); });
    edges.forEach(function (g) { g.classList.remove("near"); });
    labels.forEach(function (g) { g.classList.remove("near"); });
    if (name === null) { svg.classList.remove("focus"); return; }
    svg.classList.add("focus");
    if (byName[name]) { byName[name].classList.add("near"); }
    edges.forEach(function (g) {
      var src = g.getAttribute("data-src"), dst = g.getAttribute("data-dst");
      if (src === name || dst === name) {
        g.classList.add("near");
        if (byName[src]) { byName[src].classList.add("near"); }
        if (byName[dst]) { byName[dst].classList.add("near"); }
        var label = svg.querySelector('g.edge-label[data-edge="' + g.id + '"]');
        if (label) { label.classList.add("near"); }
      }
    });
  }
  function pin(name) {
    if (pinned && byName[pinned]) { byName[pinned].classList.remove("selected"); }
    pinned = name;
    if (name && byName[name]) { byName[name].classList.add("selected"); }
    show(name);
    focus(name);
  }
  nodes.forEach(function (g) {
    var name = g.getAttribute("data-node");
    if (data.nodes[name] && data.nodes[name].problems.length) { g.classList.add("has-problem"); }
    g.addEventListener("mouseenter", function () { show(name); focus(name); });
    g.addEventListener("mouseleave", function () { show(pinned); focus(pinned); });
    g.addEventListener("click", function (ev) {
      ev.stopPropagation();
      pin(pinned === name ? null : name);
    });
  });
  svg.addEventListener("click", function () { pin(null); });
  document.addEventListener("keydown", function (ev) { if (ev.key === "Escape") { pin(null); } });
  Array.prototype.forEach.call(document.querySelectorAll("#problems li[data-node]"), function (li) {
    li.addEventListener("click", function () {
      var name = li.getAttribute("data-node");
      pin(name);
      if (byName[name] && byName[name].scrollIntoView) {
        byName[name].scrollIntoView({block: "center", inline: "center"});
      }
    });
  });

  var baseW = parseFloat(svg.getAttribute("width")), baseH = parseFloat(svg.getAttribute("height"));
  var scale = 1;
  function zoom(s) {
    scale = Math.max(0.1, Math.min(4, s));
    svg.setAttribute("width", String(baseW * scale));
    svg.setAttribute("height", String(baseH * scale));
    document.getElementById("zoom-level").textContent = Math.round(scale * 100) + "%";
  }
  function fit() {
    var box = document.getElementById("canvas");
    zoom(Math.min(1, box.clientWidth / baseW, box.clientHeight / baseH));
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-zoom]"), function (b) {
    b.addEventListener("click", function () {
      var what = b.getAttribute("data-zoom");
      if (what === "in") { zoom(scale * 1.25); }
      else if (what === "out") { zoom(scale / 1.25); }
      else if (what === "fit") { fit(); }
      else { zoom(1); }
    });
  });
  var find = document.getElementById("find");
  find.addEventListener("input", function () {
    var q = find.value.trim().toLowerCase();
    nodes.forEach(function (g) {
      var hit = q && g.getAttribute("data-node").toLowerCase().indexOf(q) >= 0;
      g.classList.toggle("match", !!hit);
    });
  });
  find.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter") { return; }
    var hit = nodes.filter(function (g) { return g.classList.contains("match"); })[0];
    if (hit) {
      pin(hit.getAttribute("data-node"));
      if (hit.scrollIntoView) { hit.scrollIntoView({block: "center", inline: "center"}); }
    }
  });
  if (baseW > document.getElementById("canvas").clientWidth) { fit(); }
  show(null);
})();
"""


def html_from_view(
    view: GraphView, problems: Iterable[Problem | str] | None = None
) -> str:
    """The HTML page for an already built :class:`GraphView` (see :func:`to_html`)."""
    records = [_problem_record(p) for p in (problems or [])]
    svg = svg_from_view(view)
    marker = "\x00svgns\x00"
    svg = _defang(svg.replace(SVG_NS, marker)).replace(marker, SVG_NS)
    refs = sum(e.ref for e in view.edges)
    counts = f"{len(view.nodes)} nodes · {len(view.edges) - refs} edges"
    if refs:
        counts += f" · {refs} reference{'s' if refs != 1 else ''}"
    counts += f" · {len(view.updates)} updates"
    if records:
        errors = sum(r["severity"] == "error" for r in records)
        counts += f" · {errors} errors · {len(records) - errors} warnings/notes"
    items = []
    for r in records:
        node_attr = f' data-node="{html.escape(r["node"])}"' if r["node"] else ""
        items.append(f'<li class="{html.escape(r["severity"])}"{node_attr}>'
                     f"{_defang(html.escape(r['text']))}</li>")
    problem_html = ""
    if records:
        problem_html = (f'<div id="problems"><h3>problems ({len(records)})</h3><ul>'
                        + "".join(items) + "</ul></div>")
    title = _defang(html.escape(view.title))
    desc = _defang(html.escape(view.description))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="dgraph">
<title>{title} · dgraph</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<span class="summary">{html.escape(counts)}</span>
{f'<span class="summary">{desc}</span>' if desc else ''}
<div class="tools">
<input id="find" type="search" placeholder="find a node" aria-label="find a node">
<button type="button" data-zoom="out" title="zoom out">&#8722;</button>
<span id="zoom-level" class="summary">100%</span>
<button type="button" data-zoom="in" title="zoom in">+</button>
<button type="button" data-zoom="fit" title="fit to window">fit</button>
<button type="button" data-zoom="reset" title="actual size">1:1</button>
</div>
</header>
<main>
<section id="canvas">
{svg}</section>
<aside id="side">
<div id="details"></div>
{problem_html}
</aside>
</main>
<script type="application/json" id="dgraph-data">{_json_for_script(_data(view, records))}</script>
<script>{_JS}</script>
</body>
</html>
"""


def to_html(graph: Graph, problems: Iterable[Problem | str] | None = None) -> str:
    """A single offline HTML page showing ``graph`` interactively.

    Args:
        graph: a validated graph.
        problems: optional problems or warnings (e.g. the warnings :func:`dgraph.graph.validate`
            returns) listed beside the drawing; those naming a node are linked to it.

    Returns:
        HTML text with the SVG, data, CSS and JavaScript all inline.
    """
    return html_from_view(build_view(graph), problems)
